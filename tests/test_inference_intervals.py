"""mixbridge.anova (likelihood-ratio tests) and fit.confint (Wald and profile intervals)
against lme4's anova.merMod and confint.merMod, run live on the same data.

Every reference number is computed by lme4 in the test (on lme4's own fit of the same model);
tolerances come from mixbridge.conformance.tolerance.INFERENCE_TOLS with their reasons.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from r_helpers import r_call
from scipy import stats

import mixbridge
from mixbridge.conformance.tolerance import INFERENCE_TOLS

SLEEP_SLOPE = "Reaction ~ Days + (Days | Subject)"
SLEEP_RI = "Reaction ~ Days + (1 | Subject)"
CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
PASTES = "strength ~ (1 | batch) + (1 | sample)"
PENICILLIN = "diameter ~ (1 | plate) + (1 | sample)"

R_CONFINT = """function(d, f, method, reml, glmm, family) {
  suppressMessages(library(lme4))
  m <- if (glmm) glmer(as.formula(f), data = d, family = family)
       else lmer(as.formula(f), data = d, REML = reml)
  ci <- suppressMessages(confint(m, method = method, oldNames = TRUE))
  list(names = rownames(ci), lower = as.numeric(ci[, 1]), upper = as.numeric(ci[, 2]))
}"""

R_ANOVA = """function(d, fs, reml, refit) {
  suppressMessages(library(lme4))
  ms <- lapply(fs, function(f) lmer(as.formula(f), data = d, REML = reml))
  a <- suppressMessages(do.call(anova, c(ms, list(refit = refit,
                                                 model.names = paste0("m", seq_along(fs))))))
  c(list(names = rownames(a)), as.list(a))
}"""


def lme4_confint(data, formula, method, reml=True, glmm=False, family="binomial"):
    got = r_call(R_CONFINT, d=data, f=formula, method=method, reml=reml, glmm=glmm, family=family)
    return pd.DataFrame({"lower": got["lower"], "upper": got["upper"]}, index=got["names"])


def _check_bounds(ours: pd.DataFrame, ref: pd.DataFrame, tol, scale) -> float:
    """Assert every bound within tol.bound(scale(row)); return the worst |Δ| / scale."""
    assert list(ours.index) == list(ref.index)
    worst = 0.0
    for name in ref.index:
        s = scale(name)
        for col in ("lower", "upper"):
            a, b = float(ours.loc[name, col]), float(ref.loc[name, col])
            if np.isnan(b):
                assert np.isnan(a), (name, col, a)
                continue
            assert abs(a - b) <= tol.bound(s), (name, col, a, b, abs(a - b) / s)
            worst = max(worst, abs(a - b) / s)
    return worst


# ---------------------------------------------------------------------------------------------
# Wald


@pytest.mark.parametrize(
    ("dataset", "formula", "glmm"),
    [("sleepstudy", SLEEP_SLOPE, False), ("Penicillin", PENICILLIN, False), ("cbpp", CBPP, True)],
)
def test_wald_matches_lme4(r_dataset, dataset, formula, glmm):
    data = r_dataset(dataset)
    fit = (mixbridge.glmer(formula, data, family="binomial") if glmm
           else mixbridge.lmer(formula, data))  # fmt: skip
    ours = fit.confint("wald")
    ref = lme4_confint(data, formula, "Wald", glmm=glmm)
    tol = INFERENCE_TOLS["glmer" if glmm else "lmer"]["wald"]
    z = stats.norm.ppf(0.975)

    def scale(name):
        return abs(float(ref.loc[name].mean())) + z * float(fit.fixef_se.get(name, 0.0))

    _check_bounds(ours, ref, tol, scale)
    assert ours.iloc[: len(fit.theta)].isna().all().all()  # lme4: NA for the variances


def test_wald_level_and_parm(r_dataset):
    fit = mixbridge.lmer(SLEEP_RI, r_dataset("sleepstudy"))
    ci = fit.confint("wald", level=0.9, parm="beta_")
    z = stats.norm.ppf(0.95)
    assert list(ci.index) == ["(Intercept)", "Days"]
    np.testing.assert_allclose(ci["upper"] - ci["lower"], 2 * z * fit.fixef_se, rtol=1e-12)
    assert list(fit.confint("wald", parm=[".sigma", 0]).index) == [".sigma", ".sig01"]


def test_confint_bad_arguments_name_the_argument(r_dataset):
    fit = mixbridge.lmer(SLEEP_RI, r_dataset("sleepstudy"))
    with pytest.raises(mixbridge.ArgumentError, match="method"):
        fit.confint("bayes")
    with pytest.raises(mixbridge.ArgumentError, match="level"):
        fit.confint("wald", level=1.5)
    with pytest.raises(mixbridge.ArgumentError, match="Dayz"):
        fit.confint("wald", parm=["Dayz"])


# ---------------------------------------------------------------------------------------------
# Likelihood-ratio tests


@pytest.mark.parametrize("refit", [True, False])
def test_anova_matches_lme4(r_dataset, refit):
    data = r_dataset("sleepstudy")
    forms = [SLEEP_SLOPE, SLEEP_RI, "Reaction ~ 1 + (1 | Subject)"]
    fits = [mixbridge.lmer(f, data) for f in forms]
    ours = mixbridge.anova(*fits, refit=refit, names=["m1", "m2", "m3"])
    got = r_call(R_ANOVA, d=data, fs=forms, reml=True, refit=refit)
    ref = pd.DataFrame(
        {"npar": got["npar"], "loglik": got["logLik"], "deviance": got["deviance"],
         "chisq": got["Chisq"], "df": got["Df"], "p_value": got["Pr(>Chisq)"],
         "aic": got["AIC"], "bic": got["BIC"]},
        index=got["names"],
    )  # fmt: skip
    assert list(ours.index) == list(ref.index) == ["m3", "m2", "m1"]  # lme4's order: by npar
    tols = INFERENCE_TOLS["lmer"]
    np.testing.assert_array_equal(ours["npar"], ref["npar"])
    np.testing.assert_array_equal(ours["df"].fillna(-1), ref["df"].fillna(-1))
    for col in ("loglik", "aic", "bic"):
        assert np.max(np.abs(ours[col] - ref[col])) <= 1e-6 * (2 if col != "loglik" else 1)
    d_chisq = np.abs(ours["chisq"] - ref["chisq"]).iloc[1:]
    assert (d_chisq <= tols["lrt_chisq"].bound(0.0)).all(), d_chisq
    for a, b in zip(ours["p_value"].iloc[1:], ref["p_value"].iloc[1:], strict=True):
        assert abs(a - b) <= tols["lrt_p"].bound(b), (a, b)
    assert ours.attrs["refitted"] == (["m1", "m2", "m3"] if refit else [])


def test_anova_glmer_matches_lme4(r_dataset):
    data = r_dataset("cbpp")
    f0 = "cbind(incidence, size - incidence) ~ 1 + (1 | herd)"
    fits = [mixbridge.glmer(f, data, family="binomial") for f in (f0, CBPP)]
    ours = mixbridge.anova(*fits, names=["m0", "m1"])
    got = r_call(
        """function(d, f0, f1) {
          suppressMessages(library(lme4))
          m0 <- glmer(as.formula(f0), data = d, family = binomial)
          m1 <- glmer(as.formula(f1), data = d, family = binomial)
          a <- anova(m0, m1)
          list(chisq = a$Chisq[2], p = a[["Pr(>Chisq)"]][2], df = a$Df[2])
        }""",
        d=data, f0=f0, f1=CBPP,
    )  # fmt: skip
    tols = INFERENCE_TOLS["glmer"]
    assert float(ours["df"].iloc[1]) == float(got["df"][0]) == 3
    assert abs(ours["chisq"].iloc[1] - got["chisq"][0]) <= tols["lrt_chisq"].bound(0.0)
    assert abs(ours["p_value"].iloc[1] - got["p"][0]) <= tols["lrt_p"].bound(got["p"][0])


def test_anova_rejects_models_lme4_rejects(r_dataset):
    data = r_dataset("sleepstudy")
    full = mixbridge.lmer(SLEEP_RI, data)
    fewer = mixbridge.lmer(SLEEP_RI, data.iloc[:150])
    with pytest.raises(mixbridge.ArgumentError, match="same size of dataset"):
        mixbridge.anova(full, fewer)
    other = mixbridge.lmer("Days ~ Reaction + (1 | Subject)", data)
    with pytest.raises(mixbridge.ArgumentError, match="different responses"):
        mixbridge.anova(full, other)
    with pytest.raises(mixbridge.ArgumentError, match="at least two"):
        mixbridge.anova(full)


# ---------------------------------------------------------------------------------------------
# Profile


def _profile_case(r_dataset, dataset, formula, glmm=False):
    data = r_dataset(dataset)
    fit = (mixbridge.glmer(formula, data, family="binomial") if glmm
           else mixbridge.lmer(formula, data))  # fmt: skip
    ours = fit.confint("profile")
    ref = lme4_confint(data, formula, "profile", glmm=glmm)
    tol = INFERENCE_TOLS["glmer" if glmm else "lmer"]["profile"]

    def scale(name):
        return float(ref.loc[name, "upper"] - ref.loc[name, "lower"]) / 2.0

    return _check_bounds(ours, ref, tol, scale)


@pytest.mark.parametrize(
    ("dataset", "formula"),
    [("sleepstudy", SLEEP_RI), ("Pastes", PASTES)],
)
def test_profile_matches_lme4(r_dataset, dataset, formula):
    _profile_case(r_dataset, dataset, formula)


@pytest.mark.long
@pytest.mark.parametrize(
    ("dataset", "formula", "glmm"),
    [("sleepstudy", SLEEP_SLOPE, False), ("Penicillin", PENICILLIN, False), ("cbpp", CBPP, True)],
)
def test_profile_matches_lme4_slow(r_dataset, dataset, formula, glmm):
    _profile_case(r_dataset, dataset, formula, glmm)


def test_profile_solves_the_crossing(r_dataset):
    """At our bounds ζ = ±z exactly: the ML deviance with the parameter held there is the
    optimum's plus z² (checked with an independent refit: the fixed effect moved into the
    offset and the model refitted by ML)."""
    data = r_dataset("sleepstudy")
    fit = mixbridge.lmer(SLEEP_RI, data)
    ci = fit.confint("profile", parm=["Days"])
    ml = mixbridge.lmer(SLEEP_RI, data, reml=False)
    z2 = stats.norm.ppf(0.975) ** 2
    for b in ci.loc["Days"]:
        d = data.assign(off=b * data["Days"])
        held = mixbridge.lmer("Reaction ~ 1 + (1 | Subject)", d, reml=False, offset="off")
        assert abs((-2 * held.loglik) - (-2 * ml.loglik) - z2) < 1e-6


def test_profile_exact_where_lme4_spline_is_off(needs_r):
    """Five rows, four groups (found by the property test): the ML fit is singular and the
    profile steep. Our bounds are where ζ = ±z, checked against the marginal likelihood
    computed independently (dense V, nuisance parameters minimized by a 1-D search); lme4's
    spline puts the lower .sigma bound where |ζ| is 2.28, not 1.96 (a known divergence of lme4,
    not ours)."""
    from scipy import optimize

    d = pd.DataFrame({"y": [0.590061, 1.487325, 2.171895, 2.587504, 0.401165],
                      "g": ["G00", "G00", "G01", "G02", "G03"]})  # fmt: skip
    y = d["y"].to_numpy()
    same = (d["g"].to_numpy()[:, None] == d["g"].to_numpy()[None, :]).astype(float)

    def dev(sb, s):  # ML deviance with the mean profiled out, from V = s²I + sb² ZZ'
        v = s * s * np.eye(5) + sb * sb * same
        vi = np.linalg.inv(v)
        one = np.ones(5)
        r = y - (one @ vi @ y) / (one @ vi @ one)
        return 5 * np.log(2 * np.pi) + np.linalg.slogdet(v)[1] + r @ vi @ r

    base = -2 * mixbridge.lmer("y ~ 1 + (1 | g)", d, reml=False).loglik

    def zeta_sigma(s):  # |ζ| with σ held at s, sd_b profiled
        res = optimize.minimize_scalar(lambda sb: dev(sb, s), bounds=(0, 20), method="bounded",
                                       options={"xatol": 1e-10})  # fmt: skip
        return np.sqrt(res.fun - base)

    def zeta_sd(sb):
        res = optimize.minimize_scalar(lambda ls: dev(sb, np.exp(ls)), bounds=(-8, 3),
                                       method="bounded", options={"xatol": 1e-10})  # fmt: skip
        return np.sqrt(res.fun - base)

    ours = mixbridge.lmer("y ~ 1 + (1 | g)", d).confint("profile")
    ref = lme4_confint(d, "y ~ 1 + (1 | g)", "profile")
    z = stats.norm.ppf(0.975)
    for bound in ours.loc[".sigma"]:
        assert abs(zeta_sigma(bound) - z) < 1e-4
    assert abs(zeta_sd(ours.loc[".sig01", "upper"]) - z) < 1e-4
    assert ours.loc[".sig01", "lower"] == ref.loc[".sig01", "lower"] == 0.0
    assert zeta_sigma(ref.loc[".sigma", "lower"]) > 2.2  # lme4's spline, 15% below the crossing
