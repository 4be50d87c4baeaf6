"""lme4's checks at the optimum: derivatives (deriv12), checkConv, check.boundary, and the
engine's own doubts about an optimum (optimum_doubts). Used by every optimizer of lmer and glmer
(`optimize`, `optimizers`, `glmer_gradient`); their findings are structured `Message`s.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mixbridge.results import Message

SINGULAR_TEXT = "boundary (singular) fit: see help('isSingular')"
SINGULAR_TOL = 1e-4  # lme4's check.conv.singular tol
BOUNDARY_TOL = 1e-5  # lme4's boundary.tol (glmerControl, lmerControl)
# Rounds of probe-then-restart (each restart can end at a new boundary point to probe).
MAX_PROBE_ROUNDS = 5


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
    value_grad: Callable[[np.ndarray], tuple[float, np.ndarray]],
    x: np.ndarray,
    rel: float = 1e-6,
    near: list[tuple[np.ndarray, np.ndarray]] | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Gradient and Hessian at x from an analytic gradient: the gradient itself and forward
    differences of it (m + 1 gradient evaluations instead of deriv12's ~2m²). Steps go up, so
    they stay feasible at a lower bound. On InstEval this Hessian agrees with deriv12's (whose
    own truncation error is the larger) to 2e-5 relative. None if a component is unavailable.

    `near`: points (x_i, g_i) whose gradient is known already (the optimizer's last iterates,
    when a gradient costs a big factorization): those within NEAR_STEP_MAX of x (relative)
    stand in for difference steps along their directions (`_difference_steps`), and only the
    directions they leave out cost new gradients. Their secant error is O(|x_i − x|) relative
    (≤ ~1e-3), well inside what checkConv's tests need."""
    fx, g = value_grad(x)
    if not np.isfinite(fx) or not np.all(np.isfinite(g)):
        return None
    m = x.size
    steps, diffs = _difference_steps(x, g, near or [])
    for i in range(m):
        if len(steps) == m:
            break
        step = np.zeros(m)
        step[i] = rel * max(1.0, abs(x[i]))
        if not _independent(steps, step):
            continue
        fp, gp = value_grad(x + step)
        if not np.isfinite(fp) or not np.all(np.isfinite(gp)):
            return None
        steps.append(step)
        diffs.append(gp - g)
    # H D = G for the steps D and gradient differences G (D diagonal without `near` points)
    h = np.linalg.solve(np.array(steps), np.array(diffs)).T
    return g, (h + h.T) / 2.0


# `derivs_from_gradient`'s known points: at most this far from x (relative, per component), at
# least this far (a difference below it is rounding), and each new direction's part orthogonal
# to the ones taken at least NEAR_INDEPENDENT of its length (a well-conditioned system).
NEAR_STEP_MAX = 1e-3
NEAR_STEP_MIN = 1e-8
NEAR_INDEPENDENT = 0.2


def _independent(steps: list[np.ndarray], d: np.ndarray) -> bool:
    if not steps:
        return True
    q, _ = np.linalg.qr(np.array(steps).T)
    rest = d - q @ (q.T @ d)
    return bool(np.linalg.norm(rest) >= NEAR_INDEPENDENT * np.linalg.norm(d))


def _difference_steps(
    x: np.ndarray, g: np.ndarray, near: list[tuple[np.ndarray, np.ndarray]]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Steps x_i − x and gradient differences g_i − g from the known points, nearest first."""
    scale = np.maximum(np.abs(x), 1.0)
    cands = []
    for xi, gi in near:
        d = np.asarray(xi, dtype=float) - x
        r = float(np.max(np.abs(d) / scale))
        if NEAR_STEP_MIN < r <= NEAR_STEP_MAX and np.all(np.isfinite(gi)):
            cands.append((r, d, np.asarray(gi, dtype=float) - g))
    steps: list[np.ndarray] = []
    diffs: list[np.ndarray] = []
    for _, d, dg in sorted(cands, key=lambda c: c[0]):
        if len(steps) < x.size and _independent(steps, d):
            steps.append(d)
            diffs.append(dg)
    return steps, diffs


def check_conv(
    grad: np.ndarray, hess: np.ndarray, theta: np.ndarray, lower: np.ndarray
) -> tuple[bool, bool, list[Message]]:
    """lme4's checkConv: returns (singular, converged, messages)."""
    msgs: list[Message] = []
    singular = bool(np.any((lower == 0) & (theta < 1e-4)))
    if singular:
        msgs.append(Message("message", SINGULAR_TEXT, "python", code="singular"))
        return True, True, msgs
    if not (np.all(np.isfinite(hess)) and np.all(np.isfinite(grad))):
        # finite differences met a point where the deviance could not be evaluated: no check
        # is possible (eigvalsh would raise LinAlgError, NaN comparisons would pass silently)
        text = "Problem with Hessian check (infinite or missing values?)"
        return False, False, [Message("warning", text, "python", code="convergence")]
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


# A point evaluated after the optimizer stopped (probes, derivatives) that is lower than the
# optimum by more than this (relative) means the optimum was not reached; below it is rounding
# of the criterion (~1e-13 relative).
BEST_SLACK = 1e-10


def rounding_gain(before: float, after: float) -> bool:
    """Whether a probe round lowered the criterion by no more than its rounding (BEST_SLACK):
    `after` is the lowest value the round saw (its best probe or the restart's end). Such a
    round leaves nothing to find (a singular binomial fit gained 6e-11 ... 7e-14 on 44.0 in
    five rounds, each round's probe a hair lower than the last optimum)."""
    return before - after <= BEST_SLACK * max(1.0, abs(before))


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
    SINGULAR_GRAD_TOL by lme4's measure (`projected_gradient`)."""
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
        pg = projected_gradient(grad, x, lower, near=DERIV12_DELTA, hess=hess)
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


def projected_gradient(
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


def check_boundary(
    f: Callable[[np.ndarray], float],
    x: np.ndarray,
    fx: float,
    lower: np.ndarray,
    boundary_tol: float = BOUNDARY_TOL,
    *,
    ties: bool = True,
) -> tuple[np.ndarray, float]:
    """lme4's check.boundary: each parameter within `boundary_tol` above its bound is set to the
    bound, one at a time, when the criterion there is lower (`ties`: or equal, as lmer's
    optimizer does; glmer compares strictly, as lme4's code)."""
    if boundary_tol > 0:
        for i in range(x.size):
            if 0 < x[i] - lower[i] < boundary_tol:
                xs = x.copy()
                xs[i] = lower[i]
                fs = f(xs)
                if fs < fx or (ties and fs == fx):
                    x, fx = xs, fs
    return x, fx
