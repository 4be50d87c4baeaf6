"""glmer's big-data stage 2 (spec §3.4, not lme4's optimizer): one scalar term with a canonical
link, on the fully converged Laplace (and AGQ) deviance with its analytic gradient. ONE
implementation for every place the rows live: the fused kernel on rows in memory
(`FusedRowsPath` here) and the group-sum kernel on rows in memory or in Dask partitions
(`group_sum_fit.GroupSumDevfun`) are `Stage2Path`s, and the optimizer, the warm starts, the
polished Hessian and the bound probes below run on either.

The conditional modes are warm-started from the previous evaluation to first order (dũ/dx from
the last gradient), so a single Newton step (`Stage2Path.warm_modes`) usually converges; the
value and gradient come from the fused kernel (`diagonal_canonical`, or its group-sum form) or
the AGQ node sums (`agq.agq_value_gradient`). The optimizer is `optimizers.minimize("BFGS",
...)` from an approximate Hessian (`initial_hessian_from`); the Hessian for vcov and the
convergence checks comes from central differences of the gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from mixbridge.errors import ConvergenceError
from mixbridge.python_impl import optimizers
from mixbridge.python_impl.agq import agq_value_gradient
from mixbridge.python_impl.checkconv import BOUNDARY_TOL
from mixbridge.python_impl.diagonal_canonical import scalar_laplace_gradient
from mixbridge.python_impl.glmer_devfun import Devfun, GlmerModel
from mixbridge.python_impl.optimize import probe_points
from mixbridge.python_impl.optsummary import OptSummary
from mixbridge.python_impl.pls_diagonal import DiagonalCore


class NoFastPath(Exception):
    """The fused AGQ path does not apply at some trial point (|η| beyond lme4's clamps)."""


# ---------------------------------------------------------------------------------------------
# The seam: what a place the rows live provides


@dataclass
class ModesValue:
    """The deviance at x from converged conditional modes: value f, gradient g = (∂θ, ∂β), the
    modes ũ, their derivatives dũ/dx (the next warm start), and (AGQ, when asked) the Laplace
    gradient at the same modes."""

    f: float
    g: np.ndarray
    u: np.ndarray
    du_dx: np.ndarray
    g_laplace: np.ndarray | None = None


class Stage2Path(Protocol):
    """Stage 2's deviance function (θ, β) on one place the rows live, with the pieces of the
    warm-started gradient evaluation (`WarmStartedStage2`)."""

    def stage2(self, x: np.ndarray, b_start: np.ndarray | None = None) -> float:
        """The deviance function: PIRLS from the initial fit's linear predictor lp0, or from
        the group effects `b_start`."""
        ...

    def warm_modes(
        self, x: np.ndarray, b0: np.ndarray, agq: bool, laplace_gradient: bool
    ) -> ModesValue | None:
        """Value and gradient from the modes converged by Newton steps from `b0` (Laplace, or
        AGQ with the Laplace gradient too when `laplace_gradient`), adopted as the function's
        last evaluation; None where those steps do not converge (`stage2` runs instead). AGQ
        raises `NoFastPath` where the fused sums do not apply."""
        ...

    def pirls_value(self, x: np.ndarray, b0: np.ndarray | None) -> tuple[float, bool]:
        """The Laplace deviance by PIRLS from `b0` (restarted from lp0 when that fails; from
        lp0 when `b0` is None) and whether PIRLS converged. May raise ConvergenceError or
        LinAlgError."""
        ...

    def pirls_gradient(self, theta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(gradient, modes ũ, dũ/dx or None) at the state `pirls_value` left."""
        ...


# ---------------------------------------------------------------------------------------------
# The optimizer on any path


def initial_hessian_from(theta: float, S: np.ndarray, rx: np.ndarray) -> np.ndarray:
    """A cheap approximation of the stage-2 Hessian from the initial PIRLS fit's group weights
    S_j and R_X'R_X: 2 R_X'R_X for β (lme4's R_X-based vcov is its inverse) and, for θ, twice
    the Fisher information of the normal approximation, 4θ² Σ_j (S_j/d_j)². Only the
    optimizer's starting metric."""
    th = max(float(theta), 0.1)
    h = np.zeros((1 + rx.shape[0],) * 2)
    h[0, 0] = 4.0 * th * th * float(np.sum((S / (1.0 + th * th * S)) ** 2))
    h[1:, 1:] = 2.0 * rx
    return h


def _no_value(x: np.ndarray) -> float:  # "BFGS" works on value_grad alone
    raise NotImplementedError


def polish(
    fg: Callable[[np.ndarray], tuple[float, np.ndarray]],
    x: np.ndarray,
    metric: np.ndarray,
    n_theta: int,
    max_steps: int = 4,
) -> np.ndarray:
    """Quasi-Newton steps in the final BFGS metric from the optimizer's stopping point until
    the step is at rounding level. BFGS stops when f is within ~1e-11 of the optimum, which
    leaves the parameters ~sqrt(1e-11/H) away from it (1e-7 at 1e5 rows), and where it stops
    depends on the path; the analytic gradient locates the optimum itself, so fits of the same
    data on different paths (in memory, Dask partitions) agree to ~1e-12. Interior optima only
    (on a bound the gradient does not vanish)."""
    x = np.asarray(x, dtype=float)
    if np.any(x[:n_theta] < 10 * BOUNDARY_TOL):
        return x
    f, g = fg(x)
    for _ in range(max_steps):
        try:
            step = -np.linalg.solve(metric, g)
        except np.linalg.LinAlgError:
            break
        if np.all(np.abs(step) <= 1e-12 * np.maximum(1.0, np.abs(x))):
            break
        xn = x + step
        if np.any(xn[:n_theta] <= 0):
            break
        fn, gn = fg(xn)
        # a step of rounding size: f can only be compared up to its rounding
        if not (np.isfinite(fn) and fn <= f + 1e-12 * abs(f)):
            break
        x, f, g = xn, fn, gn
    return x


class WarmStartedStage2:
    """Stage 2's (value, gradient) at x on a `Stage2Path`, the conditional modes warm-started
    from the previous evaluation: the modes rescaled to the new θ, and, once a gradient has
    given dũ/dx, to first order, ũ(x) ≈ ũ(x_prev) + dũ/dx·(x − x_prev), so that a single
    Newton step usually converges (at θ = 0 the modes are 0: b0 = 0). `count` counts the
    calls; `warm` is the last evaluation."""

    def __init__(self, path: Stage2Path) -> None:
        self.path = path
        self.warm: dict[str, Any] = {}
        self.count = 0
        self.laplace_gradient = False  # AGQ: also the Laplace gradient (for the Hessian)

    def __call__(self, x: np.ndarray, agq: bool = False) -> tuple[float, np.ndarray]:
        self.count += 1
        warm = self.warm
        th = float(x[0])
        if warm and warm["agq"] == agq and np.array_equal(x, warm["x"]):
            return warm["f"], warm["g"].copy()
        b0 = None
        if warm and warm["theta"] > 0:  # previous modes, rescaled to the new θ
            b0 = warm["b"] * (th / warm["theta"])
        if warm and "du_dx" in warm:
            b0 = th * (warm["u"] + warm["du_dx"] @ (x - warm["x"]))
            m = self.path.warm_modes(x, b0, agq, self.laplace_gradient)
            if m is not None:
                if m.g_laplace is not None:
                    warm["g_laplace"] = m.g_laplace
                warm.update(b=th * m.u, theta=th, u=m.u, du_dx=m.du_dx, x=x.copy())
                warm.update(f=m.f, g=m.g.copy(), agq=agq)
                return m.f, m.g
        if agq:
            raise NoFastPath
        try:
            f, converged = self.path.pirls_value(x, b0)
        except (ConvergenceError, np.linalg.LinAlgError):
            return np.inf, np.zeros_like(x)
        if not converged or not np.isfinite(f):
            return np.inf, np.zeros_like(x)
        g, u, du_dx = self.path.pirls_gradient(th)
        if du_dx is not None:
            warm.update(u=u, du_dx=du_dx)
        warm.update(b=th * u, theta=th, x=x.copy(), f=f, g=g.copy(), agq=agq)
        return f, g


def minimize_stage2(
    path: Stage2Path,
    x0: np.ndarray,
    lower: np.ndarray,
    h0: np.ndarray,
    n_theta: int,
    nagq: int = 1,
) -> OptSummary:
    """Stage 2 by quasi-Newton (BFGS from an approximate Hessian; L-BFGS-B near the boundary)
    on the converged Laplace deviance with its analytic gradient; the Hessian (for vcov and the
    convergence checks) by central differences of that gradient.

    nAGQ > 1: the same, first on the Laplace deviance (cheap), then on the AGQ deviance with its
    exact gradient (`agq_value_gradient`) from the Laplace optimum and the Laplace BFGS metric,
    which is close to the AGQ optimum and Hessian, so that few AGQ evaluations are needed.
    """
    evaluate = WarmStartedStage2(path)

    def minimize(fg: Callable[[np.ndarray], tuple[float, np.ndarray]], xs, hs) -> tuple:
        run = optimizers.minimize("BFGS", _no_value, xs, lower, value_grad=fg, h0=hs)
        return run.final, run.hessian

    def fg(x: np.ndarray) -> tuple[float, np.ndarray]:
        return evaluate(x, False)

    x, metric = minimize(fg, x0, h0)
    if nagq > 1:

        def fg_agq(x: np.ndarray) -> tuple[float, np.ndarray]:
            return evaluate(x, True)

        evaluate.laplace_gradient = True  # at every AGQ point: the Hessian needs it
        x, _ = minimize(fg_agq, x, metric)
        x, grad, hess = _agq_hessian(evaluate, fg_agq, x, lower, n_theta)
    else:
        x, grad, hess = polished_hessian(fg, x, lower, n_theta)
    # the value of the deviance function itself (PIRLS from lp0, as fit.objective and
    # glmer_objective evaluate it), not the warm-started one: equal to ~tol_pwrss·pdev
    fx = path.stage2(x)
    return OptSummary(
        "BFGS, analytic gradient",
        np.asarray(x0, dtype=float),
        x,
        fx,
        evaluate.count + 1,
        gradient=grad,
        hessian=hess,
    )


def _agq_hessian(
    evaluate: WarmStartedStage2,
    fg: Callable[[np.ndarray], tuple[float, np.ndarray]],
    x: np.ndarray,
    lower: np.ndarray,
    nth: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The AGQ deviance's gradient and Hessian at x (see minimize_stage2)."""
    warm = evaluate.warm
    _, grad = fg(x)
    hess = np.zeros((x.size, x.size))
    # H_AGQ = H_Laplace (central differences, cheap evaluations) + H_R, R = AGQ − Laplace
    # by forward differences: R is the small quadrature correction, so its third
    # derivatives — the forward-difference error — are far below the Laplace ones
    if "g_laplace" not in warm or not np.array_equal(warm["x"], x):
        warm["agq"] = None  # evaluate again, with the Laplace gradient
        evaluate(x, True)
    r0 = grad - warm["g_laplace"]
    for i in range(x.size):
        h = 1e-4 * max(1.0, abs(x[i]))
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] = max(x[i] - h, lower[i]) if i < nth else x[i] - h
        ga = evaluate(xp, True)[1]
        gl = warm["g_laplace"]
        hess[:, i] = (gl - evaluate(xm, False)[1]) / (xp[i] - xm[i])
        hess[:, i] += (ga - gl - r0) / (xp[i] - x[i])
    return x, grad, 0.5 * (hess + hess.T)


def central_hessian(
    fg: Callable[[np.ndarray], tuple[float, np.ndarray]],
    x: np.ndarray,
    lower: np.ndarray,
    nth: int,
) -> np.ndarray:
    """The Hessian by central differences of the analytic gradient (one-sided at a bound)."""
    hess = np.zeros((x.size, x.size))
    for i in range(x.size):
        h = 1e-4 * max(1.0, abs(x[i]))
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] = max(x[i] - h, lower[i]) if i < nth else x[i] - h
        hess[:, i] = (fg(xp)[1] - fg(xm)[1]) / (xp[i] - xm[i])
    return 0.5 * (hess + hess.T)


def polished_hessian(
    fg: Callable[[np.ndarray], tuple[float, np.ndarray]],
    x: np.ndarray,
    lower: np.ndarray,
    nth: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, gradient, Hessian) at the optimum: the Hessian at the optimizer's stopping point,
    Newton steps with it (`polish`), and the Hessian again where they end if they moved.

    BFGS stops when f is within ~1e-11 of its quadratic model's optimum, which leaves the
    parameters ~sqrt(1e-11/H) from the optimum (1e-7 at 1e5 rows), at a point that depends on
    the path; the Newton steps on the analytic gradient find the optimum itself, so fits of the
    same data on different paths (rows in memory or in Dask partitions) agree to ~1e-12."""
    hess = central_hessian(fg, x, lower, nth)
    xn = polish(fg, x, hess, nth)
    if not np.array_equal(xn, x):
        x = xn
        hess = central_hessian(fg, x, lower, nth)
    return x, fg(x)[1], hess


def probe_bound_from_inside(
    stage2: Callable[[np.ndarray], float],
    opt: OptSummary,
    theta0: np.ndarray,
    theta_lower: np.ndarray,
    restart: Callable[[np.ndarray], OptSummary],
) -> OptSummary:
    """The two-basin guard of the other optimizers (`optimize.probe_points`) for a gradient-path
    optimum on its bound: the deviance is even in θ there, so θ = 0 is stationary and a
    gradient method that reaches it cannot leave it, although the optimum may be inside (a
    binomial design stopped at θ = 0, 0.05 above lme4's θ = 0.176). Probes inside the bound;
    from the best one that beats the optimum, `restart` (the gradient optimizer) runs again.
    Interior optima are not probed (their gradient vanishes where the criterion is smooth)."""
    nth = theta_lower.size
    x = opt.final
    on_bound = (theta_lower == 0) & (x[:nth] - theta_lower < BOUNDARY_TOL)
    if not np.any(on_bound):
        return opt
    f = optimizers.safe(stage2)
    best: tuple[np.ndarray, float] | None = None
    n_probes = 0
    for theta in probe_points(x[:nth], theta0, theta_lower):
        xp = np.concatenate([theta, x[nth:]])
        fp = f(xp)
        n_probes += 1
        if fp < opt.fval and (best is None or fp < best[1]):
            best = (xp, fp)
    opt.n_evals += n_probes
    if best is None:
        return opt
    try:
        alt = restart(best[0])
    except NoFastPath:
        return opt
    if alt.fval < opt.fval:
        alt.n_evals += opt.n_evals
        alt.start = opt.start
        alt.status = "restarted from a probe inside the bound"
        return alt
    return opt


# ---------------------------------------------------------------------------------------------
# Rows in memory: the fused kernel (`diagonal_canonical`) on glmer's deviance function


class FusedRowsPath:
    """`Stage2Path` of the in-memory fit: glmer's `Devfun` and its fused canonical-link kernel
    (`CanonicalKernel`; without one, PIRLS and `scalar_laplace_gradient`)."""

    def __init__(self, dev: Devfun, model: GlmerModel) -> None:
        self.dev, self.model = dev, model

    def stage2(self, x: np.ndarray, b_start: np.ndarray | None = None) -> float:
        return self.dev.stage2(x, b_start=b_start)

    def warm_modes(
        self, x: np.ndarray, b0: np.ndarray, agq: bool, laplace_gradient: bool
    ) -> ModesValue | None:
        dev, model, kernel = self.dev, self.model, self.dev.kernel
        if kernel is None:
            return None
        th = float(x[0])
        offset = dev.base_offset + model.X @ x[model.n_theta :]
        r = kernel.modes(th, offset, b0, model.tol)
        if r is None:
            return None
        st, W, S, swmu = r
        g_laplace = None
        if agq:
            res = agq_value_gradient(kernel, st, th, W, S, swmu, model.nagq)
            if res is None:
                raise NoFastPath
            if laplace_gradient:  # for the Hessian: the Laplace one at these modes
                gl = kernel.gradient_from(th, W, S, swmu, st.mu, st.u)
                g_laplace = np.concatenate([[gl[0]], gl[1]])
        else:
            res = (st.laplace(model.resp), *kernel.gradient_from(th, W, S, swmu, st.mu, st.u))
        f, g_theta, g_beta, du_dx = res
        dev.adopt(st, offset)
        return ModesValue(f, np.concatenate([[g_theta], g_beta]), st.u, du_dx, g_laplace)

    def pirls_value(self, x: np.ndarray, b0: np.ndarray | None) -> tuple[float, bool]:
        dev = self.dev
        dev.stage2(x, b_start=b0)
        if b0 is not None and not dev.state.converged:
            dev.stage2(x)  # a far jump: restart from lp0 instead
        return dev.state.laplace(self.model.resp), dev.state.converged

    def pirls_gradient(self, theta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        dev, model = self.dev, self.model
        du_dx = None
        if dev.kernel is not None:
            g_theta, g_beta, du_dx = dev.kernel.gradient(dev.state, theta)
        else:
            assert isinstance(model.core, DiagonalCore)
            g_theta, g_beta = scalar_laplace_gradient(model.core, model.resp, dev.state, theta)
        return np.concatenate([[g_theta], g_beta]), dev.state.u, du_dx


def initial_hessian(model: GlmerModel, theta: np.ndarray) -> np.ndarray:
    """`initial_hessian_from` the initial PIRLS fit's core."""
    core = model.core
    assert isinstance(core, DiagonalCore)
    return initial_hessian_from(float(theta[0]), core.group_weights, core.rx_matrix())


def optimize_stage2(
    dev: Devfun, model: GlmerModel, x0: np.ndarray, lower: np.ndarray, h0: np.ndarray
) -> OptSummary:
    """`minimize_stage2` on the rows in memory (Laplace or AGQ, as the model says)."""
    return minimize_stage2(FusedRowsPath(dev, model), x0, lower, h0, model.n_theta, model.nagq)


def probe_bound(dev: Devfun, model: GlmerModel, opt: OptSummary, lower: np.ndarray) -> OptSummary:
    """`probe_bound_from_inside` on the rows in memory."""

    def restart(x: np.ndarray) -> OptSummary:
        h0 = initial_hessian(model, x[: model.n_theta])
        return optimize_stage2(dev, model, x, lower, h0)

    return probe_bound_from_inside(dev.stage2, opt, model.theta0, model.theta_lower, restart)
