"""glmer: the reported criterion, `fit.objective` and `glmer_objective` are one function.

At every size the Python engine reports, at its estimates, the value of the deviance function it
optimized, and `fit.objective(...)` / `mixbridge.glmer_objective(...)` evaluate that same function
anywhere. Which function: lme4's deviance function at the fit's PIRLS tolerance
(`fit.optimizer["tol_pwrss"]`): lme4's default 1e-7 below `GRADIENT_MIN_ROWS` rows, the converged
Laplace (AGQ) deviance (`TIGHT_TOL`) from there on or whenever `control={"tol_pwrss": ...}` asks
for a tolerance that tight. These need no R; the comparison with lme4 (a registered divergence)
is in test_glmer_pirls_tolerance.py.
"""

from __future__ import annotations

import pandas as pd
import pytest
from designs import big_binomial

import mixbridge
from mixbridge.python_impl import spec

FORMULA = "yb ~ x1 + x2 + (1 | g)"


@pytest.fixture(scope="module")
def big() -> pd.DataFrame:
    # just above the threshold: the default big-data path (rows reordered, gradient optimizer)
    return big_binomial(spec.GRADIENT_MIN_ROWS + 10_000, 6_000)


@pytest.fixture(scope="module")
def small() -> pd.DataFrame:
    return big_binomial(3_000, 300)


def _assert_one_function(fit, data, control=None, nagq=1) -> None:
    theta, beta = fit.theta, fit.fixef.to_numpy()
    kw = dict(family="binomial", nagq=nagq, control=control)
    at_fit = mixbridge.glmer_objective(FORMULA, data, theta, beta, **kw)
    # the same arithmetic (same start lp0, same tolerance): equal to rounding. nAGQ > 1: the
    # criterion is the normalized one, lme4's deviance minus the saturated constant
    reported = fit.criterion + 2.0 * fit.loglik_constant
    assert reported == pytest.approx(at_fit, rel=1e-13, abs=0)
    assert fit.objective(theta, beta) == pytest.approx(at_fit, rel=1e-13, abs=0)
    elsewhere = (theta * 1.1, beta + 0.02)
    assert fit.objective(*elsewhere) == pytest.approx(
        mixbridge.glmer_objective(FORMULA, data, *elsewhere, **kw), rel=1e-13, abs=0
    )


def test_big_fit_reports_the_function_glmer_objective_evaluates(big):
    """Before: -2 logLik was the converged Laplace deviance while glmer_objective (and
    fit.objective away from the optimum) used lme4's tolPwrss = 1e-7 from the stage-1 start:
    0.11 apart here (0.38 at 200,000 rows)."""
    fit = mixbridge.glmer(FORMULA, big, family="binomial")
    assert fit.optimizer["stage2"]["method"].endswith("analytic gradient")
    _assert_one_function(fit, big)
    assert fit.optimizer["tol_pwrss"] == spec.TIGHT_TOL
    # and that function is the converged Laplace deviance: a tighter PIRLS does not move it
    tighter = mixbridge.glmer_objective(
        FORMULA, big, fit.theta, fit.fixef.to_numpy(), control={"tol_pwrss": 1e-14}
    )
    assert fit.criterion == pytest.approx(tighter, rel=1e-13)


def test_small_fit_is_lme4s_function(small):
    fit = mixbridge.glmer(FORMULA, small, family="binomial")
    assert fit.optimizer["stage2"]["method"] == "Nelder-Mead"
    assert fit.optimizer["tol_pwrss"] == spec.LME4_TOL_PWRSS
    _assert_one_function(fit, small)


def test_tight_tolerance_takes_the_big_data_path(small):
    """control={"tol_pwrss": TIGHT_TOL or tighter} on small data: the converged Laplace
    deviance, optimized as on big data (analytic gradient), reported and evaluated as such."""
    control = {"tol_pwrss": 1e-13}
    fit = mixbridge.glmer(FORMULA, small, family="binomial", control=control)
    assert fit.optimizer["stage2"]["method"].endswith("analytic gradient")
    assert fit.optimizer["tol_pwrss"] == 1e-13
    _assert_one_function(fit, small, control)
    # its optimum is lower than the default fit's under that function
    default = mixbridge.glmer(FORMULA, small, family="binomial")
    at_default = mixbridge.glmer_objective(
        FORMULA, small, default.theta, default.fixef.to_numpy(), control=control
    )
    assert fit.criterion <= at_default


def test_lme4_tolerance_on_big_data_optimizes_lme4s_function(small, monkeypatch):
    """An explicit tol_pwrss looser than TIGHT_TOL above the threshold: lme4's function,
    optimized as lme4 does (Nelder-Mead), since the gradient is that of the converged one."""
    monkeypatch.setattr(spec, "GRADIENT_MIN_ROWS", 1_000)
    control = {"tol_pwrss": 1e-7}
    fit = mixbridge.glmer(FORMULA, small, family="binomial", control=control)
    assert fit.optimizer["stage2"]["method"] == "Nelder-Mead"
    assert fit.optimizer["tol_pwrss"] == 1e-7
    _assert_one_function(fit, small, control)


def test_threshold_sets_the_default_tolerance(small, monkeypatch):
    """GRADIENT_MIN_ROWS (a module setting) decides the default: lowered, small data get the
    big-data path and its function, fit and glmer_objective alike."""
    monkeypatch.setattr(spec, "GRADIENT_MIN_ROWS", 1_000)
    fit = mixbridge.glmer(FORMULA, small, family="binomial")
    assert fit.optimizer["stage2"]["method"].endswith("analytic gradient")
    assert fit.optimizer["tol_pwrss"] == spec.TIGHT_TOL
    _assert_one_function(fit, small)
    explicit = mixbridge.glmer(FORMULA, small, family="binomial", control={"tol_pwrss": 1e-12})
    assert explicit.criterion == pytest.approx(fit.criterion, rel=1e-12)


@pytest.mark.parametrize("nagq", [0, 5])
def test_big_data_other_nagq(small, monkeypatch, nagq):
    """nAGQ = 0 has no stage 2: the big-data setting must not skip its stage-1 optimization
    (before: θ stayed at its start, 1). nAGQ > 1 reports and evaluates the same function."""
    control = {"tol_pwrss": spec.TIGHT_TOL} if nagq == 0 else None
    reference = mixbridge.glmer(FORMULA, small, family="binomial", nagq=nagq, control=control)
    monkeypatch.setattr(spec, "GRADIENT_MIN_ROWS", 1_000)
    fit = mixbridge.glmer(FORMULA, small, family="binomial", nagq=nagq)
    assert fit.optimizer["tol_pwrss"] == spec.TIGHT_TOL
    _assert_one_function(fit, small, nagq=nagq)
    if nagq == 0:  # the same optimization on rows reordered by group: equal up to Brent's xtol
        assert fit.theta == pytest.approx(reference.theta, rel=1e-6)
        assert fit.criterion == pytest.approx(reference.criterion, rel=1e-12)
    else:  # the converged AGQ deviance, minimized: not above the default fit's there
        at_reference = fit.objective(reference.theta, reference.fixef.to_numpy())
        assert fit.criterion + 2 * fit.loglik_constant <= at_reference


def test_objective_control_evaluates_another_tolerance(small):
    """fit.objective(..., control=) is glmer_objective(..., control=) for the same model."""
    fit = mixbridge.glmer(FORMULA, small, family="binomial")
    theta, beta = fit.theta, fit.fixef.to_numpy()
    for control in ({"tol_pwrss": 1e-12}, {"tol_pwrss": 1e-7}):
        want = mixbridge.glmer_objective(FORMULA, small, theta, beta, control=control)
        assert fit.objective(theta, beta, control=control) == pytest.approx(want, rel=1e-13)
    assert fit.objective(theta, beta, control=None) == fit.criterion
    with pytest.raises(mixbridge.errors.ArgumentError, match="tol_pwrs"):
        fit.objective(theta, beta, control={"tol_pwrs": 1e-12})
