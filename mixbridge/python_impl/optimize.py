"""Optimizing a profiled criterion over θ, with lme4's boundary handling and convergence checks:
lmer's optimizer, `optimizers.minimize("L-BFGS-B", ...)`, returning an `OptSummary` (lme4's
checks themselves are in `checkconv`).

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

import numpy as np
from scipy import optimize as sopt

from mixbridge.python_impl.checkconv import (
    BEST_SLACK,
    MAX_PROBE_ROUNDS,
    check_boundary,
    check_conv,
    deriv12,
    derivs_from_gradient,
    optimum_doubts,
    projected_gradient,
    rounding_gain,
)
from mixbridge.python_impl.optsummary import OptSummary
from mixbridge.results import Message


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
        # optional diagonal Hessian guess at θ (see `_newton_scale`)
        self.curvature: Callable[[np.ndarray], np.ndarray | None] | None = None
        self.last: tuple[np.ndarray, float, np.ndarray] | None = None
        # each evaluation costs a big factorization (`optimize_theta`'s `expensive`): the last
        # points with an analytic gradient serve the Hessian at the optimum
        # (`derivs_from_gradient`), and the floor stop may be vouched for by the trapezoid rule
        self.expensive = False
        self.history: list[tuple[np.ndarray, np.ndarray]] = []
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
        if self.expensive and np.all(np.isfinite(g)):
            self.history = [*self.history[-(HISTORY_KEEP - 1) :], (x.copy(), g.copy())]
        return v, g


HISTORY_KEEP = 8


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


def _newton_scale(f: _Counted, x0: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Per-θ scale s for L-BFGS-B's variables z = s·θ and a scale κ for its objective f/κ, from
    the objective's curvature guess h (`_Counted.curvature`, a diagonal Hessian estimate):
    s_k = √h_k / c and κ = c² with c = ‖g/√h‖. Then the scaled gradient has unit length and
    the scaled model Hessian is I, which is L-BFGS-B's first model (B = I): its Cauchy point is
    the Newton step of the diagonal model and its first trial step, of unit length, reaches it.
    Scaling z alone (κ = 1) leaves the model c² too flat: the Cauchy point runs to a bound and
    the first step goes off the Newton direction (1e6 rows crossed: θ_b 0.49 -> 0.57, an
    overshoot that costs backtracking evaluations). None without a guess or a usable
    gradient."""
    if f.curvature is None:
        return None
    h = f.curvature(x0)
    if h is None:
        return None
    h = np.asarray(h, dtype=float)
    fx, g = f.value_grad(x0)
    if not (np.isfinite(fx) and np.all(np.isfinite(g)) and np.all(h > 0)):
        return None
    root = np.sqrt(h)
    norm = float(np.linalg.norm(g / root))
    if not norm > 0:
        return None
    return root / norm, norm**2


def _lbfgsb(
    f: _Counted, x0: np.ndarray, lower: np.ndarray, maxeval: int, central: bool
) -> tuple[np.ndarray, float, int, str]:
    """One L-BFGS-B run from x0. Returns (θ, criterion, status, message) where θ is the best
    point the run evaluated and the criterion is its value there.

    scipy's (res.x, res.fun) are not used: when the line search fails (status ABNORMAL),
    L-BFGS-B can return the last *trial* point as res.x with the value of an earlier, better
    iterate as res.fun (scipy 1.17; a (x + x2 || g) design returned θ = [2.8e-6, 0, 0] at
    criterion 606.67 with res.fun = 568.18, the value at [0.678, 0, 0])."""
    s: float | np.ndarray = 1.0
    kappa = 1.0  # the objective's scale (see `_newton_scale`)
    if f.vg is not None and FIRST_STEP_SCALE > 0:
        s = FIRST_STEP_SCALE / max(float(np.linalg.norm(x0)), 1e-3)
        diag = _newton_scale(f, np.asarray(x0, dtype=float))
        if diag is not None:
            s, kappa = diag
    lo_s = lower * s
    z0 = np.asarray(x0, dtype=float) * s

    def theta(z: np.ndarray) -> np.ndarray:
        if np.array_equal(z, z0):  # the start itself (z0 / s need not round-trip to x0)
            return np.asarray(x0, dtype=float)
        # exactly on the bound when L-BFGS-B leaves z a rounding error above it (restart_edge,
        # the boundary probe and the analytic gradient look for θ == lower)
        return np.where(z - lo_s <= 1e-12 * s, lower, z / s) if np.any(s != 1.0) else z

    def fg(z: np.ndarray) -> tuple[float, np.ndarray]:
        x = theta(z)
        fx, known = f.value_grad(x)
        if not np.isfinite(fx):
            known = None  # no analytic gradient there: finite differences as before
        return fx / kappa, _fd_gradient(f, x, fx, lower, central, known) / (s * kappa)

    f.start_run()
    x_start = np.asarray(x0, dtype=float)
    floor = _FloorStop(f, lower) if f.vg is not None else None
    res = sopt.minimize(
        fg,
        z0,
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
        callback=floor,
    )
    if floor is not None and floor.stopped:
        assert f.run_best_x is not None
        return f.run_best_x.copy(), f.run_best_f, 0, "CONVERGENCE: PREDICTED DECREASE AT FLOOR"
    if f.run_best_x is None:  # nothing finite was evaluated
        return x_start, f(x_start), int(res.status), str(res.message)
    return f.run_best_x.copy(), f.run_best_f, int(res.status), str(res.message)


# Stop L-BFGS-B (analytic gradient only) once the decrease a quasi-Newton step still predicts,
# ½ g'B⁻¹g on the free variables, is below FLOOR_DECREASE_ABS + FLOOR_DECREASE_REL·|f|: the
# criterion's rounding noise (~1e-14 relative at 1e6 rows) is then as large as what is left, and
# further line searches only spend factorizations (1e6 rows, 1e5 × 5e3 crossed: 7 evaluations
# of 35 at the floor, then a restart). lme4's BOBYQA stops ~1e-5 relative short in θ, i.e.
# orders of magnitude above this.
FLOOR_DECREASE_ABS = 1e-9
FLOOR_DECREASE_REL = 1e-14
# The model behind that prediction must be vouched for: either the last accepted step already
# gained little (≤ FLOOR_LAST_DROP × the tolerance), or its actual gain agreed with the
# trapezoid rule ½(g_prev + g)'s of the gradients at its ends to FLOOR_MODEL_AGREEMENT
# (relative): gradient and criterion consistent along the step, i.e. the quadratic model holds
# where the optimizer is. Without the second rule a superlinear last step (1e6 rows crossed:
# a gain of 1.7e-4 leaving a predicted 4e-9) was followed by 18 evaluations in rounding noise.
# The second rule is for expensive evaluations only (`optimize_theta`'s `expensive`): cheap
# fits take the extra evaluations and end nearer the exact optimum (2e4 rows crossed: 1.5e-9
# above it with the rule, 5e-11 below lme4's criterion without).
FLOOR_LAST_DROP = 1e3
FLOOR_MODEL_AGREEMENT = 0.25


class _FloorStop:
    """scipy `callback` for `_lbfgsb`: a BFGS model (m×m, m = len(θ) is small) updated from
    the accepted iterates and their analytic gradients; raises StopIteration at the floor."""

    def __init__(self, f: _Counted, lower: np.ndarray) -> None:
        self.f, self.lower = f, lower
        self.prev: tuple[np.ndarray, float, np.ndarray] | None = None
        self.hess: np.ndarray | None = None
        self.stopped = False

    def __call__(self, intermediate_result: object = None) -> None:
        last = self.f.last
        if last is None or not np.all(np.isfinite(last[2])):
            return
        x, fx, g = last
        tol = FLOOR_DECREASE_ABS + FLOOR_DECREASE_REL * abs(fx)
        vouched = False
        if self.prev is not None:
            s, y = x - self.prev[0], g - self.prev[2]
            sy = float(s @ y)
            if sy > 1e-12 * float(np.linalg.norm(s) * np.linalg.norm(y)) and sy > 0:
                if self.hess is None:
                    self.hess = np.eye(x.size) * float(y @ y) / sy
                bs = self.hess @ s
                self.hess = self.hess - np.outer(bs, bs) / float(s @ bs) + np.outer(y, y) / sy
            last_drop = self.prev[1] - fx
            trapezoid = -0.5 * float((self.prev[2] + g) @ s)
            vouched = 0 <= last_drop <= FLOOR_LAST_DROP * tol or (
                self.f.expensive
                and last_drop > 0
                and abs(last_drop - trapezoid) <= FLOOR_MODEL_AGREEMENT * last_drop + tol
            )
        self.prev = (x.copy(), fx, g.copy())
        if self.hess is None or not vouched:
            return
        # free variables: not on a bound with the gradient pushing further out
        free = ~((x <= self.lower) & (g > 0))
        if not np.any(free):
            return
        try:
            step = np.linalg.solve(self.hess[np.ix_(free, free)], g[free])
        except np.linalg.LinAlgError:
            return
        decrease = 0.5 * float(g[free] @ step)
        if 0 <= decrease <= tol:
            self.stopped = True
            raise StopIteration


def _converged_by_gradient(f: _Counted, x: np.ndarray, lower: np.ndarray) -> bool:
    """With a complete analytic gradient, a line search that gave up on a point whose projected
    gradient is below GRAD_DONE has met the criterion's rounding floor: a second run (central
    differences only change NaN components) gains nothing (InstEval-size fits: < 1e-10)."""
    if f.vg is None:
        return False
    fx, g = f.value_grad(x)
    if not np.isfinite(fx) or not np.all(np.isfinite(g)):
        return False
    return projected_gradient(g, x, lower) <= GRAD_DONE


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
    round still gained more than rounding (`rounding_gain`; the optimum is then not certain)."""
    restarted = False
    for _ in range(MAX_PROBE_ROUNDS):
        best: tuple[np.ndarray, float] | None = None
        for xp in probe_points(x, theta0, lower):
            fp = f(xp)
            if fp < fx and (best is None or fp < best[1]):
                best = (xp, fp)
        if best is None:
            break
        before = fx
        x2, f2, status2, exhausted = _minimize(f, best[0], lower, maxeval)
        restarted = True
        if f2 < fx:
            x, fx, status = x2, f2, status2
        if exhausted:
            return x, fx, status, True, False
        if rounding_gain(before, min(fx, best[1])):  # the probe itself was rounding
            break
    else:
        return x, fx, status, False, False
    if restarted:
        status = f"{status} (restarted from a probe of the other basin)"
    return x, fx, status, False, True


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
    curvature: Callable[[np.ndarray], np.ndarray | None] | None = None,
    expensive: bool = False,
) -> OptSummary:
    """Minimize devfun over θ ≥ lower, then lme4's restart_edge, check.boundary and checkConv.

    `value_grad(θ)` (optional) returns devfun(θ) with its analytic gradient, NaN in components
    it cannot give (those are filled in by finite differences). With a complete gradient the
    checkConv derivatives come from it (`derivs_from_gradient`), otherwise from deriv12.
    `expensive` (each evaluation costs a big factorization): that Hessian takes the
    optimizer's last iterates near the optimum as its difference steps where they serve, and
    the floor stop also takes a last step vouched for by the trapezoid rule (`_FloorStop`)."""
    lower = np.asarray(lower, dtype=float)
    f = _Counted(devfun, value_grad=value_grad, lower=lower)
    f.curvature = curvature
    f.expensive = expensive
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

    x, fx = check_boundary(f, x, fx, lower, boundary_tol)
    grad, hess, singular, converged, msgs = _diagnose(f, x, fx, lower, calc_derivs)
    if not exhausted and f.best_f < fx - BEST_SLACK * max(1.0, abs(fx)):
        # a point evaluated by the probes or the derivatives beats the optimum: go on from it
        assert f.best_x is not None
        x2, f2, status2, exhausted = _minimize(f, f.best_x.copy(), lower, maxeval)
        if f2 < fx:
            x, fx = check_boundary(f, x2, f2, lower, boundary_tol)
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
    return OptSummary(
        method="L-BFGS-B",
        start=np.asarray(theta0, dtype=float),
        final=x,
        fval=fx,
        n_evals=f.n,
        status=status,
        converged=converged,
        singular=singular,
        gradient=grad,
        hessian=hess,
        messages=msgs,
        settled=settled,
    )


def _diagnose(
    f: _Counted, x: np.ndarray, fx: float, lower: np.ndarray, calc_derivs: bool
) -> tuple[np.ndarray, np.ndarray, bool, bool, list[Message]]:
    """lme4's derivatives and checkConv at x: (gradient, Hessian, singular, converged, msgs)."""
    derivs = (
        derivs_from_gradient(f.value_grad, x, near=f.history if f.expensive else None)
        if calc_derivs and x.size and f.vg
        else None
    )
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
