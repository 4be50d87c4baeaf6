"""lmer engine="python": predict, simulate, objective hooks, summary and bad input.

Reference values come from lme4 run live through the bridge where R defines the answer (fitted
values); the rest checks lme4's documented semantics (predict.merMod, simulate.merMod).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import mixbridge
from mixbridge.checks import is_constant
from mixbridge.errors import (
    ArgumentError,
    DataError,
    FormulaError,
    MixbridgeError,
    MixbridgeWarning,
    RWarning,
)
from mixbridge.python_impl import lmer as lmer_engine
from mixbridge.python_impl.spec import check_lmer_terms

SLEEP = "Reaction ~ Days + (Days | Subject)"


@pytest.fixture(scope="module")
def sleep_fits(r_dataset):
    data = r_dataset("sleepstudy")
    return data, mixbridge.lmer(SLEEP, data, engine="r"), mixbridge.lmer(SLEEP, data)


def test_predict_matches_r_fitted(sleep_fits):
    data, fr, fp = sleep_fits
    np.testing.assert_array_equal(fp.predict(), fp.fitted)
    np.testing.assert_allclose(fp.predict(newdata=data), fp.fitted, rtol=1e-12)
    # fitted = Xβ + Zb: β within 1e-4 SE and b within 1e-4 sd of the term (the agreement bounds
    # of test_lmer_vs_r) propagate to |Δfitted| <= 1e-4 (Σ_j |x_j| SE_j + Σ_c sd_c |z_c|).
    days = data["Days"].to_numpy()
    se = fr.fixef_se.to_numpy()
    vc = fr.varcorr
    sd = vc[(vc["grp"] == "Subject") & vc["var2"].isna()]["sdcor"].to_numpy()
    bound = 1e-4 * (se[0] + se[1] * days + sd[0] + sd[1] * days)
    assert np.all(np.abs(fp.fitted - fr.fitted) <= bound)
    # population level (re_form = ~0): Xβ only
    pop = fp.predict(newdata=data, re_form="~0")
    np.testing.assert_allclose(pop, fp.fixef.iloc[0] + fp.fixef.iloc[1] * days, rtol=1e-12)
    np.testing.assert_allclose(fp.predict(re_form="~0"), pop, rtol=1e-12)


def test_predict_new_levels(sleep_fits):
    data, _, fp = sleep_fits
    new = pd.DataFrame({"Days": [0.0, 5.0, 5.0], "Subject": ["999", "308", "999"]})
    with pytest.raises(DataError, match=r"999") as err:
        fp.predict(newdata=new)
    assert "Subject" in str(err.value)
    got = fp.predict(newdata=new, allow_new_levels=True)
    pop = fp.predict(newdata=new, re_form="~0")
    np.testing.assert_allclose(got[[0, 2]], pop[[0, 2]], rtol=1e-12)
    known = data[(data["Subject"] == "308") & (data["Days"] == 5.0)].index[0]
    assert got[1] == pytest.approx(fp.fitted[known], rel=1e-12)


def test_predict_with_offset_and_dropped_column(needs_r):
    """On new data lme4's predict.merMod evaluates the formula's offset() terms but not the fit's
    offset= argument: the Python engine does the same and warns (checked against lme4 on the
    same fit in test_to_r.py::test_predict_newdata_offset_like_lme4)."""
    rng = np.random.default_rng(7)
    n = 120
    data = pd.DataFrame(
        {
            "x": rng.normal(size=n),
            "g": [f"g{i % 12}" for i in range(n)],
            "off": rng.normal(size=n),
        }
    )
    data["x2"] = 3.0 * data["x"]
    data["y"] = 1.0 + data["off"] + 0.5 * data["x"] + rng.normal(size=n)
    fp = mixbridge.lmer("y ~ x + x2 + (1 | g)", data, offset="off")
    assert fp.dropped_columns == ["x2"]
    with pytest.warns(MixbridgeWarning, match="offset= argument is not applied"):
        got = fp.predict(newdata=data)
    np.testing.assert_allclose(got, fp.fitted - data["off"].to_numpy(), rtol=1e-12)
    with pytest.warns(MixbridgeWarning):
        pop = fp.predict(newdata=data, re_form="~0")
    expected = fp.fixef["(Intercept)"] + fp.fixef["x"] * data["x"]
    np.testing.assert_allclose(pop, expected.to_numpy(), rtol=1e-12)
    # in the formula, the offset is evaluated on new data (no warning)
    fo = mixbridge.lmer("y ~ x + offset(off) + (1 | g)", data)
    np.testing.assert_allclose(fo.predict(newdata=data), fo.fitted, rtol=1e-12)


def test_simulate_moments(sleep_fits):
    data, _, fp = sleep_fits
    nsim = 4000
    sims = fp.simulate(nsim=nsim, seed=11)
    assert sims.shape == (len(data), nsim)
    np.testing.assert_array_equal(sims, fp.simulate(nsim=nsim, seed=11))
    assert not np.array_equal(sims[:, :5], fp.simulate(nsim=5, seed=12))
    days = data["Days"].to_numpy()
    mean = fp.fixef.iloc[0] + fp.fixef.iloc[1] * days
    vc = fp.varcorr
    v0, v1, c01 = vc["vcov"].iloc[0], vc["vcov"].iloc[1], vc["vcov"].iloc[2]
    var = fp.sigma**2 + v0 + 2 * c01 * days + v1 * days**2  # marginal variance of y_i
    # Monte Carlo error: the mean of nsim draws has sd sqrt(var/nsim); 5 of those (seeded, so
    # deterministic; 5 sd keeps a correct implementation far from the edge).
    assert np.all(np.abs(sims.mean(axis=1) - mean) <= 5 * np.sqrt(var / nsim))
    # sample variances: sd of a variance estimate is var*sqrt(2/(nsim-1)); averaged over the
    # 180 rows, checked per row at 5 sd.
    sv = sims.var(axis=1, ddof=1)
    assert np.all(np.abs(sv - var) <= 5 * var * np.sqrt(2 / (nsim - 1)))
    # two rows of the same subject share b: covariance z_i'Σz_j
    i, j = 0, 9  # subject 308, days 0 and 9
    cov = np.cov(sims[i], sims[j])[0, 1]
    expected = v0 + c01 * (days[i] + days[j]) + v1 * days[i] * days[j]
    assert abs(cov - expected) <= 5 * np.sqrt((var[i] * var[j] + expected**2) / nsim)


def test_objective_hook_and_lmer_objective(sleep_fits):
    data, fr, fp = sleep_fits
    assert fp.objective(fp.theta) == pytest.approx(fp.criterion, rel=1e-12)
    th = np.array([0.8, 0.1, 0.3])
    ours = mixbridge.lmer_objective(SLEEP, data, theta=th)
    assert fp.objective(th) == pytest.approx(ours, rel=1e-12)
    with pytest.raises(MixbridgeError, match="theta must have length 3"):
        mixbridge.lmer_objective(SLEEP, data, theta=[1.0])


def test_fit_fields_and_summary(sleep_fits):
    _, fr, fp = sleep_fits
    assert fp.model == "lmer" and fp.family == "gaussian" and fp.link == "identity"
    assert set(fp.versions) == {"mixbridge", "numpy", "scipy", "python"}
    assert fp.optimizer["n_evals"] > 0 and len(fp.optimizer["gradient"]) == 3
    assert fp.converged and not fp.singular
    assert fp.deviance != fp.reml_criterion  # REML fit: deviance is the ML deviance at θ̂
    np.testing.assert_allclose(fp.residuals, fr.fitted + fr.residuals - fp.fitted, rtol=1e-12)
    text = fp.summary()
    assert "REML criterion at convergence" in text and "Subject" in text
    assert f"{fp.reml_criterion:.4f}" in text
    # lme4's layout: the group's name on its first variance row only
    rows = [ln for ln in text.splitlines() if "(Intercept)" in ln or ln.strip().startswith("Days ")]
    assert rows[0].split()[0] == "Subject" and rows[1].split()[0] == "Days"


@pytest.fixture()
def small():
    rng = np.random.default_rng(1)
    return pd.DataFrame(
        {
            "y": rng.normal(size=30),
            "x": rng.normal(size=30),
            "g": list("abcde") * 6,
            "one": ["a"] * 30,
            "id": [f"i{i}" for i in range(30)],
            "s": ["u"] * 30,
            "w": np.ones(30),
        }
    )


BAD = [
    ("constant-response", "c ~ x + (1|g)", {"c": 1.0}, {}, DataError, "c"),
    ("one-level", "y ~ x + (1|one)", {}, {}, DataError, "one"),
    ("levels-equal-n", "y ~ x + (1|id)", {}, {}, DataError, "id"),
    ("string-response", "s ~ x + (1|g)", {}, {}, DataError, "s"),
    ("no-random-term", "y ~ x", {}, {}, FormulaError, "ordinary linear model"),
    ("all-na", "y ~ x + (1|g)", {"x": np.nan}, {}, DataError, "30 rows"),
    ("negative-weights", "y ~ x + (1|g)", {"w": -1.0}, {"weights": "w"}, DataError, "weights"),
    ("inf-weights", "y ~ x + (1|g)", {"w": np.inf}, {"weights": "w"}, DataError, "weights"),
    ("zero-weights", "y ~ x + (1|g)", {"w": 0.0}, {"weights": "w"}, DataError, "zero weight"),
]


@pytest.mark.parametrize("via", ["api", "engine"])
@pytest.mark.parametrize("case,formula,assign,kw,exc,names", BAD, ids=[b[0] for b in BAD])
def test_bad_input(small, via, case, formula, assign, kw, exc, names):
    data = small.assign(**assign)
    with pytest.raises(exc) as err:
        if via == "api":
            mixbridge.lmer(formula, data, **kw)
        else:  # the engine guards itself when called directly (no api-level checks)
            lmer_engine.lmer(formula, data, reml=True, control=None, **kw)
    assert names in str(err.value)


def test_too_many_random_effects(small):
    with pytest.raises(DataError, match=r"number of observations \(=10\)") as err:
        lmer_engine.lmer("y ~ x + (x|g)", small.iloc[:10], reml=True)
    assert err.value.column == "g"


def test_engine_check_terms_guards_direct_terms(small):
    """check_lmer_terms itself (used when MixedTerms are built elsewhere) names the problem."""
    from mixbridge.formula import build_mixed_terms

    terms = build_mixed_terms("y ~ x + (1|g)", small)
    terms.weights = np.full(30, np.nan)
    with pytest.raises(DataError, match="weights"):
        check_lmer_terms(terms)
    terms = build_mixed_terms("y ~ x + (1|g)", small)
    terms.y = np.full(30, 2.5)
    with pytest.raises(DataError, match="constant"):
        check_lmer_terms(terms)
    # the frame proved its own y finite; a y assigned afterwards is read again
    terms = build_mixed_terms("y ~ x + (1|g)", small)
    assert terms.response_finite
    terms.y = np.where(np.arange(30) == 7, np.inf, terms.y)
    assert not terms.response_finite
    with pytest.raises(DataError, match="non-finite"):
        check_lmer_terms(terms)
    # the first 1024 rows equal and a later one not: read in full
    y = np.full(3000, 1.0)
    assert not is_constant(np.where(np.arange(3000) == 2999, 2.0, y)) and is_constant(y)
    with pytest.raises(MixbridgeError, match="unknown control key 'xtol' for lmer"):
        lmer_engine.fit_terms(
            build_mixed_terms("y ~ x + (1|g)", small), formula="f", reml=True, control={"xtol": 1}
        )


def test_scale_warning_like_lme4(sleep_fits):
    """checkScaleX: a predictor on a very different scale warns in both engines."""
    data, _, _ = sleep_fits
    data = data.assign(DaysBig=data["Days"] * 1e5)
    f = "Reaction ~ DaysBig + (1 | Subject)"
    with pytest.warns(RWarning, match="very different scales"):
        fr = mixbridge.lmer(f, data, engine="r")
    with pytest.warns(MixbridgeWarning, match="very different scales"):
        fp = mixbridge.lmer(f, data)
    assert any("very different scales" in m.text for m in fr.messages)
    assert any(m.code == "scale_x" and m.kind == "warning" for m in fp.messages)
    plain = mixbridge.lmer("Reaction ~ Days + (1 | Subject)", data)
    assert not any(m.code == "scale_x" for m in plain.messages)


def test_predict_newdata_vs_r(sleep_fits):
    """predict.merMod on new rows (incl. an unseen subject, allow.new.levels) in both engines."""
    _, fr, fp = sleep_fits
    new = pd.DataFrame({"Days": [0.0, 2.5, 9.0, 4.0], "Subject": ["308", "335", "372", "999"]})
    got = fp.predict(newdata=new, allow_new_levels=True)
    ref = fr.predict(newdata=new, allow_new_levels=True)
    se = fr.fixef_se.to_numpy()
    vc = fr.varcorr
    sd = vc[(vc["grp"] == "Subject") & vc["var2"].isna()]["sdcor"].to_numpy()
    days = new["Days"].to_numpy()
    # same propagation of the agreement bounds as in test_predict_matches_r_fitted
    bound = 1e-4 * (se[0] + se[1] * days + sd[0] + sd[1] * days)
    assert np.all(np.abs(got - ref) <= bound)
    with pytest.raises(DataError, match="999"):
        fp.predict(newdata=new)


def test_predict_re_form_subset_vs_r(r_dataset):
    data = r_dataset("Penicillin")
    f = "diameter ~ 1 + (1 | plate) + (1 | sample)"
    fr = mixbridge.lmer(f, data, engine="r")
    fp = mixbridge.lmer(f, data)
    vc = fr.varcorr.set_index("grp")["sdcor"]
    se = float(fr.fixef_se.iloc[0])
    for re_form, sds in (
        ("~ (1 | plate)", vc["plate"]),
        ("~0", 0.0),
        (None, vc["plate"] + vc["sample"]),
    ):
        got = fp.predict(newdata=data, re_form=re_form)
        ref = fr.predict(newdata=data, re_form=re_form)
        # β within 1e-4 SE and each b within 1e-4 of its term's sd (test_lmer_vs_r bounds)
        assert np.all(np.abs(got - ref) <= 1e-4 * (se + sds)), re_form
    with pytest.raises(MixbridgeError, match="not in the model"):
        fp.predict(re_form="~ (1 | nosuch)")


@pytest.mark.parametrize("bars", ["(Days || Subject)", "(Days | Subject)"])
def test_predict_re_form_selects_terms_and_columns_like_lme4(sleep_fits, bars):
    """re_form's terms pick random-effect columns by factor and name, as lme4's mkNewReTrms:
    the intercepts alone, the slopes alone, or everything, on a || model and on a full one."""
    data = sleep_fits[0]
    f = f"Reaction ~ Days + {bars}"
    fr = mixbridge.lmer(f, data, engine="r")
    fp = mixbridge.lmer(f, data)
    se = fr.fixef_se.to_numpy()
    vc = fr.varcorr
    sd = vc[vc["grp"].str.startswith("Subject") & vc["var2"].isna()]["sdcor"].to_numpy()
    days = data["Days"].to_numpy()
    bound = 1e-4 * (se[0] + se[1] * days + sd[0] + sd[1] * days)  # as test_predict_newdata_vs_r
    outcomes = {}
    for re_form in ("~ (1 | Subject)", "~ (0 + Days | Subject)", "~ (Days || Subject)"):
        got = fp.predict(newdata=data, re_form=re_form)
        ref = fr.predict(newdata=data, re_form=re_form)
        assert np.all(np.abs(got - ref) <= bound), re_form
        outcomes[re_form] = got
    both = fp.predict(newdata=data)
    only = (
        outcomes["~ (1 | Subject)"]
        + outcomes["~ (0 + Days | Subject)"]
        - fp.predict(newdata=data, re_form="~0")
    )
    np.testing.assert_allclose(only, both, rtol=1e-12)  # the two parts add up to the whole
    with pytest.raises(ArgumentError, match="not a random effect"):
        fp.predict(re_form="~ (0 + Reaction | Subject)")


def test_nonconvergence_is_structured(sleep_fits):
    """An optimizer stopped early reports it as data: converged False, convergence messages,
    the finite-difference gradient at the stopping point (lme4's checkConv)."""
    data, _, good = sleep_fits
    with pytest.warns(MixbridgeWarning):
        fp = mixbridge.lmer(SLEEP, data, control={"maxeval": 6})
    assert not fp.converged
    assert any(m.code == "convergence" and "maxeval = 6" in m.text for m in fp.messages)
    assert fp.criterion > good.criterion
    assert max(abs(g) for g in fp.optimizer["gradient"]) > 0.002  # checkConv's tolerance
    assert good.converged and not any(m.code == "convergence" for m in good.messages)
