"""Optimizing a profiled criterion over θ, with lme4's boundary handling and convergence checks.

lme4 (spec §1.6) runs BOBYQA, then `restart_edge`, `check.boundary`, `deriv12` and `checkConv`.
We replace BOBYQA by scipy's L-BFGS-B (the criterion is smooth in θ, and bounds are only 0 on
diagonal entries) on the objective's analytic gradient where it has one (lmer with scalar terms)
and forward differences otherwise, converged tightly, so that our optimum is at least as good as
lme4's (which stops about 1e-5 relative short in θ). The post-processing steps follow lme4; their
findings become structured `Message`s. With a complete analytic gradient the checkConv
derivatives are the gradient and its forward differences (m + 1 gradients) instead of deriv12.

Never a worse optimum, never silently: every θ returned is the best point the criterion was
evaluated at, with that value (scipy's (res.x, res.fun) pair is not used: after a failed line
search it can pair a trial point with another point's value); a failed line search restarts
L-BFGS-B from the best point; each variance parameter is probed on the other side of its bound
(the criterion is even in it there, so its bound is a stationary point that a gradient method
cannot leave); and a fit that still fails a check (a better point seen, a probe still better,
a projected gradient at a singular fit) gets converged=False and a warning.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import optimize as sopt

from mixbridge.results import Message

SINGULAR_TEXT = "boundary (singular) fit: see help('isSingular')"


@dataclass
class OptResult:
    """Outcome of `optimize_theta`: the final θ, criterion and lme4-style diagnostics."""

    theta: np.ndarray
    fval: float
    n_evals: int
    status: str
    converged: bool
    singular: bool
    gradient: np.ndarray
    hessian: np.ndarray
    messages: list[Message] = field(default_factory=list)

    def as_dict(self, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "n_evals": self.n_evals,
            "status": self.status,
            "gradient": self.gradient.tolist(),
            "hessian": self.hessian.tolist(),
        }


class _EvalLimit(Exception):
    """Raised inside the optimizer when the evaluation budget (maxeval) is spent."""


class _Counted:
    """Wraps the criterion: counts evaluations, maps non-finite values to +inf, remembers the
    best point, and enforces the evaluation budget (`limit`) while the optimizer runs."""

    def __init__(
        self,
        fun: Callable[[np.ndarray], float],
        limit: float = np.inf,
        value_grad: Callable[[np.ndarray], tuple[float, np.ndarray]] | None = None,
        lower: np.ndarray | None = None,
    ) -> None:
        self.fun = fun
        self.lower = lower  # only feasible points count as best (deriv12 steps below bounds)
        self.vg = value_grad
        self.last: tuple[np.ndarray, float, np.ndarray] | None = None
        self.n = 0
        self.limit = limit
        self.best_x: np.ndarray | None = None
        self.best_f = np.inf
        self.run_best_x: np.ndarray | None = None  # best point since start_run()
        self.run_best_f = np.inf

    def start_run(self) -> None:
        """Start tracking the best point of one optimizer run (see `_lbfgsb`)."""
        self.run_best_x, self.run_best_f = None, np.inf

    def _record(self, x: np.ndarray, v: float) -> None:
        if self.lower is not None and np.any(x < self.lower):
            return
        if v < self.best_f:
            self.best_f, self.best_x = v, x.copy()
        if v < self.run_best_f:
            self.run_best_f, self.run_best_x = v, x.copy()

    def __call__(self, x: np.ndarray) -> float:
        if self.n >= self.limit:
            raise _EvalLimit
        self.n += 1
        x = np.asarray(x, dtype=float)
        try:
            v = float(self.fun(x))
        except np.linalg.LinAlgError:
            return np.inf
        v = v if np.isfinite(v) else np.inf
        self._record(x, v)
        return v

    def value_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """The criterion and its analytic gradient (NaN components: not available), counted as
        one evaluation; without `value_grad` every component is NaN."""
        if self.vg is None:
            return self(x), np.full(np.size(x), np.nan)
        x = np.asarray(x, dtype=float)
        if self.last is not None and np.array_equal(self.last[0], x):
            return self.last[1], self.last[2].copy()  # e.g. the optimum again, for the Hessian
        if self.n >= self.limit:
            raise _EvalLimit
        self.n += 1
        try:
            v, g = self.vg(x)
            v = float(v)
        except np.linalg.LinAlgError:
            return np.inf, np.full(x.size, np.nan)
        if not np.isfinite(v):
            return np.inf, np.full(x.size, np.nan)
        self._record(x, v)
        g = np.asarray(g, dtype=float)
        self.last = (x.copy(), v, g.copy())
        return v, g


def _fd_gradient(
    f: _Counted,
    x: np.ndarray,
    fx: float,
    lower: np.ndarray,
    central: bool = False,
    known: np.ndarray | None = None,
) -> np.ndarray:
    """Finite-difference gradient: forward steps (m evaluations; the step is small enough that
    the optimum is located to ~1e-12 relative in the criterion), or central steps except where a
    step would cross a lower bound. Finite components of `known` (analytic) are kept."""
    g = np.empty_like(x) if known is None else np.array(known, dtype=float)
    for i in range(x.size):
        if known is not None and np.isfinite(g[i]):
            continue
        h = (1e-6 if central else 1e-7) * max(1.0, abs(x[i]))
        xp = x.copy()
        xp[i] += h
        if not central or x[i] - h < lower[i]:
            g[i] = (f(xp) - fx) / h
        else:
            xm = x.copy()
            xm[i] -= h
            g[i] = (f(xp) - f(xm)) / (2 * h)
    return g


# With an analytic gradient a line search needing more than MAXLS_GRAD trials has hit the
# criterion's rounding floor (each trial costs a factorization and an inverse; default: 20).
MAXLS_GRAD = 8

# With an analytic gradient, L-BFGS-B works on θ in units of |θ0| / FIRST_STEP_SCALE: its first
# trial step has unit length in its variables (or runs to a bound), which on θ of order 0.1-1
# lands on the bounds and costs backtracking evaluations (InstEval: 17 -> 11 gradient
# evaluations). Later steps follow the BFGS curvature, which does not depend on the unit.
FIRST_STEP_SCALE = 5.0


def _lbfgsb(
    f: _Counted, x0: np.ndarray, lower: np.ndarray, maxeval: int, central: bool
) -> tuple[np.ndarray, float, int, str]:
    """One L-BFGS-B run from x0. Returns (θ, criterion, status, message) where θ is the best
    point the run evaluated and the criterion is its value there.

    scipy's (res.x, res.fun) are not used: when the line search fails (status ABNORMAL),
    L-BFGS-B can return the last *trial* point as res.x with the value of an earlier, better
    iterate as res.fun (scipy 1.17; a (x + x2 || g) design returned θ = [2.8e-6, 0, 0] at
    criterion 606.67 with res.fun = 568.18, the value at [0.678, 0, 0])."""
    s = 1.0
    if f.vg is not None and FIRST_STEP_SCALE > 0:
        s = FIRST_STEP_SCALE / max(float(np.linalg.norm(x0)), 1e-3)
    lo_s = lower * s

    def theta(z: np.ndarray) -> np.ndarray:
        # exactly on the bound when L-BFGS-B leaves z a rounding error above it (restart_edge,
        # the boundary probe and the analytic gradient look for θ == lower)
        return np.where(z - lo_s <= 1e-12 * s, lower, z / s) if s != 1.0 else z

    def fg(z: np.ndarray) -> tuple[float, np.ndarray]:
        x = theta(z)
        fx, known = f.value_grad(x)
        if not np.isfinite(fx):
            known = None  # no analytic gradient there: finite differences as before
        return fx, _fd_gradient(f, x, fx, lower, central, known) / s

    f.start_run()
    x_start = np.asarray(x0, dtype=float)
    res = sopt.minimize(
        fg,
        x_start * s,
        jac=True,
        method="L-BFGS-B",
        bounds=[(lo if np.isfinite(lo) else None, None) for lo in lo_s],
        options={
            "ftol": 1e-13,
            "gtol": 1e-9,
            "maxiter": 10_000,
            "maxfun": maxeval,
            "maxls": MAXLS_GRAD if f.vg is not None else 20,
        },
    )
    if f.run_best_x is None:  # nothing finite was evaluated
        return x_start, f(x_start), int(res.status), str(res.message)
    return f.run_best_x.copy(), f.run_best_f, int(res.status), str(res.message)


def _converged_by_gradient(f: _Counted, x: np.ndarray, lower: np.ndarray) -> bool:
    """With a complete analytic gradient, a line search that gave up on a point whose projected
    gradient is below GRAD_DONE has met the criterion's rounding floor: a second run (central
    differences only change NaN components) gains nothing (InstEval-size fits: < 1e-10)."""
    if f.vg is None:
        return False
    fx, g = f.value_grad(x)
    if not np.isfinite(fx) or not np.all(np.isfinite(g)):
        return False
    return _projected_gradient(g, x, lower) <= GRAD_DONE


# Projected-gradient size that counts as converged when L-BFGS-B's line search stops at the
# criterion's rounding floor: 1/20 of lme4's checkConv tolerance (0.002).
GRAD_DONE = 1e-4


# L-BFGS-B restarts after a failed line search, while each gains more than RESTART_GAIN
# (relative): the criterion's rounding floor is ~1e-13 relative.
MAX_RESTARTS = 20
RESTART_GAIN = 1e-12


def _minimize(f: _Counted, x0: np.ndarray, lower: np.ndarray, maxeval: int) -> tuple:
    """L-BFGS-B on the analytic gradient or forward differences; if its line search gives up
    (difference noise) short of convergence, continue from there with central differences and
    keep the better point. Every returned θ is a point whose criterion was evaluated, with
    that value (never scipy's own pair, see `_lbfgsb`).

    Returns (θ, criterion, status text, budget_exhausted)."""
    f.limit = f.n + maxeval
    try:
        x, fx, status, message = _lbfgsb(f, x0, lower, maxeval, central=False)
        for _ in range(MAX_RESTARTS):
            if status == 0 or _converged_by_gradient(f, x, lower):
                break
            # a fresh run (new quasi-Newton memory) from the best point: a line search that
            # failed on negative curvature near a variance's bound (the criterion is even in
            # θ_i there) left the old memory useless
            x2, f2, status, message2 = _lbfgsb(f, x, lower, maxeval, central=True)
            gain = fx - f2
            if f2 <= fx:
                x, fx, message = x2, f2, message2
            if not gain > RESTART_GAIN * max(1.0, abs(fx)):
                break
        return x, fx, message, False
    except _EvalLimit:
        assert f.best_x is not None
        return f.best_x.copy(), f.best_f, f"stopped after maxeval = {maxeval} evaluations", True
    finally:
        f.limit = np.inf  # post-processing (restart, boundary, derivatives) is not budgeted


# Distances (in units of a tenth of the start's scale, at least 0.1) at which a variance
# parameter at or near its bound is probed inside: the criterion is even in θ_i there, so a
# stationary bound with descent beyond shows only at a finite distance, and a shallow interior
# optimum (seen at θ_i = 0.02, 1.8e-4 below the bound's value) only at a small one.
PROBE_LADDER = (1.0, 0.1, 0.01)
# Rounds of probe-then-restart (each restart can end at a new boundary point to probe).
MAX_PROBE_ROUNDS = 5


def probe_points(x: np.ndarray, theta0: np.ndarray, lower: np.ndarray) -> list[np.ndarray]:
    """Points on the other side of each bounded θ_i: its bound when inside, and the ladder of
    distances inside that lie beyond it (twice its distance from the bound).

    θ is in lme4's layout (each term's T column-major), so the unbounded entries after a
    diagonal θ_i are the rest of its column. TT' does not change when a whole column of T
    changes sign, so crossing the bound (θ_i -> -θ_i) is the same model as θ_i with the rest of
    the column negated: for a correlated term, both are probed (the better basin can have the
    opposite correlation)."""
    points = []
    bounded = np.flatnonzero(np.isfinite(lower))
    ends = list(bounded[1:]) + [x.size]
    for i, end in zip(bounded, ends, strict=True):
        column = np.arange(i + 1, end)
        away = 0.1 * max(theta0[i] - lower[i], 1.0)
        above = x[i] - lower[i]
        values = [lower[i]] if above > 0 else []
        values += [lower[i] + away * c for c in PROBE_LADDER if away * c > 2 * above]
        flip = column.size > 0 and bool(np.any(x[column] != 0))
        for v in values:
            xp = x.copy()
            xp[i] = v
            points.append(xp)
            if flip and v > lower[i]:
                xr = xp.copy()
                xr[column] = -xr[column]
                points.append(xr)
    return points


def _probe_other_basin(
    f: _Counted,
    x: np.ndarray,
    fx: float,
    theta0: np.ndarray,
    lower: np.ndarray,
    maxeval: int,
    status: str,
) -> tuple[np.ndarray, float, str, bool, bool]:
    """Two-basin guard (not in lme4): a variance parameter can have a local optimum inside and a
    better one on its bound, or the reverse (seen on small nested designs, where lme4's BOBYQA
    found the boundary optimum 15 units lower), or stop on its stationary bound with descent
    inside ((x + x2 || g) designs: up to 4.4 units). Each bounded θ_i is probed on the other
    side (`probe_points`) and the optimizer restarts from the best probe that beats the
    optimum, for up to MAX_PROBE_ROUNDS rounds.

    Returns (θ, criterion, status, budget exhausted, settled): settled is False when the last
    round still found a better probe (the optimum is then not certain)."""
    restarted = False
    for _ in range(MAX_PROBE_ROUNDS):
        best: tuple[np.ndarray, float] | None = None
        for xp in probe_points(x, theta0, lower):
            fp = f(xp)
            if fp < fx and (best is None or fp < best[1]):
                best = (xp, fp)
        if best is None:
            if restarted:
                status = f"{status} (restarted from a probe of the other basin)"
            return x, fx, status, False, True
        x2, f2, status2, exhausted = _minimize(f, best[0], lower, maxeval)
        restarted = True
        if f2 < fx:
            x, fx, status = x2, f2, status2
        if exhausted:
            return x, fx, status, True, False
    return x, fx, status, False, False


DERIV12_DELTA = 1e-4  # lme4's deriv12 step


def deriv12(
    f: Callable[[np.ndarray], float],
    x: np.ndarray,
    fx: float,
    lower: np.ndarray,
    delta: float = DERIV12_DELTA,
) -> tuple[np.ndarray, np.ndarray]:
    """lme4's deriv12: finite-difference gradient and Hessian (central, δ = 1e-4)."""
    m = x.size
    g = np.zeros(m)
    h = np.zeros((m, m))
    for i in range(m):
        xa = x.copy()
        xa[i] += delta
        fa = f(xa)
        if x[i] - delta < lower[i]:
            # one-sided at a bound (the criterion is not defined below it)
            xa2 = x.copy()
            xa2[i] += 2 * delta
            fa2 = f(xa2)
            g[i] = (fa - fx) / delta
            h[i, i] = (fa2 - 2 * fa + fx) / delta**2
        else:
            xs = x.copy()
            xs[i] -= delta
            fs = f(xs)
            g[i] = (fa - fs) / (2 * delta)
            h[i, i] = (fa - 2 * fx + fs) / delta**2
        for j in range(i):
            pts = []
            for si, sj in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
                xx = x.copy()
                xx[i] += si * delta
                xx[j] += sj * delta
                pts.append(f(xx))
            h[i, j] = h[j, i] = (pts[0] - pts[1] - pts[2] + pts[3]) / (4 * delta**2)
    return g, h


def derivs_from_gradient(
    f: _Counted, x: np.ndarray, rel: float = 1e-6
) -> tuple[np.ndarray, np.ndarray] | None:
    """Gradient and Hessian at x from an analytic gradient: the gradient itself and forward
    differences of it (m + 1 gradient evaluations instead of deriv12's ~2m²). Steps go up, so
    they stay feasible at a lower bound. On InstEval this Hessian agrees with deriv12's (whose
    own truncation error is the larger) to 2e-5 relative. None if a component is unavailable."""
    fx, g = f.value_grad(x)
    if not np.isfinite(fx) or not np.all(np.isfinite(g)):
        return None
    h = np.empty((x.size, x.size))
    for i in range(x.size):
        step = rel * max(1.0, abs(x[i]))
        xp = x.copy()
        xp[i] += step
        fp, gp = f.value_grad(xp)
        if not np.isfinite(fp) or not np.all(np.isfinite(gp)):
            return None
        h[:, i] = (gp - g) / step
    return g, (h + h.T) / 2.0


def check_conv(
    grad: np.ndarray, hess: np.ndarray, theta: np.ndarray, lower: np.ndarray
) -> tuple[bool, bool, list[Message]]:
    """lme4's checkConv: returns (singular, converged, messages)."""
    msgs: list[Message] = []
    singular = bool(np.any((lower == 0) & (theta < 1e-4)))
    if singular:
        msgs.append(Message("message", SINGULAR_TEXT, "python", code="singular"))
        return True, True, msgs
    ok = True
    try:
        r = np.linalg.cholesky(hess).T  # upper R, R'R = H
        scgrad = np.linalg.solve(r, grad)
        mx = float(np.max(np.minimum(np.abs(scgrad), np.abs(grad)))) if grad.size else 0.0
        if mx > 0.002:
            ok = False
            msgs.append(
                Message(
                    "warning",
                    f"Model failed to converge with max|grad| = {mx:.6g} (tol = 0.002, component "
                    f"{int(np.argmax(np.minimum(np.abs(scgrad), np.abs(grad)))) + 1})",
                    "python",
                    code="convergence",
                )
            )
    except np.linalg.LinAlgError:
        ok = False
        msgs.append(
            Message("warning", "unable to evaluate scaled gradient", "python", code="convergence")
        )
    ev = np.linalg.eigvalsh(hess) if hess.size else np.zeros(0)
    tol = 1e-6
    if ev.size:
        neg = int(np.sum(ev < -tol))
        if neg:
            ok = False
            msgs.append(
                Message(
                    "warning",
                    f"Model is nearly unidentifiable: degenerate  Hessian "
                    f"with {neg} negative eigenvalues",
                    "python",
                    code="convergence",
                )
            )
        elif np.min(np.abs(ev)) < tol:
            ok = False
            msgs.append(
                Message(
                    "warning",
                    "Hessian is numerically singular: parameters are not uniquely determined",
                    "python",
                    code="convergence",
                )
            )
        else:
            if ev.max() * tol > 1:
                ok = False
                msgs.append(
                    Message(
                        "warning",
                        "Model is nearly unidentifiable: very large "
                        "eigenvalue\n - Rescale variables?",
                        "python",
                        code="convergence",
                    )
                )
            if ev.min() / ev.max() < tol:
                ok = False
                msgs.append(
                    Message(
                        "warning",
                        "Model is nearly unidentifiable: large eigenvalue "
                        "ratio\n - Rescale variables?",
                        "python",
                        code="convergence",
                    )
                )
    return False, ok, msgs


def optimize_theta(
    devfun: Callable[[np.ndarray], float],
    theta0: np.ndarray,
    lower: np.ndarray,
    *,
    restart_edge: bool = True,
    boundary_tol: float = 1e-5,
    calc_derivs: bool = True,
    maxeval: int = 100_000,
    value_grad: Callable[[np.ndarray], tuple[float, np.ndarray]] | None = None,
) -> OptResult:
    """Minimize devfun over θ ≥ lower, then lme4's restart_edge, check.boundary and checkConv.

    `value_grad(θ)` (optional) returns devfun(θ) with its analytic gradient, NaN in components
    it cannot give (those are filled in by finite differences). With a complete gradient the
    checkConv derivatives come from it (`derivs_from_gradient`), otherwise from deriv12."""
    lower = np.asarray(lower, dtype=float)
    f = _Counted(devfun, value_grad=value_grad, lower=lower)
    x, fx, status, exhausted = _minimize(f, np.asarray(theta0, dtype=float), lower, maxeval)

    # restart_edge: a parameter sitting exactly on its bound with a negative one-sided slope
    # means the optimizer stopped there prematurely: run it again from the descent point.
    if restart_edge:
        at_edge = np.flatnonzero(x == lower)
        for i in at_edge:
            xp = x.copy()
            xp[i] += 1e-5
            if (f(xp) - fx) / 1e-5 < 0:
                x2, f2, status, exhausted = _minimize(f, xp, lower, maxeval)
                if f2 <= fx:
                    x, fx = x2, f2
                break

    settled = True
    if not exhausted:
        x, fx, status, exhausted, settled = _probe_other_basin(
            f, x, fx, theta0, lower, maxeval, status
        )

    x, fx = _check_boundary(f, x, fx, lower, boundary_tol)
    grad, hess, singular, converged, msgs = _diagnose(f, x, fx, lower, calc_derivs)
    if not exhausted and f.best_f < fx - BEST_SLACK * max(1.0, abs(fx)):
        # a point evaluated by the probes or the derivatives beats the optimum: go on from it
        assert f.best_x is not None
        x2, f2, status2, exhausted = _minimize(f, f.best_x.copy(), lower, maxeval)
        if f2 < fx:
            x, fx = _check_boundary(f, x2, f2, lower, boundary_tol)
            status = f"{status2} (restarted from a better point found while checking)"
            grad, hess, singular, converged, msgs = _diagnose(f, x, fx, lower, calc_derivs)

    better = f.best_f < fx - BEST_SLACK * max(1.0, abs(fx))
    doubts = optimum_doubts(
        grad,
        hess,
        x,
        lower,
        singular and calc_derivs,
        settled=settled,
        better_seen=(f.best_f, fx) if better else None,
    )
    converged = converged and not doubts
    msgs += doubts
    if exhausted:
        converged = False
        msgs.append(
            Message(
                "warning",
                f"optimizer stopped at the evaluation limit (maxeval = {maxeval}) before "
                "converging",
                "python",
                code="convergence",
            )
        )
    return OptResult(
        theta=x,
        fval=fx,
        n_evals=f.n,
        status=status,
        converged=converged,
        singular=singular,
        gradient=grad,
        hessian=hess,
        messages=msgs,
    )


# A point evaluated after the optimizer stopped (probes, derivatives) that is lower than the
# optimum by more than this (relative) means the optimum was not reached; below it is rounding
# of the criterion (~1e-13 relative).
BEST_SLACK = 1e-10
# lme4's checkConv gradient tolerance (0.002), applied at a singular fit, where lme4 checks
# nothing, to the projected gradient: free parameters and descent directions off a bound.
SINGULAR_GRAD_TOL = 0.002


def optimum_doubts(
    grad: np.ndarray,
    hess: np.ndarray,
    x: np.ndarray,
    lower: np.ndarray,
    check_gradient: bool,
    *,
    settled: bool = True,
    better_seen: tuple[float, float] | None = None,
) -> list[Message]:
    """Warnings for a final point the optimizer cannot vouch for (each makes converged False):
    probes still better after the last restart (`settled` False), a better point seen while
    checking (`better_seen` = (its criterion, the optimum's)), or, when `check_gradient` (a
    singular fit, where lme4's checkConv checks nothing), a projected gradient above
    SINGULAR_GRAD_TOL by lme4's measure (`_projected_gradient`)."""
    doubts = []
    if not settled:
        doubts.append(
            f"after {MAX_PROBE_ROUNDS} restarts, a probe on the other side of a variance "
            "parameter's bound still found a lower criterion"
        )
    if better_seen is not None:
        doubts.append(
            f"a point evaluated while checking the optimum has a lower criterion "
            f"({better_seen[0]:.10g} < {better_seen[1]:.10g})"
        )
    if check_gradient:
        # deriv12 differences one-sidedly within its step (1e-4) of a bound
        pg = _projected_gradient(grad, x, lower, near=DERIV12_DELTA, hess=hess)
        if pg > SINGULAR_GRAD_TOL:
            doubts.append(
                f"boundary fit with projected gradient {pg:.3g} (tol = {SINGULAR_GRAD_TOL})"
            )
    return [
        Message(
            "warning",
            f"the optimizer may not have reached the optimum: {text}",
            "python",
            code="convergence",
        )
        for text in doubts
    ]


def _projected_gradient(
    grad: np.ndarray,
    x: np.ndarray,
    lower: np.ndarray,
    near: float = 0.0,
    hess: np.ndarray | None = None,
) -> float:
    """max |g| over the free directions: at a bound (or within `near` of it, where a one-sided
    difference of an even criterion is positive by its curvature) only descent counts. With
    `hess`, lme4's checkConv measure on those directions: each component's smaller of |g| and
    the gradient scaled by the Cholesky factor of the Hessian restricted to them."""
    free = ~((x - lower <= near) & (grad > 0))
    g = np.where(free, grad, 0.0)
    if hess is None or not np.any(free):
        return float(np.max(np.abs(g), initial=0.0))
    try:
        r = np.linalg.cholesky(hess[np.ix_(free, free)]).T
        scaled = np.abs(np.linalg.solve(r, g[free]))
    except np.linalg.LinAlgError:
        return float(np.max(np.abs(g), initial=0.0))
    return float(np.max(np.minimum(scaled, np.abs(g[free]))))


def _check_boundary(
    f: _Counted, x: np.ndarray, fx: float, lower: np.ndarray, boundary_tol: float
) -> tuple[np.ndarray, float]:
    """lme4's check.boundary: snap near-bound parameters to the bound when that is no worse."""
    if boundary_tol > 0:
        for i in range(x.size):
            if 0 < x[i] - lower[i] < boundary_tol:
                xs = x.copy()
                xs[i] = lower[i]
                fs = f(xs)
                if fs <= fx:
                    x, fx = xs, fs
    return x, fx


def _diagnose(
    f: _Counted, x: np.ndarray, fx: float, lower: np.ndarray, calc_derivs: bool
) -> tuple[np.ndarray, np.ndarray, bool, bool, list[Message]]:
    """lme4's derivatives and checkConv at x: (gradient, Hessian, singular, converged, msgs)."""
    derivs = derivs_from_gradient(f, x) if calc_derivs and x.size and f.vg else None
    if derivs is not None:
        grad, hess = derivs
        singular, converged, msgs = check_conv(grad, hess, x, lower)
    elif calc_derivs and x.size:
        grad, hess = deriv12(f, x, fx, lower)
        singular, converged, msgs = check_conv(grad, hess, x, lower)
    else:
        grad, hess = np.zeros(x.size), np.zeros((x.size, x.size))
        singular, converged, msgs = check_conv(grad, hess, x, lower)
        if not singular:  # without derivatives only the singularity check applies
            converged, msgs = True, []
    return grad, hess, singular, converged, msgs


def check_scale_x(
    x: np.ndarray | list[np.ndarray | None],
    kappa: float = 1e3,
    variances: np.ndarray | None = None,
) -> Message | None:
    """lme4's checkScaleX: warn when the non-0/1 columns of X have sds (or sd ratios) beyond
    kappa, which makes the optimization ill-conditioned.

    `x`: X, or its columns (None for the intercept). `variances`: the columns' sample variances
    when already known (e.g. from the one-pass statistics)."""
    if isinstance(x, list):
        n, p = next((len(c) for c in x if c is not None), 0), len(x)
        cols = [np.broadcast_to(1.0, (n,)) if c is None else np.asarray(c, float) for c in x]
    else:
        n, p = x.shape
        cols = [x[:, j] for j in range(p)]
    if n < 2 or p == 0:
        return None
    if variances is not None:
        lo = np.array([c[:1].min() if c.strides == (0,) else c.min() for c in cols])
        hi = np.array([c[:1].max() if c.strides == (0,) else c.max() for c in cols])
        var = np.asarray(variances, dtype=float)
    else:
        lo, hi, var = column_summaries(x if not isinstance(x, list) else np.column_stack(cols))
    cont = np.ones(p, dtype=bool)
    for j in np.flatnonzero((lo >= 0) & (hi <= 1)):  # look at the values of [0, 1] columns only
        col = cols[j][:1] if cols[j].strides == (0,) else cols[j]  # a constant: one value
        cont[j] = bool(np.any((col != 0) & (col != 1)))
    if not np.any(cont):
        return None
    with np.errstate(divide="ignore"):
        logsd = 0.5 * np.log(var[cont])
    logcomp = np.abs(logsd[:, None] - logsd[None, :])
    if np.any(np.abs(logsd) > np.log(kappa)) or np.any(logcomp > np.log(kappa)):
        return Message(
            "warning",
            "Some predictor variables are on very different scales: consider rescaling",
            "python",
            code="scale_x",
        )
    return None


def column_summaries(
    x: np.ndarray, block: int = 32_768
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimum, maximum and sample variance of each column of X in one blocked pass.

    Each block of rows is copied into a small row-major buffer of columns (so any layout of X is
    read contiguously) and shifted by the first rows' means, so the sums of squares do not cancel
    when a column's mean dwarfs its sd.
    """
    n, p = x.shape
    shift = x[: min(n, 1000)].mean(axis=0)
    lo = np.full(p, np.inf)
    hi = np.full(p, -np.inf)
    s1 = np.zeros(p)
    s2 = np.zeros(p)
    buf = np.empty((p, min(block, n)))
    for a in range(0, n, block):
        xt = buf[:, : min(block, n - a)]
        np.copyto(xt, x[a : a + block].T)
        np.minimum(lo, xt.min(axis=1), out=lo)
        np.maximum(hi, xt.max(axis=1), out=hi)
        xt -= shift[:, None]
        s1 += xt.sum(axis=1)
        s2 += np.einsum("ij,ij->i", xt, xt)
    var = np.maximum(s2 - s1**2 / n, 0.0) / (n - 1)
    return lo, hi, var
