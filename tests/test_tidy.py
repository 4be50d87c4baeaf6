"""fit.tidy() and fit.glance() against broom.mixed 0.2.9 run live on lme4's own fit.

The R engine's fit is lme4's, so its tables must equal broom.mixed's to rounding (the Wald limits
go through scipy's normal quantile instead of R's qnorm: one ulp). The Python engine's tables are
judged under the tolerance policy, each number with the tolerance of the quantity it comes from
(fixef, fixef_se, varcorr, sigma, ranef, cond_var, loglik, ...), propagated to the derived
columns (statistic, p_value, Wald limits).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
from r_helpers import r_call, r_frame
from scipy.stats import norm

import mixbridge
from mixbridge.conformance.tolerance import POLICIES
from mixbridge.errors import ArgumentError

ROUNDING = 4 * np.finfo(float).eps

CASES = {
    "slopes": ("lmer", "Reaction ~ Days + (Days | Subject)", "sleepstudy", {"reml": True}),
    "uncorrelated_ml": (
        "lmer", "Reaction ~ Days + (Days || Subject)", "sleepstudy", {"reml": False},
    ),
    "crossed": ("lmer", "diameter ~ 1 + (1 | plate) + (1 | sample)", "Penicillin", {"reml": True}),
    "cbpp": (
        "glmer", "cbind(incidence, size - incidence) ~ period + (1 | herd)", "cbpp",
        {"family": "binomial"},
    ),
}  # fmt: skip

BROOM = """function(data, model, formula, reml) {
  suppressPackageStartupMessages({library(lme4); library(broom.mixed)})
  f <- stats::as.formula(formula)
  fit <- if (model == "lmer") lmer(f, data, REML = reml) else glmer(f, data, family = binomial)
  td <- function(...) as.data.frame(tidy(fit, ...))
  list(version = as.character(packageVersion("broom.mixed")),
       default = td(),
       conf = td(effects = c("fixed", "ran_pars"), conf.int = TRUE),
       fixed = td(effects = "fixed", conf.int = TRUE, conf.level = 0.9),
       ran_pars = td(effects = "ran_pars"),
       ran_vals = td(effects = "ran_vals"),
       ran_vals_conf = td(effects = "ran_vals", conf.int = TRUE),
       glance = as.data.frame(glance(fit)))
}"""

VARIANTS = {
    "default": {},
    "conf": {"effects": ("fixed", "ran_pars"), "conf_int": True},
    "fixed": {"effects": "fixed", "conf_int": True, "conf_level": 0.9},
    "ran_pars": {"effects": "ran_pars"},
    "ran_vals": {"effects": "ran_vals"},
    "ran_vals_conf": {"effects": "ran_vals", "conf_int": True},
}
GLANCE_NAMES = {"logLik": "loglik", "AIC": "aic", "BIC": "bic", "REMLcrit": "reml_criterion",
                "df.residual": "df_residual"}  # fmt: skip
LABELS = ("effect", "group", "level", "term")


@pytest.fixture(scope="module")
def broom(needs_r, request):
    from conftest import require_r_packages

    require_r_packages(request.config, "broom.mixed")
    return {}


@pytest.fixture(scope="module")
def case_tables(broom, r_dataset):
    """Per case: the data, broom.mixed's tables on lme4's fit, the R and Python fits."""
    cache: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in cache:
            model, formula, dataset, opts = CASES[name]
            data = r_dataset(dataset)
            out = r_call(BROOM, data=data, model=model, formula=formula,
                         reml=bool(opts.get("reml", False)))  # fmt: skip
            fit = getattr(mixbridge, model)
            cache[name] = {
                "version": out.pop("version")[0],
                "ref": {k: r_frame(v) for k, v in out.items()},
                "r": fit(formula, data, engine="r", **opts),
                "python": fit(formula, data, **opts),
            }
        return cache[name]

    return get


def _mine(fit, variant: str) -> pd.DataFrame:
    return fit.glance() if variant == "glance" else fit.tidy(**VARIANTS[variant])


def _check_layout(mine: pd.DataFrame, ref: pd.DataFrame, variant: str) -> None:
    names = [GLANCE_NAMES.get(c, c.replace(".", "_")) for c in ref.columns]
    assert list(mine.columns) == names, (variant, list(mine.columns), names)
    assert len(mine) == len(ref), variant
    for col in LABELS:
        if col in ref:
            theirs = [None if pd.isna(v) else str(v) for v in ref[col]]
            ours = [None if pd.isna(v) else str(v) for v in mine[col]]
            assert ours == theirs, (variant, col)


def _numeric(ref: pd.DataFrame) -> list[str]:
    return [c for c in ref.columns if c not in LABELS]


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("variant", [*VARIANTS, "glance"])
@pytest.mark.parametrize("case", list(CASES))
def test_r_engine_tables_equal_broom_mixed(case_tables, case, variant):
    t = case_tables(case)
    assert t["version"].startswith("0.2.9")
    ref = t["ref"][variant]
    mine = _mine(t["r"], variant)
    _check_layout(mine, ref, variant)
    for col in _numeric(ref):
        ours = mine[GLANCE_NAMES.get(col, col.replace(".", "_"))].to_numpy(dtype=float)
        theirs = ref[col].to_numpy(dtype=float)
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs), err_msg=col)
        scale = np.abs(theirs)
        if col.startswith("conf."):  # estimate ± q·se: rounding is relative to the operands
            scale = np.abs(ref["estimate"].to_numpy()) + 3 * np.abs(ref["std.error"].to_numpy())
        elif col == "p.value":  # 2Φ(-|z|): the statistic's rounding, times the density
            z = np.abs(ref["statistic"].to_numpy(dtype=float))
            scale = scale + 2 * norm.pdf(z) * z
        scale = np.nan_to_num(scale)
        gap = np.abs(np.where(np.isnan(theirs), 0.0, ours - theirs))
        assert np.all(gap <= ROUNDING * scale), (col, ours, theirs)


def _term_sd(ran_pars: pd.DataFrame, factor: str, term: str) -> float:
    """A ran_vals term's sd from broom's ran_pars (groups may be `f`, `f.1`, ...)."""
    for _, row in ran_pars.iterrows():
        grp = str(row["group"])
        same = grp == factor or (grp.startswith(factor + ".") and grp[len(factor) + 1 :].isdigit())
        if same and row["term"] == f"sd__{term}":
            return float(row["estimate"])
    raise AssertionError(f"no sd for {factor}/{term}")


def _policy_bounds(ref: pd.DataFrame, variant: str, t: dict) -> dict[str, np.ndarray]:
    """Allowed |ours - broom's| per numeric column and row, from the tolerance policy."""
    fit_r = t["r"]
    policy = POLICIES[fit_r.model]
    sigma = abs(fit_r.sigma)
    if variant == "glance":
        loglik = policy["loglik"].bound(0.0)
        deviance = (
            policy["objective"].bound(abs(fit_r.deviance)) if fit_r.model == "glmer"
            else 2 * loglik
        )  # fmt: skip
        bounds = {"nobs": 0.0, "sigma": policy["sigma"].bound(sigma), "logLik": loglik,
                  "AIC": policy["aic"].bound(0.0), "BIC": policy["bic"].bound(0.0),
                  "deviance": deviance, "df.residual": 0.0,
                  "REMLcrit": policy["criterion"].bound(abs(fit_r.criterion))}  # fmt: skip
        return {c: np.array([bounds[c]]) for c in ref.columns}
    level = VARIANTS[variant].get("conf_level", 0.95)
    q = norm.ppf((1 + level) / 2)
    ran_pars = t["ref"]["ran_pars"]
    out = {c: np.full(len(ref), np.nan) for c in _numeric(ref)}
    for i, row in ref.reset_index(drop=True).iterrows():
        est = float(row["estimate"])
        if row["effect"] == "fixed":
            se = float(row["std.error"])
            b_est = policy["fixef"].bound(max(abs(est), se))
            b_se = policy["fixef_se"].bound(se)
            z = est / se
            b_z = b_est / se + abs(est) * b_se / se**2
            vals = {"estimate": b_est, "std.error": b_se, "statistic": b_z,
                    "p.value": 2 * norm.pdf(z) * b_z,
                    "conf.low": b_est + q * b_se, "conf.high": b_est + q * b_se}  # fmt: skip
        elif row["effect"] == "ran_pars":
            term = str(row["term"])
            if row["group"] == "Residual":
                b = policy["sigma"].bound(sigma)
            elif term.startswith("cor__"):
                b = policy["varcorr"].bound(1.0)
            else:
                b = policy["varcorr"].bound(max(abs(est), 1e-3 * sigma))
            vals = {"estimate": b}
        else:
            sd = _term_sd(ran_pars, str(row["group"]), str(row["term"]))
            se = float(row["std.error"])
            b_est = policy["ranef"].bound(max(sd, 1e-8 * sigma))
            # cond_var's tolerance is on the variance: |se_a^2 - se_b^2| <= bound(se_b^2)
            b_se = policy["cond_var"].bound(max(se**2, (1e-3 * sigma) ** 2)) / (2 * se)
            vals = {"estimate": b_est, "std.error": b_se,
                    "conf.low": b_est + q * b_se, "conf.high": b_est + q * b_se}  # fmt: skip
        for col in out:
            out[col][i] = vals.get(col, 0.0)
    return out


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("variant", [*VARIANTS, "glance"])
@pytest.mark.parametrize("case", list(CASES))
def test_python_engine_tables_match_broom_mixed_within_policy(case_tables, case, variant):
    t = case_tables(case)
    ref = t["ref"][variant]
    mine = _mine(t["python"], variant)
    _check_layout(mine, ref, variant)
    bounds = _policy_bounds(ref, variant, t)
    for col in _numeric(ref):
        ours = mine[GLANCE_NAMES.get(col, col.replace(".", "_"))].to_numpy(dtype=float)
        theirs = ref[col].to_numpy(dtype=float)
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs), err_msg=col)
        gap = np.abs(np.where(np.isnan(theirs), 0.0, ours - theirs))
        worst = int(np.argmax(gap - bounds[col]))
        assert np.all(gap <= bounds[col]), (
            f"{case}/{variant} column {col} row {worst}: ours {ours[worst]!r}, broom.mixed "
            f"{theirs[worst]!r}, |diff| {gap[worst]:.3g} > bound {bounds[col][worst]:.3g}"
        )


def test_column_layout_without_r():
    """lmer has no df or p-value (lmerTest not loaded); glmer binomial has z p-values."""
    rng = np.random.default_rng(3)
    g = np.repeat([f"g{j}" for j in range(12)], 10)
    u = rng.normal(0, 1.0, 12)[np.repeat(np.arange(12), 10)]
    x = rng.normal(size=120)
    d = pd.DataFrame({"y": 1 + 0.5 * x + u + rng.normal(size=120), "x": x, "g": g,
                      "s": rng.binomial(1, 1 / (1 + np.exp(-(x + u))))})  # fmt: skip
    lm = mixbridge.lmer("y ~ x + (1 | g)", d)
    assert list(lm.tidy().columns) == ["effect", "group", "term", "estimate", "std_error",
                                       "statistic"]  # fmt: skip
    assert lm.tidy()["term"].tolist() == ["(Intercept)", "x", "sd__(Intercept)",
                                          "sd__Observation"]  # fmt: skip
    assert list(lm.tidy(effects="fixed").columns) == ["effect", "term", "estimate", "std_error",
                                                      "statistic"]  # fmt: skip
    assert list(lm.glance().columns) == ["nobs", "sigma", "loglik", "aic", "bic",
                                         "reml_criterion", "df_residual"]  # fmt: skip
    ml = mixbridge.lmer("y ~ x + (1 | g)", d, reml=False).glance()
    assert "deviance" in ml and "reml_criterion" not in ml
    assert ml["deviance"].iloc[0] == pytest.approx(-2 * ml["loglik"].iloc[0], rel=1e-12)
    gm = mixbridge.glmer("s ~ x + (1 | g)", d, family="binomial")
    tab = gm.tidy(effects="fixed")
    assert "p_value" in tab and "df" not in tab
    z = tab["statistic"].to_numpy()
    np.testing.assert_allclose(tab["p_value"], 2 * norm.sf(np.abs(z)), rtol=1e-12)
    vals = gm.tidy(effects="ran_vals", conf_int=True)
    assert list(vals.columns) == ["effect", "group", "level", "term", "estimate", "std_error",
                                  "conf_low", "conf_high"]  # fmt: skip
    np.testing.assert_allclose(vals["std_error"] ** 2, gm.cond_var["g"][:, 0, 0], rtol=1e-12)
    # without conditional variances the standard errors are missing, not invented
    bare = dataclasses.replace(gm, cond_var={}).tidy(effects="ran_vals")
    assert bare["std_error"].isna().all() and bare["estimate"].notna().all()


@pytest.mark.parametrize(
    "kwargs, argument",
    [({"effects": "ran_coefs"}, "effects"), ({"effects": ("fixed", "random")}, "effects"),
     ({"effects": ()}, "effects"), ({"conf_level": 1.5}, "conf_level"),
     ({"conf_level": "95%"}, "conf_level")],
)  # fmt: skip
def test_bad_arguments_are_clear_errors(kwargs, argument):
    rng = np.random.default_rng(1)
    d = pd.DataFrame({"y": rng.normal(size=40), "g": np.repeat(list("abcd"), 10)})
    fit = mixbridge.lmer("y ~ 1 + (1 | g)", d)
    with pytest.raises(ArgumentError) as info:
        fit.tidy(**kwargs)
    assert info.value.argument == argument


def test_wald_limits_use_lme4s_formula():
    """conf_low = estimate + se * qnorm((1 - level) / 2), as lme4's confint(method="Wald")."""
    rng = np.random.default_rng(2)
    d = pd.DataFrame({"y": rng.normal(size=60), "x": rng.normal(size=60),
                      "g": np.repeat(list("abcdef"), 10)})  # fmt: skip
    tab = mixbridge.lmer("y ~ x + (1 | g)", d).tidy(effects="fixed", conf_int=True,
                                                   conf_level=0.8)  # fmt: skip
    half = tab["std_error"] * norm.ppf(0.9)
    np.testing.assert_allclose(tab["conf_high"] - tab["estimate"], half, rtol=1e-12)
    np.testing.assert_allclose(tab["estimate"] - tab["conf_low"], half, rtol=1e-12)
    assert not math.isnan(tab["conf_low"].iloc[0])
