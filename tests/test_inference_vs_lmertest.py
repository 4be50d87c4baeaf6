"""Satterthwaite and Kenward–Roger tests against lmerTest 3.1-3 and pbkrtest 0.5.2, run live.

Two kinds of check per model: each side at its own fit (`INFERENCE_FITTED`), and optimizer-free
at lme4's (θ, σ) (`INFERENCE_AT_THETA`), as `lmer_objective` checks the criterion.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import mixbridge
from mixbridge.conformance.tolerance import INFERENCE_AT_THETA, INFERENCE_FITTED
from mixbridge.errors import ArgumentError
from mixbridge.inference.coef_table import anova_at, coef_table_at
from tests.r_helpers import r_call

R_COEF = """
function(d, f, reml, ddf) {
  m <- lmerTest::lmer(as.formula(f), d, REML = reml)
  s <- as.data.frame(coef(lmerTest:::summary.lmerModLmerTest(m, ddf = ddf)))
  list(table = s, names = rownames(s), theta = unname(lme4::getME(m, "theta")),
       sigma = sigma(m))
}
"""


def _simulated() -> pd.DataFrame:
    rng = np.random.default_rng(13)
    n, g = 240, 20
    d = pd.DataFrame(
        {
            "g": [f"g{i % g:02d}" for i in range(n)],
            "h": [f"h{i % 7}" for i in range(n)],
            "x": rng.normal(size=n),
            "f": rng.choice(["a", "b", "c"], size=n),
        }
    )
    u = rng.normal(scale=0.8, size=g)[np.arange(n) % g]
    v = rng.normal(scale=0.5, size=7)[np.arange(n) % 7]
    d["y"] = 1 + 0.5 * d["x"] + (d["f"] == "b") * 0.3 + u + v * d["x"] + rng.normal(size=n)
    return d


CASES = [
    ("sleepstudy", "lme4", "Reaction ~ Days + (Days | Subject)", True),
    ("sleepstudy", "lme4", "Reaction ~ Days + (1 | Subject)", True),
    ("sleepstudy", "lme4", "Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)", False),
    ("Penicillin", "lme4", "diameter ~ 1 + (1 | plate) + (1 | sample)", True),
    ("Pastes", "lme4", "strength ~ 1 + (1 | batch) + (1 | sample)", True),
    ("simulated", None, "y ~ x * f + (1 | g) + (0 + x | h)", True),
]


def _data(r_dataset, name, package):
    return _simulated() if name == "simulated" else r_dataset(name, package)


_FITS: dict[tuple[str, str, bool], mixbridge.MixedFit] = {}


def _our_fit(data: pd.DataFrame, name: str, formula: str, reml: bool = True):
    """Our fit, one per model in this module: its derivatives are computed once and every
    table (both ddf, every anova type) reuses them, as a user's fit would."""
    key = (name, formula, reml)
    if key not in _FITS:
        _FITS[key] = mixbridge.lmer(formula, data, reml=reml)
    return _FITS[key]


def _check(ours: pd.DataFrame, ref: pd.DataFrame, tols: dict, columns: list[str]) -> None:
    assert list(ours.index) == list(ref.index)
    for col in columns:
        tol = tols["df_kr" if col == "df" and "df_kr" in tols and ref.attrs.get("kr") else col]
        for name in ours.index:
            a, b = float(ours.loc[name, col]), float(ref.loc[name, col])
            scale = b if col != "estimate" else max(abs(b), float(ref.loc[name, "std_error"]))
            assert abs(a - b) <= tol.bound(scale), (
                f"{name} {col}: ours {a!r} vs R {b!r} (|diff| {abs(a - b):.3g} > "
                f"{tol.bound(scale):.3g}: {tol.reason})"
            )


def _ref_table(res: dict) -> pd.DataFrame:
    t = res["table"]
    return pd.DataFrame(
        {
            "estimate": t["Estimate"],
            "std_error": t["Std. Error"],
            "df": t["df"],
            "statistic": t["t value"],
            "p_value": t["Pr(>|t|)"],
        },
        index=pd.Index(list(np.atleast_1d(res["names"]))),
    )


@pytest.mark.parametrize("ddf", ["Satterthwaite", "Kenward-Roger"])
@pytest.mark.parametrize(("name", "package", "formula", "reml"), CASES)
def test_coef_table_vs_lmertest(request, r_dataset, name, package, formula, reml, ddf):
    from tests.conftest import require_r_packages

    require_r_packages(request.config, "lmerTest", "pbkrtest")
    data = _data(r_dataset, name, package)
    if ddf == "Kenward-Roger" and not reml:
        # defined for REML fits only: lmerTest refuses, and so do we, with a named error
        with pytest.raises(Exception, match="REML"):
            r_call(R_COEF, d=data, f=formula, reml=reml, ddf=ddf)
        with pytest.raises(ArgumentError, match="REML"):
            _our_fit(data, name, formula, reml).coef_table(ddf="kenward-roger")
        return
    res = r_call(R_COEF, d=data, f=formula, reml=reml, ddf=ddf)
    ref = _ref_table(res)
    ref.attrs["kr"] = ddf == "Kenward-Roger"
    fit = _our_fit(data, name, formula, reml)
    ours = fit.coef_table(ddf=ddf.lower())
    _check(ours, ref, INFERENCE_FITTED, ["estimate", "std_error", "df", "statistic", "p_value"])
    # optimizer-free: our Satterthwaite at lme4's own (θ, σ)
    at = coef_table_at(
        formula, data, theta=np.atleast_1d(res["theta"]), sigma=float(np.ravel(res["sigma"])[0]),
        reml=reml, ddf=ddf.lower(),
    )  # fmt: skip
    _check(at, ref, INFERENCE_AT_THETA, ["estimate", "std_error", "df", "statistic", "p_value"])


def test_kenward_roger_needs_reml(r_dataset):
    fit = mixbridge.lmer("Reaction ~ Days + (1 | Subject)", r_dataset("sleepstudy"), reml=False)
    with pytest.raises(mixbridge.errors.ArgumentError, match="REML"):
        fit.coef_table(ddf="kenward-roger")
    with pytest.raises(mixbridge.errors.ArgumentError, match="ddf"):
        fit.coef_table(ddf="containment")


def test_lme4_and_glmer_tables(r_dataset, needs_r):
    """ddf="lme4": lme4's t table (no df, no p); glmer: lme4's Wald z table."""
    sleep = r_dataset("sleepstudy")
    fit = mixbridge.lmer("Reaction ~ Days + (Days | Subject)", sleep)
    t = fit.coef_table(ddf="lme4")
    assert t["df"].isna().all() and t["p_value"].isna().all()
    res = r_call(
        "function(d) { m <- lme4::lmer(Reaction ~ Days + (Days | Subject), d);"
        " as.data.frame(coef(summary(m))) }",
        d=sleep,
    )
    np.testing.assert_allclose(t["statistic"], res["t value"], rtol=2e-4)
    cbpp = r_dataset("cbpp")
    g = mixbridge.glmer(
        "cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, family="binomial"
    )
    z = g.coef_table()
    ref = r_call(
        "function(d) { m <- lme4::glmer(cbind(incidence, size - incidence) ~ period + (1 | herd),"
        " d, binomial); as.data.frame(coef(summary(m))) }",
        d=cbpp,
    )
    assert z["df"].isna().all()
    np.testing.assert_allclose(z["statistic"], ref["z value"], rtol=2e-3)
    np.testing.assert_allclose(z["p_value"], ref["Pr(>|z|)"], rtol=2e-2)


R_ANOVA = """
function(d, f, type, ddf) {
  m <- lmerTest::lmer(as.formula(f), d)
  a <- lmerTest:::anova.lmerModLmerTest(m, type = type, ddf = ddf)
  list(table = as.data.frame(a), names = rownames(a),
       theta = unname(lme4::getME(m, "theta")), sigma = sigma(m))
}
"""

ANOVA_CASES = [
    ("simulated", None, "y ~ x * f + (1 | g) + (0 + x | h)"),
    ("sleepstudy", "lme4", "Reaction ~ Days + I(Days^2) + (Days | Subject)"),
    ("simulated", None, "y ~ f + x:f + (1 | g)"),  # x:f with f fully coded (no x main effect)
]


@pytest.mark.parametrize("ddf", ["Satterthwaite", "Kenward-Roger"])
@pytest.mark.parametrize("type_", [1, 2, 3])
@pytest.mark.parametrize(("name", "package", "formula"), ANOVA_CASES)
def test_anova_vs_lmertest(request, r_dataset, name, package, formula, type_, ddf):
    from tests.conftest import require_r_packages

    require_r_packages(request.config, "lmerTest", "pbkrtest")
    data = _data(r_dataset, name, package)
    res = r_call(R_ANOVA, d=data, f=formula, type=type_, ddf=ddf)
    t = res["table"]
    ref = pd.DataFrame(
        {
            "sum_sq": t["Sum Sq"],
            "mean_sq": t["Mean Sq"],
            "num_df": t["NumDF"],
            "den_df": t["DenDF"],
            "f_value": t["F value"],
            "p_value": t["Pr(>F)"],
        },
        index=pd.Index(list(np.atleast_1d(res["names"]))),
    )
    ours = _our_fit(data, name, formula).anova(type=type_, ddf=ddf.lower())
    assert list(ours.index) == list(ref.index)
    assert (ours["num_df"] == ref["num_df"]).all()
    tol = INFERENCE_FITTED
    checks = {"den_df": "df", "f_value": "f_value", "sum_sq": "f_value", "p_value": "p_value"}
    for col, key in checks.items():
        for term in ours.index:
            a, b = float(ours.loc[term, col]), float(ref.loc[term, col])
            assert abs(a - b) <= tol[key].bound(b), (term, col, a, b, tol[key].reason)
    # optimizer-free: our F tests at lme4's own (θ, σ)
    at = anova_at(
        formula, data, theta=np.atleast_1d(res["theta"]), sigma=float(np.ravel(res["sigma"])[0]),
        type=type_, ddf=ddf.lower(),
    )  # fmt: skip
    tol = INFERENCE_AT_THETA
    checks["den_df"] = "df_kr" if ddf == "Kenward-Roger" else "df"
    for col, key in checks.items():
        for term in at.index:
            a, b = float(at.loc[term, col]), float(ref.loc[term, col])
            assert abs(a - b) <= tol[key].bound(b), (term, col, a, b, tol[key].reason)


def test_anova_arguments(r_dataset):
    fit = mixbridge.lmer("Reaction ~ Days + (1 | Subject)", r_dataset("sleepstudy"))
    assert list(fit.anova(type="III").index) == ["Days"]
    with pytest.raises(mixbridge.errors.ArgumentError, match="type"):
        fit.anova(type=4)


def test_summary_prints_satterthwaite_table(r_dataset):
    fit = mixbridge.lmer("Reaction ~ Days + (Days | Subject)", r_dataset("sleepstudy"))
    text = fit.summary()
    table = fit.coef_table()
    assert "Pr(>|t|)" in text and "Satterthwaite" in text
    days = next(line for line in text.splitlines() if line.startswith("Days "))
    assert f"{table.loc['Days', 'df']:.3f}" in days


@pytest.mark.parametrize(
    "transport", ["embedded", pytest.param("subprocess", marks=pytest.mark.long)]
)  # subprocess: every table refits in a fresh Rscript (~60 s in all)
def test_r_engine_tests_and_compare(request, r_dataset, transport):
    """The R engine computes the same tables with lmerTest/pbkrtest; compare(tests=True) has
    rows for df, statistic and p_value under the lmer policy."""
    from tests.conftest import require_r_packages

    require_r_packages(request.config, "lmerTest", "pbkrtest")
    data = r_dataset("sleepstudy")
    formula = "Reaction ~ Days + I(Days^2) + (Days | Subject)"
    r_fit = mixbridge.lmer(formula, data, engine="r", transport=transport)
    py_fit = mixbridge.lmer(formula, data)
    res = r_call(R_COEF, d=data, f=formula, reml=True, ddf="Kenward-Roger")
    kr = r_fit.coef_table(ddf="kenward-roger")
    np.testing.assert_allclose(kr["df"], res["table"]["df"], rtol=1e-12)
    _check(py_fit.coef_table("kenward-roger"), kr, INFERENCE_FITTED, ["df", "statistic"])
    a_r = r_fit.anova(type=2)
    a_py = py_fit.anova(type=2)
    assert list(a_r.index) == list(a_py.index) == ["Days", "I(Days^2)"]
    np.testing.assert_allclose(a_py["den_df"], a_r["den_df"], rtol=1e-3)
    cmp = mixbridge.compare(py_fit, r_fit, tests=True)
    assert {"df", "statistic", "p_value"} <= {r.quantity for r in cmp.rows}
    cmp.assert_ok()
    assert "Pr(>|t|)" in r_fit.summary()


def test_dask_fit_has_the_same_tables(r_dataset):
    """A Dask (1|g) fit tests on the same group sums as the in-memory O(G) fit."""
    dd = pytest.importorskip("dask.dataframe")
    d = r_dataset("sleepstudy")
    formula = "Reaction ~ Days + (1 | Subject)"
    mem = mixbridge.lmer(formula, d)
    lazy = mixbridge.lmer(formula, dd.from_pandas(d, npartitions=3))
    for ddf in ("satterthwaite", "kenward-roger"):
        # the partitions' provisional shift differs: rounding in the df's θ-differences (~1e-9)
        pd.testing.assert_frame_equal(lazy.coef_table(ddf), mem.coef_table(ddf), rtol=1e-7)
    with pytest.raises(NotImplementedError, match="terms"):
        lazy.anova()


def test_clear_errors_where_a_method_does_not_apply(r_dataset, monkeypatch):
    from mixbridge.inference import kenward_roger

    sleep = r_dataset("sleepstudy")
    weighted = sleep.assign(w=(sleep["Days"] + 1.0) / 3.0)
    fit = mixbridge.lmer("Reaction ~ Days + (Days | Subject)", weighted, weights="w")
    with pytest.raises(mixbridge.errors.ArgumentError, match="unweighted"):
        fit.coef_table(ddf="kenward-roger")
    assert np.isfinite(fit.coef_table()["df"]).all()  # Satterthwaite takes weights (lmerTest)
    # the O(G) (1|g) path: the spec records whether weights other than 1 were given
    scalar = "Reaction ~ Days + (1 | Subject)"
    with pytest.raises(mixbridge.errors.ArgumentError, match="unweighted"):
        mixbridge.lmer(scalar, weighted, weights="w").coef_table(ddf="kenward-roger")
    ones = mixbridge.lmer(scalar, weighted.assign(w=1.0), weights="w").coef_table("kenward-roger")
    pd.testing.assert_frame_equal(ones, mixbridge.lmer(scalar, sleep).coef_table("kenward-roger"))
    monkeypatch.setattr(kenward_roger, "MAX_DENSE_Q", 10)
    big = mixbridge.lmer("Reaction ~ Days + (Days | Subject)", sleep)
    with pytest.raises(mixbridge.errors.ArgumentError, match="q = 36 random effects"):
        big.coef_table(ddf="kenward-roger")
    cbpp = r_dataset("cbpp")
    g = mixbridge.glmer(
        "cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, family="binomial"
    )
    with pytest.raises(mixbridge.errors.ArgumentError, match="lmer"):
        g.anova()
    with pytest.raises(mixbridge.errors.ArgumentError, match="lmer fits only"):
        g.coef_table(ddf="kenward-roger")
    rng = np.random.default_rng(3)
    d = pd.DataFrame(
        {
            "x": rng.normal(size=60),
            "f": rng.choice(["a", "b"], 60),
            "g": np.repeat([f"g{i}" for i in range(12)], 5),
        }
    )
    d["y"] = d["x"] + rng.normal(size=60)
    one_term = mixbridge.lmer("y ~ x:f + (1 | g)", d)  # one term: every type is type 1
    pd.testing.assert_frame_equal(one_term.anova(type=3), one_term.anova(type=1))
