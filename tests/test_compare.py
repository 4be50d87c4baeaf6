"""compare() and the tolerance policy on hand-constructed fits (no R, no engines needed).

The fits are built field by field so each test controls exactly one difference and can check
that it is caught (FAIL), explained (flat optimum / known divergence) or passed.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest

from mixbridge.conformance.compare import compare
from mixbridge.conformance.divergences import load_divergences, version_matches
from mixbridge.conformance.tolerance import POLICIES, policy_for
from mixbridge.errors import ArgumentError
from mixbridge.results import BayesGLMFit, MixedFit

LEVELS = [str(x) for x in (308, 309, 310)]


def _varcorr(sd0: float, sd1: float, corr: float, sigma: float) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "grp": ["Subject", "Subject", "Subject", "Residual"],
            "var1": ["(Intercept)", "Days", "(Intercept)", None],
            "var2": [None, None, "Days", None],
            "vcov": [sd0**2, sd1**2, corr * sd0 * sd1, sigma**2],
            "sdcor": [sd0, sd1, corr, sigma],
        }
    )


def make_mixed(engine: str = "python", objective=None, **changes) -> MixedFit:
    """A random-slope lmer fit shaped like sleepstudy's (numbers need not be lme4's)."""
    fixef = pd.Series([251.4051, 10.46729], index=["(Intercept)", "Days"])
    vcov = pd.DataFrame(
        [[45.7, -1.0], [-1.0, 2.39]], index=fixef.index, columns=fixef.index, dtype=float
    )
    ranef = pd.DataFrame(
        {"(Intercept)": [2.26, -40.4, -38.96], "Days": [9.2, -8.6, -5.45]}, index=LEVELS
    )
    cond_var = np.array([[[145.7, -21.9], [-21.9, 5.3]]] * 3)
    fit = MixedFit(
        model="lmer",
        formula="Reaction ~ Days + (Days | Subject)",
        family="gaussian",
        link="identity",
        reml=True,
        fixef=fixef,
        vcov=vcov,
        theta=np.array([0.9667, 0.01516, 0.2309]),
        theta_names=["Subject.(Intercept)", "Subject.Days.(Intercept)", "Subject.Days"],
        varcorr=_varcorr(24.74, 5.922, 0.066, 25.59),
        sigma=25.59,
        ranef={"Subject": ranef},
        cond_var={"Subject": cond_var},
        loglik=-871.8141,
        df=6,
        deviance=1751.9,
        reml_criterion=1743.628,
        aic=1755.628,
        bic=1774.786,
        nobs=180,
        ngroups={"Subject": 18},
        fitted=np.zeros(180),
        residuals=np.zeros(180),
        singular=False,
        converged=True,
        messages=[],
        engine=engine,
        versions={"lme4": "1.1-31"} if engine == "r" else {},
    ).attach(objective=objective)
    for k, v in changes.items():
        setattr(fit, k, v)
    return fit


def test_identical_fits_are_ok_and_table_renders():
    a, b = make_mixed("python"), make_mixed("r")
    cmp = compare(a, b)
    assert cmp.ok, str(cmp)
    assert cmp.policy == "lmer"
    quantities = [r.quantity for r in cmp.rows]
    for q in ("fixef", "theta", "sigma", "varcorr", "ranef", "cond_var", "fixef_se", "loglik"):
        assert q in quantities
    assert "criterion" in quantities and "aic" in quantities and "bic" in quantities
    text = str(cmp)
    assert "verdict: OK" in text and "fixef" in text
    frame = cmp.to_frame()
    assert list(frame["status"].unique()) == ["ok"]
    d = cmp.to_dict()
    assert d["ok"] is True and len(d["rows"]) == len(cmp.rows)
    cmp.assert_ok()


def test_fixef_difference_beyond_se_scaled_tolerance_fails_and_names_it():
    b = make_mixed("r")
    a = make_mixed("python")
    # 1e-4 x max(|β|, SE) for Days is 1e-4 x 10.47 ≈ 1.05e-3: 2e-3 must fail, 5e-4 must pass
    a.fixef = a.fixef + pd.Series([0.0, 2e-3], index=a.fixef.index)
    cmp = compare(a, b)
    row = cmp.row("fixef")
    assert row.status == "FAIL" and row.where == "Days"
    assert row.max_abs == pytest.approx(2e-3)
    with pytest.raises(AssertionError, match="fixef"):
        cmp.assert_ok()
    a.fixef = b.fixef + pd.Series([0.0, 5e-4], index=a.fixef.index)
    assert compare(a, b).row("fixef").status == "ok"


def test_ranef_scaled_by_term_sd():
    b = make_mixed("r")
    a = make_mixed("python")
    ranef = a.ranef["Subject"].copy()
    # Days sd 5.922 -> bound 5.9e-4; intercept sd 24.74 -> bound 2.5e-3
    ranef.loc["309", "(Intercept)"] += 2e-3  # within the intercept's bound
    a.ranef = {"Subject": ranef}
    assert compare(a, b).row("ranef").status == "ok"
    ranef.loc["310", "Days"] += 2e-3  # beyond the slope's bound
    row = compare(a, b).row("ranef")
    assert row.status == "FAIL" and row.where == "Subject[310].Days"


def test_missing_label_fails_naming_it():
    b = make_mixed("r")
    a = make_mixed("python")
    a.fixef = pd.Series([251.4051, 10.46729], index=["(Intercept)", "days"])
    row = compare(a, b).row("fixef")
    assert row.status == "FAIL"
    assert "missing in a: Days" in row.reason and "missing in b: days" in row.reason
    ranef = a.ranef["Subject"].drop(index="310")
    a.ranef = {"Subject": ranef}
    assert "Subject[310]" in compare(a, b).row("ranef").reason


def test_nan_on_one_side_fails():
    b = make_mixed("r")
    a = make_mixed("python", sigma=math.nan)
    assert compare(a, b).row("sigma").status == "FAIL"


def test_loglik_absolute_tolerance_and_one_sided_criterion():
    b = make_mixed("r")
    a = make_mixed("python", loglik=b.loglik - 5e-7)
    assert compare(a, b).row("loglik").status == "ok"
    a.loglik = b.loglik - 5e-6
    assert compare(a, b).row("loglik").status == "FAIL"
    # criterion: a worse (higher) by > 1e-6 rel fails; a lower is never a criterion failure
    a.reml_criterion = b.reml_criterion * (1 + 3e-6)
    assert compare(a, b).row("criterion").status == "FAIL"
    a.reml_criterion = b.reml_criterion * (1 - 3e-6)
    assert compare(a, b).row("criterion").status == "ok"


def _quadratic(theta0: np.ndarray, base: float, curvature: float):
    """A criterion with its minimum `base` at theta0."""

    def f(theta):
        d = np.asarray(theta, dtype=float) - theta0
        return base + curvature * float(d @ d)

    return f


def test_flat_optimum_explains_parameter_differences():
    theta_b = np.array([0.9667, 0.01516, 0.2309])
    theta_a = theta_b + np.array([5e-4, 0.0, 0.0])  # 5e-4 rel: beyond the 1e-4 θ tolerance
    crit = 1743.628
    # very flat: curvature 1 -> criterion differs by 2.5e-7 < slack 1e-6 + 1e-10 rel
    obj = _quadratic(theta_b, crit, 1.0)
    a = make_mixed("python", objective=obj, theta=theta_a, reml_criterion=crit + 2.5e-7)
    b = make_mixed("r", objective=obj)
    cmp = compare(a, b)
    assert cmp.row("objective").status == "ok"
    row = cmp.row("theta")
    assert row.status == "explained", str(cmp)
    assert "flat optimum" in row.reason and "1743.628" in row.reason
    assert cmp.ok


def test_steep_optimum_does_not_explain_and_reports_who_stopped_early():
    theta_b = np.array([0.9667, 0.01516, 0.2309])
    theta_a = theta_b + np.array([5e-4, 0.0, 0.0])
    crit = 1743.628
    obj = _quadratic(theta_b, crit, 1e3)  # a's θ is worse by 2.5e-4 > slack
    a = make_mixed("python", objective=obj, theta=theta_a, reml_criterion=obj(theta_a))
    b = make_mixed("r", objective=obj)
    cmp = compare(a, b)
    row = cmp.row("theta")
    assert row.status == "FAIL"
    assert "a stopped early" in row.reason


def test_reference_stopping_early_is_explained():
    theta_a = np.array([0.9667, 0.01516, 0.2309])
    theta_b = theta_a + np.array([5e-4, 0.0, 0.0])
    crit = 1743.628
    obj = _quadratic(theta_a, crit, 1e3)
    a = make_mixed("python", objective=obj, theta=theta_a)
    b = make_mixed("r", objective=obj, theta=theta_b, reml_criterion=obj(theta_b))
    b.loglik = -b.reml_criterion / 2
    cmp = compare(a, b)
    assert cmp.row("theta").status == "explained"
    assert "b stopped early" in cmp.row("theta").reason
    assert cmp.row("loglik").status == "explained"
    assert cmp.row("criterion").status == "ok"  # a lower: fine by the one-sided rule


def test_inconsistent_objectives_fail_and_explain_nothing():
    theta_b = np.array([0.9667, 0.01516, 0.2309])
    theta_a = theta_b + np.array([5e-4, 0.0, 0.0])
    crit = 1743.628
    obj_b = _quadratic(theta_b, crit, 1.0)
    obj_a = _quadratic(theta_b, crit + 1e-3, 1.0)  # a different function
    a = make_mixed("python", objective=obj_a, theta=theta_a)
    b = make_mixed("r", objective=obj_b)
    cmp = compare(a, b)
    assert cmp.row("objective").status == "FAIL"
    assert cmp.row("theta").status == "FAIL"


def test_no_objective_gives_a_note():
    a = make_mixed("python", theta=np.array([0.97, 0.01516, 0.2309]))
    cmp = compare(a, make_mixed("r"))
    assert cmp.row("theta").status == "FAIL"
    assert any("objective" in n for n in cmp.notes)


def test_policy_choice_and_overrides():
    a, b = make_mixed("python"), make_mixed("r")
    assert policy_for(a, b).name == "lmer"
    assert policy_for(a, make_mixed("r/subprocess")).name == "lmer"
    assert policy_for(make_mixed("statsmodels"), b).name == "third_party_lmer"
    g = make_mixed("python", model="glmer")
    assert policy_for(g, make_mixed("r", model="glmer")).name == "glmer"
    loose = policy_for(a, b, {"fixef": 1e-2})
    assert loose["fixef"].rel == 1e-2 and "override" in loose["fixef"].reason
    with pytest.raises(ArgumentError, match="unknown quantity 'nonsense'"):
        policy_for(a, b, {"nonsense": 1.0})
    # every tolerance carries its reason
    for policy in POLICIES.values():
        for q, tol in policy.tols.items():
            assert tol.reason, (policy.name, q)


# ---------------------------------------------------------------------------------------------
# Known divergences


def test_registry_loads_and_versions_match():
    ids = {d.id for d in load_divergences()}
    assert {
        "glmer_agq_saturated_constant",
        "arm_binomial_aic_n_ok",
        "bayesglm_gaussian_own_dispersion",
    } <= ids
    assert version_matches("1.1-31", "<2.0")
    assert not version_matches("2.0.1", "<2.0")
    assert version_matches("1.13-1", "<=1.14-4,>=1.0")


def _agq_pair(const: float, shift: float):
    """Two glmer nAGQ=25 fits; a reports the full logLik, shifted from b's by `shift`."""
    b = make_mixed("r", model="glmer", reml=False, nagq=25, loglik=-50.0)
    b.reml_criterion = None
    b.aic, b.bic = 100.0 + 8, 100.0 + 20
    a = copy.deepcopy(b)
    a.engine, a.versions = "python", {}
    a.loglik = b.loglik + shift
    a.aic, a.bic = b.aic - 2 * shift, b.bic - 2 * shift
    a.loglik_constant = const
    return a, b


def test_agq_constant_divergence_explains_when_check_holds():
    a, b = _agq_pair(-41.98, -41.98)
    cmp = compare(a, b)
    for q in ("loglik", "criterion", "aic", "bic"):
        row = cmp.row(q)
        assert row.status == "explained", str(cmp)
        assert "glmer_agq_saturated_constant" in row.reason
    assert cmp.ok


def test_agq_constant_divergence_that_no_longer_holds_is_a_fail():
    # the engine claims a constant of -41.98 but its logLik equals lme4's: the entry is stale
    a, b = _agq_pair(-41.98, 0.0)
    cmp = compare(a, b)
    assert cmp.row("loglik").status == "FAIL"
    assert "does not hold" in cmp.row("loglik").reason
    # wrong constant
    a, b = _agq_pair(-41.98, -40.0)
    assert compare(a, b).row("loglik").status == "FAIL"


def test_divergence_not_applied_to_other_versions(tmp_path):
    a, b = _agq_pair(-41.98, -41.98)
    b.versions = {"lme4": "2.1-0"}
    assert compare(a, b).row("loglik").status == "FAIL"


def make_bayes(engine: str, **changes) -> BayesGLMFit:
    coef = pd.Series([-1.2, 0.5], index=["(Intercept)", "x"])
    se = pd.Series([0.3, 0.1], index=coef.index)
    fit = BayesGLMFit(
        formula="cbind(s, f) ~ x",
        family="binomial",
        link="logit",
        coef=coef,
        se=se,
        se_display=se.copy(),
        vcov=pd.DataFrame(np.diag(se**2), index=coef.index, columns=coef.index),
        dispersion=1.0,
        dispersion_pearson=1.0,
        deviance=12.5,
        null_deviance=30.0,
        aic=40.0,
        df_residual=8,
        iterations=6,
        converged=True,
        prior_mean=np.zeros(2),
        prior_scale=np.array([10.0, 2.5]),
        prior_df=np.ones(2),
        prior_sd=np.array([10.0, 2.5]),
        fitted=np.full(10, 0.3),
        nobs=10,
        messages=[],
        engine=engine,
        versions={"arm": "1.13-1"} if engine == "r" else {},
    )
    for k, v in changes.items():
        setattr(fit, k, v)
    return fit


def test_bayesglm_rows_and_tolerance():
    a, b = make_bayes("python"), make_bayes("r")
    cmp = compare(a, b)
    assert cmp.ok and cmp.policy == "bayesglm"
    assert [r.quantity for r in cmp.rows] == [
        "nobs",
        "coef",
        "se",
        "se_display",
        "dispersion",
        "deviance",
        "aic",
    ]
    a.coef = a.coef + pd.Series([0.0, 1e-7], index=a.coef.index)  # 1e-8 x 0.5 = 5e-9 bound
    assert compare(a, b).row("coef").status == "FAIL"


def test_arm_binomial_aic_divergence_recomputed_from_data():
    from scipy.stats import binom

    rng = np.random.default_rng(1)
    trials = rng.integers(5, 20, size=10).astype(float)
    mu = np.full(10, 0.3)
    succ = rng.binomial(trials.astype(int), 0.3)
    y = succ / trials
    rank = 2
    glm_aic = -2 * np.sum(binom.logpmf(succ, trials, mu)) + 2 * rank
    n_ok = 10.0
    # arm: family$aic(y, n.ok, ...) -> m = n.ok and R's ifelse(m > 0, wt/m, 0) has m's length 1,
    # so the weight of observation 1 is recycled to all
    arm_aic = -2 * np.sum(trials[0] / n_ok * binom.logpmf(np.rint(n_ok * y), n_ok, mu)) + 2 * rank
    extra = {"y": y, "prior_weights": trials}
    a = make_bayes("python", aic=glm_aic, extra=extra)
    b = make_bayes("r", aic=arm_aic, extra=extra)
    row = compare(a, b).row("aic")
    assert row.status == "explained", row.reason
    assert "arm_binomial_aic_n_ok" in row.reason
    # a wrong aic is not explained by the divergence
    a.aic = glm_aic + 0.5
    assert compare(a, b).row("aic").status == "FAIL"


def test_flat_theta_does_not_hide_a_drifted_fixef():
    theta = np.array([0.9667, 0.01516, 0.2309])
    obj = _quadratic(theta, 1743.628, 1.0)
    b = make_mixed("r", objective=obj)
    # same θ (so the optimum is trivially "flat"), but β drifted by 100 x its tolerance
    a = make_mixed("python", objective=obj)
    a.fixef = a.fixef + pd.Series([0.0, 0.1], index=a.fixef.index)
    row = compare(a, b).row("fixef")
    assert row.status == "FAIL"
    assert "not explained by the flat optimum" in row.reason
    # θ moved within the flat region, β moved far more than θ can explain: still a FAIL
    a.theta = theta + np.array([2e-4, 0.0, 0.0])
    assert compare(a, b).row("fixef").status == "FAIL"


# ---------------------------------------------------------------------------------------------
# The flat-optimum rule (tolerance.gap_verdict): a parameter gap judged by its criterion cost


def test_gap_cost_bounds_the_excess_over_the_optimum():
    """On a quadratic criterion the midpoint gives the exact curvature along the gap, and the
    excess bounds are attained when the optimum lies on the segment."""
    from mixbridge.conformance.tolerance import GapCost, excess_lower_bound

    f = _quadratic(np.zeros(2), 10.0, 3.0)  # f* = 10 at 0, H = 6 I
    a, b = np.array([0.2, 0.0]), np.array([-0.1, 0.0])
    c = GapCost("a", f(a), f(b), f((a + b) / 2))
    assert c.cost == pytest.approx(0.5 * 6 * 0.3**2)
    assert c.excess_a == pytest.approx(f(a) - 10.0)
    assert c.excess_b == pytest.approx(f(b) - 10.0)
    # off the segment the bound is below the true excess, never above
    a2 = np.array([0.2, 0.1])
    c2 = GapCost("a", f(a2), f(b), f((a2 + b) / 2))
    assert 0 <= c2.excess_a <= f(a2) - 10.0
    assert excess_lower_bound(1e-3, 0.0) == 1e-3 and excess_lower_bound(-1.0, 0.0) == 0.0


def test_both_off_the_optimum_symmetrically_is_not_flat():
    """a and b on either side of the optimum at the same height: the criterion difference is 0,
    which a rule on the difference alone calls flat; the curvature along the gap proves both
    are 2.5e-4 above the optimum, far beyond the slack."""
    theta0 = np.array([0.9667, 0.01516, 0.2309])
    delta = np.array([5e-4, 0.0, 0.0])
    obj = _quadratic(theta0, 1743.628, 1e3)
    a = make_mixed("python", objective=obj, theta=theta0 + delta, reml_criterion=obj(theta0))
    b = make_mixed("r", objective=obj, theta=theta0 - delta)
    cmp = compare(a, b)
    row = cmp.row("theta")
    assert row.status == "FAIL", str(cmp)
    assert "a stopped early" in row.reason


def test_gap_within_the_theta_tolerance_can_still_cost_too_much():
    """θ 5e-5 relative apart (inside the 1e-4 tolerance) on a steep criterion (curvature 2e6):
    a is 2.3e-3 above the optimum, far beyond the slack: FAIL, with the numbers."""
    theta_b = np.array([0.9667, 0.01516, 0.2309])
    theta_a = theta_b * (1 + np.array([5e-5, 0.0, 0.0]))
    obj = _quadratic(theta_b, 1743.628, 1e6)
    a = make_mixed("python", objective=obj, theta=theta_a, reml_criterion=obj(theta_a))
    b = make_mixed("r", objective=obj)
    cmp = compare(a, b)
    row = cmp.row("theta")
    assert row.max_rel < POLICIES["lmer"]["theta"].rel
    assert row.status == "FAIL" and "a stopped early" in row.reason, str(cmp)
    # the same gap on a flat criterion is fine
    flat = _quadratic(theta_b, 1743.628, 1.0)
    a.attach(objective=flat)
    b.attach(objective=flat)
    assert compare(a, b).row("theta").status == "ok"


def test_insteval_like_flat_gap_is_explained():
    """Issue 11's InstEval numbers: criterion 2.4e5, lme4's θ_dept 9.2e-6 (1.3e-4 relative)
    from the optimum on a curvature of 4.2e3 along it: 1.8e-7 worse, 7.6e-13 relative — below
    any fixed rounding gap one could defend, and still equally optimal: explained."""
    theta_a = np.array([0.9667, 0.01516, 0.0706])
    theta_b = theta_a + np.array([0.0, 0.0, -9.2e-6])
    crit = 237585.55
    center = theta_a

    def obj(theta):
        d = np.asarray(theta, dtype=float) - center
        return crit + 0.5 * 4.2e3 * d[2] ** 2 + 50.0 * (d[0] ** 2 + d[1] ** 2)

    a = make_mixed("python", objective=obj, theta=theta_a, reml_criterion=crit)
    b = make_mixed("r", objective=obj, theta=theta_b, reml_criterion=obj(theta_b))
    b.loglik = a.loglik
    cmp = compare(a, b)
    row = cmp.row("theta")
    assert row.status == "explained", str(cmp)
    assert cmp.ok, str(cmp)
