"""lmer's optimizer-loop criterion (LmerDevfun.profiled, BlockedCore.profile) and its analytic
gradient (LmerDevfun.profiled_grad) against the reference path and finite differences.

`profiled` takes PWRSS as the last pivot of one augmented Cholesky; `__call__` is lme4's route
(solve, residuals). The gradient's formula is checked against central differences of the same
function on both factorization layouts (blocked, with the first term's pair map, and dense),
REML and ML, with and without prior weights. Agreement with lme4 of the fits these drive is
covered by test_lmer_vs_r and test_lmer_predictor (blocked path vs R)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from designs import random_design

import mixbridge
from mixbridge.formula import build_mixed_terms
from mixbridge.python_impl import pls_augmented, pls_blocked
from mixbridge.python_impl.lmer_devfun import LmerDevfun
from mixbridge.python_impl.optimize import optimize_theta


def _crossed(seed: int, weights: bool = False) -> pd.DataFrame:
    """Three crossed scalar factors, q = 500 + 120 + 8 (> DENSE_Q_MAX: blocked layout)."""
    rng = np.random.default_rng(seed)
    n, levels = 3000, (500, 120, 8)
    codes = [rng.permutation(np.arange(n) % lv) for lv in levels]  # every level observed
    x = rng.normal(size=n)
    y = 1.0 + 0.4 * x + rng.normal(size=n)
    for c, sd in zip(codes, (0.8, 0.5, 0.3), strict=True):
        y += rng.normal(scale=sd, size=c.max() + 1)[c]
    data = pd.DataFrame({"y": y, "x": x})
    for name, c in zip("abc", codes, strict=True):
        data[name] = [f"{name}{i}" for i in c]
    if weights:
        data["w"] = rng.uniform(0.5, 2.0, n)
    return data


FORMULA = "y ~ x + (1 | a) + (1 | b) + (1 | c)"


def _devfun(data: pd.DataFrame, reml: bool, dense: bool, monkeypatch) -> LmerDevfun:
    if dense:
        monkeypatch.setattr(pls_blocked, "DENSE_Q_MAX", 10_000)
    w = "w" if "w" in data.columns else None
    terms = build_mixed_terms(FORMULA, data, weights=w)
    dv = LmerDevfun(terms, reml)
    assert dv.pred.dense == dense
    return dv


@pytest.mark.parametrize("dense", [False, True], ids=["blocked", "dense"])
@pytest.mark.parametrize("reml", [True, False], ids=["REML", "ML"])
@pytest.mark.parametrize("weights", [False, True], ids=["unweighted", "weighted"])
def test_profiled_and_gradient(monkeypatch, dense, reml, weights):
    dv = _devfun(_crossed(7, weights), reml, dense, monkeypatch)
    rng = np.random.default_rng(1)
    for theta in (np.array([0.8, 0.5, 0.3]), rng.uniform(0.05, 2.0, 3)):
        # same criterion as lme4's route (solve + residual PWRSS): rounding only (measured
        # ~1e-15 relative; the last-pivot PWRSS loses a few digits to cancellation)
        assert dv.profiled(theta) == pytest.approx(dv(theta), rel=1e-11)
        f, g = dv.profiled_grad(theta)
        assert f == dv.profiled(theta)
        fd = np.empty(3)
        for k in range(3):
            h = 1e-5 * theta[k]
            e = np.zeros(3)
            e[k] = h
            fd[k] = (dv.profiled(theta + e) - dv.profiled(theta - e)) / (2 * h)
        # central differences: truncation O(h²f''') and rounding ~1e-16·f/h; measured agreement
        # 1e-9..1e-7 relative to the largest component, so 1e-6 separates a wrong formula
        # (errors of order 1) from difference noise
        np.testing.assert_allclose(g, fd, rtol=0, atol=1e-6 * np.max(np.abs(fd)))


def test_gradient_at_the_boundary_is_left_to_finite_differences(monkeypatch):
    """θ_k = 0 is stationary by symmetry (the criterion is even in θ_k): a 0 there would hold
    the optimizer on the bound even when leaving it lowers the criterion."""
    dv = _devfun(_crossed(3), True, False, monkeypatch)
    _, g = dv.profiled_grad(np.array([0.8, 0.0, 0.3]))
    assert np.isnan(g[1]) and np.all(np.isfinite(g[[0, 2]]))


def test_vector_terms_have_no_analytic_gradient(r_dataset):
    terms = build_mixed_terms("Reaction ~ Days + (Days | Subject)", r_dataset("sleepstudy"))
    dv = LmerDevfun(terms, True)
    theta = np.array([1.0, 0.1, 0.5])
    f, g = dv.profiled_grad(theta)
    assert f == pytest.approx(dv(theta), rel=1e-11)
    assert np.all(np.isnan(g))


@pytest.mark.parametrize("reml", [True, False], ids=["REML", "ML"])
def test_gradient_and_difference_optimizers_agree(monkeypatch, reml):
    """The analytic-gradient L-BFGS-B path and the finite-difference one reach the same
    optimum; the checkConv derivatives from the gradient match deriv12's."""
    dv = _devfun(_crossed(11), reml, False, monkeypatch)
    start = np.ones(3)
    a = optimize_theta(dv.profiled, start, dv.lower, value_grad=dv.profiled_grad)
    b = optimize_theta(dv.profiled, start, dv.lower)
    assert a.converged and b.converged and not a.singular
    # both stop on a relative criterion reduction of 1e-13; the optimum is flat, so θ agrees
    # to ~1e-6 relative (well inside the 1e-4 used against lme4)
    assert a.fval == pytest.approx(b.fval, rel=1e-11)
    np.testing.assert_allclose(a.final, b.final, rtol=1e-5)
    # deriv12: central differences with δ = 1e-4 (its truncation error dominates, ~1e-5
    # relative on InstEval); the gradient-based Hessian uses steps of 1e-6
    np.testing.assert_allclose(a.hessian, b.hessian, rtol=1e-3)
    assert a.n_evals < b.n_evals


def test_fit_uses_the_gradient_and_matches_the_difference_path(monkeypatch):
    """Through the public call: same fit as with the gradient switched off."""
    data = _crossed(5)
    fit = mixbridge.lmer(FORMULA, data)
    monkeypatch.setattr(LmerDevfun, "profiled_grad", None)  # optimize_theta: no value_grad
    ref = mixbridge.lmer(FORMULA, data)
    assert fit.optimizer["n_evals"] < ref.optimizer["n_evals"]
    assert fit.criterion == pytest.approx(ref.criterion, rel=1e-11)
    np.testing.assert_allclose(fit.theta, ref.theta, rtol=1e-5)
    np.testing.assert_allclose(fit.fixef, ref.fixef, rtol=1e-6)


@pytest.mark.parametrize("path", ["gradient", "differences"])
def test_interior_local_optimum_is_left_for_the_boundary_one(needs_r, monkeypatch, path):
    """Small nested design with two basins: an interior local optimum (REML criterion 671.9)
    and the boundary optimum lme4 finds (θ_g:h = 0, 656.7). From lme4's start the
    finite-difference path of L-BFGS-B stops in the interior one (the gradient path happens to
    reach the boundary); the probe of the other side of each variance parameter must get both
    to the boundary optimum."""
    if path == "differences":
        monkeypatch.setattr(LmerDevfun, "profiled_grad", None)
    data, f = random_design(9)  # test_lmer_vs_r's generator: seed 9 is the nested design
    assert f == "y ~ x + (1 | h/g)"
    for reml in (True, False):
        fr = mixbridge.lmer(f, data, reml=reml, engine="r")
        fp = mixbridge.lmer(f, data, reml=reml)
        assert fr.singular and fp.singular
        # same optimum: θ to lme4's stopping accuracy (1e-4 relative, 1e-7 absolute at the
        # bound), criterion not above R's beyond rounding of the flat optimum (1e-10 relative)
        np.testing.assert_allclose(fp.theta, fr.theta, rtol=1e-4, atol=1e-7)
        assert fp.criterion <= fr.criterion * (1 + 1e-10)


def test_without_the_pair_map(monkeypatch):
    """Beyond PAIRS_MAX the first term's Schur contribution is formed by sparse products per θ
    (no analytic gradient then): same criterion and conditional variances."""
    data = _crossed(13)
    dv = _devfun(data, True, False, monkeypatch)
    monkeypatch.setattr(pls_augmented, "PAIRS_MAX", 0)
    small = _devfun(data, True, False, monkeypatch)
    theta = np.array([0.7, 0.4, 0.2])
    # identical algebra, other summation order: rounding only (measured ~1e-15)
    assert small.profiled(theta) == pytest.approx(dv.profiled(theta), rel=1e-12)
    assert small.profiled(theta) == pytest.approx(small(theta), rel=1e-11)
    assert np.all(np.isnan(small.profiled_grad(theta)[1]))
    dv.state(theta)
    small.state(theta)
    a, b = dv.pred.cond_var_by_factor(1.1), small.pred.cond_var_by_factor(1.1)
    for g in a:
        np.testing.assert_allclose(b[g], a[g], rtol=1e-10)
