"""Every optimizer of the Python lmer and glmer behind one call, each run returning an
`OptSummary` (MixedModels.jl's record):

    minimize(method, f, x0, lower, ...) -> OptSummary

    "L-BFGS-B"     lmer's θ: L-BFGS-B on the profiled criterion (analytic gradient where it has
                   one), lme4's restart_edge, bound probes, check.boundary and checkConv
                   (`optimize.optimize_theta`)
    "Brent"        glmer stage 1 with one θ: bounded Brent on [0, hi], and θ = 0
    "Nelder-Mead"  glmer stage 1 with several θ and stage 2: bounded Nelder–Mead from lme4's
                   axis simplex, restarted; stage 2 with the bound probes (`probe`)
    "BFGS"         glmer's big-data stage 2: quasi-Newton from an approximate Hessian on a value
                   and gradient, L-BFGS-B near the boundary

lmer's O(G) path has its own 1-D search (`lmm_scalar.fit_group_stats`), which fills the same
record. Criteria that fail inside an optimizer (PIRLS stops, a factorization fails) are an
infinitely bad point there (`safe`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import optimize as sopt

from mixbridge.errors import ConvergenceError
from mixbridge.python_impl.checkconv import MAX_PROBE_ROUNDS, rounding_gain
from mixbridge.python_impl.optimize import optimize_theta, probe_points
from mixbridge.python_impl.optsummary import OptSummary

Criterion = Callable[[np.ndarray], float]
ValueGrad = Callable[[np.ndarray], tuple[float, np.ndarray]]
NM_MAXFEV = 10_000  # lme4's Nelder_Mead maxfun


def minimize(
    method: str,
    f: Criterion,
    x0: np.ndarray,
    lower: np.ndarray,
    *,
    step: np.ndarray | None = None,
    probe: tuple[int, np.ndarray] | None = None,
    value_grad: ValueGrad | None = None,
    h0: np.ndarray | None = None,
    **settings: Any,
) -> OptSummary:
    """Minimize `f` from x0 over x ≥ lower with `method` (see the module docstring).

    Nelder-Mead: `step` is the initial simplex's axis steps; `probe` = (number of θ, θ's
    default start) probes each variance parameter across its bound afterwards (θ first in x).
    BFGS: `value_grad` gives f and its gradient, `h0` the starting metric; the record's
    `hessian` is the final quasi-Newton matrix. L-BFGS-B: `settings` are optimize_theta's
    (restart_edge, boundary_tol, calc_derivs, maxeval) and `value_grad` its analytic gradient.
    """
    x0 = np.asarray(x0, dtype=float)
    lower = np.asarray(lower, dtype=float)
    if method == "L-BFGS-B":
        return optimize_theta(f, x0, lower, value_grad=value_grad, **settings)
    if method == "Brent":
        x, fx, nfev = _brent_theta(f)
        return OptSummary(method, x0, x, fx, nfev)
    if method == "Nelder-Mead":
        assert step is not None
        x, fx, nfev = _nelder_mead(f, x0, step, lower, NM_MAXFEV)
        settled = True
        if probe is not None:
            x, fx, n2, settled = _probe_theta_bounds(f, x, fx, probe, step, lower)
            nfev += n2
        return OptSummary(method, x0, x, fx, nfev, settled=settled)
    if method == "BFGS":
        assert value_grad is not None and h0 is not None
        x, metric = _bfgs_bounded(value_grad, x0, h0, lower)
        return OptSummary(method, x0, x, float("nan"), 0, hessian=metric)
    raise ValueError(f"unknown optimizer {method!r}")


def safe(f: Criterion) -> Criterion:
    """Inside an optimizer a failed PIRLS (lme4 would stop) is an infinitely bad point."""

    def g(x: np.ndarray) -> float:
        try:
            v = f(x)
        except (ConvergenceError, np.linalg.LinAlgError, FloatingPointError):
            return np.inf
        return v if np.isfinite(v) else np.inf

    return g


def _nelder_mead(
    f: Callable[[np.ndarray], float],
    x0: np.ndarray,
    step: np.ndarray,
    lower: np.ndarray,
    maxfev: int,
) -> tuple[np.ndarray, float, int]:
    """Bounded Nelder–Mead from a lme4-style axis simplex, restarted until it stops improving.

    lme4's stage 2 stops at FtolAbs = 1e-5; we stop at a spread of 1e-9·|f| (|f| ~ 1e2..1e6, so
    at least as tight for the data sets that matter, and scale-free for big ones) and restart with
    a fresh, smaller simplex (a standard guard against NM's premature collapse) until a restart
    gains less than that, so our optimum is at least as good as lme4's.
    """
    bounds = [(lo if np.isfinite(lo) else None, None) for lo in lower]
    x, fx, nfev = np.asarray(x0, dtype=float), f(x0), 1
    ftol = 1e-9 * max(1.0, abs(fx)) if np.isfinite(fx) else 1e-8
    for _ in range(2):
        simplex = np.vstack([x] + [x + step[i] * np.eye(x.size)[i] for i in range(x.size)])
        simplex = np.maximum(simplex, np.where(np.isfinite(lower), lower, -np.inf))
        res = sopt.minimize(
            f,
            x,
            method="Nelder-Mead",
            bounds=bounds,
            options={
                "initial_simplex": simplex,
                "xatol": 1e-5,
                "fatol": ftol,
                "maxfev": maxfev,
                "adaptive": False,
            },
        )
        nfev += int(res.nfev)
        improved = fx - float(res.fun)
        if float(res.fun) <= fx:
            x, fx = np.asarray(res.x, dtype=float), float(res.fun)
        step = step * 0.1
        if improved < ftol:
            break
    return x, fx, nfev


def _brent_theta(f: Criterion) -> tuple[np.ndarray, float, int]:
    """One θ ≥ 0: bounded Brent on [0, hi] (expanding hi when the minimum sits at its end), and
    θ = 0 itself."""
    hi, nfev = 10.0, 0
    xatol = 1e-10
    while True:
        res = sopt.minimize_scalar(
            lambda t: f(np.array([t])),
            bounds=(0.0, hi),
            method="bounded",
            options={"xatol": xatol, "maxiter": 500},
        )
        nfev += int(res.nfev)
        if res.x < 0.99 * hi or hi > 1e4:
            break
        hi *= 10.0
    theta, fval = np.array([float(res.x)]), float(res.fun)
    f0 = f(np.zeros(1))
    if f0 <= fval:
        theta, fval = np.zeros(1), f0
    return theta, fval, nfev + 1


def _quasi_newton(
    fg: Callable[[np.ndarray], tuple[float, np.ndarray]],
    x0: np.ndarray,
    h0: np.ndarray,
    maxiter: int = 60,
) -> tuple[np.ndarray, np.ndarray] | None:
    """BFGS from the metric h0 with backtracking, for the smooth converged Laplace deviance.

    With a good h0 the first step is already Newton-like, so this needs about half of
    L-BFGS-B's evaluations (which starts from the identity). Stops when the Newton decrement
    g'B⁻¹g < 1e-11 (f within ~5e-12 of the optimum of the local quadratic model) and returns
    (x, B), B the final BFGS matrix. Returns None
    (the caller then runs L-BFGS-B) when a step would cross θ = 0 or the search stalls: near the
    boundary the bounded method is the right tool.
    """
    x = np.asarray(x0, dtype=float)
    f, g = fg(x)
    if not np.isfinite(f):
        return None
    B = np.array(h0, dtype=float)
    for _ in range(maxiter):
        try:
            p = -np.linalg.solve(B, g)
        except np.linalg.LinAlgError:
            return None
        slope = float(g @ p)
        if not slope < 0:
            return None
        if -slope < 1e-11:
            return x, B
        alpha = 1.0
        for _ in range(30):
            xn = x + alpha * p
            if xn[0] <= 0:
                return None
            fn, gn = fg(xn)
            # Armijo, with an allowance for rounding in f (~1e-13 relative for sums over 1e6 rows)
            if np.isfinite(fn) and fn <= f + 1e-4 * alpha * slope + 1e-13 * abs(f):
                break
            alpha *= 0.5
        else:
            return None
        sk, yk = xn - x, gn - g
        sy = float(sk @ yk)
        if sy > 1e-12 * float(np.linalg.norm(sk) * np.linalg.norm(yk)):
            bs = B @ sk
            B = B - np.outer(bs, bs) / float(sk @ bs) + np.outer(yk, yk) / sy
        x, f, g = xn, fn, gn
    return None


def _bfgs_bounded(
    fg: ValueGrad, x0: np.ndarray, h0: np.ndarray, lower: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """`_quasi_newton`, or L-BFGS-B from x0 where it gives up (near the boundary)."""
    r = _quasi_newton(fg, x0, h0)
    if r is not None:
        return r
    bounds = [(lo if np.isfinite(lo) else None, None) for lo in lower]
    res = sopt.minimize(
        fg,
        x0,
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        options={"ftol": 1e-15, "gtol": 1e-7, "maxiter": 500, "maxcor": 20},
    )
    return np.asarray(res.x, dtype=float), h0


def _probe_theta_bounds(
    f: Callable[[np.ndarray], float],
    x: np.ndarray,
    fx: float,
    theta_start: tuple[int, np.ndarray],
    step: np.ndarray,
    lower: np.ndarray,
) -> tuple[np.ndarray, float, int, bool]:
    """lmer's two-basin guard (`optimize.probe_points`) on stage 2's θ, β held: each variance
    parameter probed at and near its bound, across it for a correlated term (a binomial (x | g)
    design stopped at θ = [0, 0.53, 0.15], 0.83 above lme4's [0.38, -0.19, 0.44]); Nelder–Mead
    restarts from the best probe that beats the optimum, for up to MAX_PROBE_ROUNDS rounds.

    Returns (x, criterion, evaluations, settled): settled is False when the last round still
    gained more than rounding (`rounding_gain`)."""
    nth, theta0 = theta_start
    theta_lower = lower[:nth]
    nfev = 0
    for _ in range(MAX_PROBE_ROUNDS):
        best: tuple[np.ndarray, float] | None = None
        for theta in probe_points(x[:nth], theta0, theta_lower):
            xp = np.concatenate([theta, x[nth:]])
            fp = f(xp)
            nfev += 1
            if fp < fx and (best is None or fp < best[1]):
                best = (xp, fp)
        if best is None:
            return x, fx, nfev, True
        before = fx
        x2, f2, n2 = _nelder_mead(f, best[0], step, lower, NM_MAXFEV)
        nfev += n2
        if f2 < fx:
            x, fx = x2, f2
        if rounding_gain(before, min(fx, best[1])):  # the probe itself was rounding
            return x, fx, nfev, True
    return x, fx, nfev, False
