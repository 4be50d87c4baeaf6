"""lmer's O(G) criterion for a single scalar random intercept `y ~ X + (1|g)` (spec §2): the
diagonal core's LMM, on the group statistics of one data pass (`group_stats.GroupStats`, from
rows in memory or from a Dask DataFrame's partitions).

With one `(1|g)` term, Λ = θI and Λ'Z'WZΛ + I = diag(1 + θ²s_j) is diagonal, so every step of
lme4's penalized least squares reduces to sums over groups. The pipeline:

    GroupStats --pooled-------> cross-products per distinct group weight s_j (done once)
               --criterion----> d(θ) or d_R(θ), O(K p²) per evaluation (K = distinct s_j ≤ G)
               --1-D search---> θ̂ (grid + bounded Brent, lme4's boundary snapping)
               --estimates----> β̂, σ̂, A⁻¹, conditional modes b̂_j and their variances
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import linalg, optimize

from mixbridge.python_impl.checkconv import BOUNDARY_TOL, SINGULAR_TEXT, SINGULAR_TOL
from mixbridge.python_impl.group_stats import GroupStats
from mixbridge.python_impl.optsummary import OptSummary
from mixbridge.results import Message


@dataclass
class ScalarRIResult:
    """Estimates at θ̂ (spec §2.3). β and A⁻¹ are on the original (unshifted) scale."""

    theta: float
    beta: np.ndarray
    sigma: float
    vcov_unscaled: np.ndarray
    b: np.ndarray
    cond_var: np.ndarray
    criterion: float
    pwrss: float
    ldL2: float
    ldRX2: float
    singular: bool
    converged: bool
    messages: list[Message]
    n_evals: int
    # Both criteria at θ̂, for logLik / REMLcrit / deviance(fit, REML=FALSE) (spec §1.7).
    reml_criterion: float = math.nan
    ml_deviance: float = math.nan
    start: float = math.nan  # the scale of θ the 1-D search started from

    def opt_summary(self, status: str = "scalar random-intercept path (1-D search)") -> OptSummary:
        """The search as an optimizer record (no derivatives: the 1-D search checks its
        optimum by the criterion's analytic derivative in θ²)."""
        return OptSummary(
            "scalar-ri-brent",
            np.array([self.start]),
            np.array([self.theta]),
            float(self.criterion),
            int(self.n_evals),
            status,
            converged=bool(self.converged),
            singular=bool(self.singular),
            messages=list(self.messages),
        )


@dataclass
class _Eval:
    """Everything the PLS solve gives at one θ (shifted scale)."""

    theta: float
    criterion: float
    pwrss: float
    ldL2: float
    ldRX2: float
    L: np.ndarray | None  # lower Cholesky factor of the augmented [A r; r' yty(θ)]
    reml_criterion: float
    ml_deviance: float


def _evaluate(theta: float, stats: GroupStats, reml: bool) -> _Eval:
    c = stats.pooled()
    p = stats.p
    t2 = theta * theta
    omega = t2 / (1.0 + t2 * c.s)
    # [A r; r' yty(θ)] = [X y]'W[X y] − Σ_j ω_j a_j a_j': one Cholesky gives R_X (its leading
    # block), c_β (its last row) and √pwrss (its last diagonal entry), as in MixedModels.jl.
    upper = c.aug_upper - c.M @ omega
    aug = np.empty((p + 1, p + 1))
    aug[c.iu, c.ju] = upper
    aug[c.ju, c.iu] = upper
    ldL2 = float(np.dot(c.count, np.log1p(t2 * c.s)))
    try:
        L = np.linalg.cholesky(aug)
    except np.linalg.LinAlgError:  # pwrss = 0 (perfect fit) or A(θ) not positive definite
        return _Eval(theta, math.inf, math.nan, ldL2, math.nan, None, math.inf, math.inf)
    diag = np.diagonal(L)
    pwrss = float(diag[p] ** 2)
    ldRX2 = float(2.0 * np.sum(np.log(diag[:p])))
    n = stats.n
    two_pi = 2.0 * math.pi
    ml = ldL2 - stats.ldW + n * (1.0 + math.log(two_pi * pwrss / n))
    nmp = n - p
    rc = ldL2 + ldRX2 - stats.ldW + nmp * (1.0 + math.log(two_pi * pwrss / nmp))
    return _Eval(theta, rc if reml else ml, pwrss, ldL2, ldRX2, L, rc, ml)


def _dcriterion_dphi(phi: float, stats: GroupStats, reml: bool) -> float:
    """d criterion / dφ with φ = θ², analytically (its root pins θ̂ to ~1e-13, where a
    derivative-free search on the flat criterion stops near sqrt(machine eps) ≈ 1e-8).

    With D = Σ_j M_j/(1+φs_j)² (= −d aug/dφ) and v = [−β̂; 1]:
    dpwrss/dφ = −v'Dv,  d ldL2/dφ = Σ_j s_j/(1+φs_j),  d log det A/dφ = −tr(A⁻¹ D_XX).
    """
    c = stats.pooled()
    p = stats.p
    ev = _evaluate(math.sqrt(phi), stats, reml)
    if ev.L is None:
        return math.nan
    den = 1.0 + phi * c.s
    upper = c.M @ (1.0 / (den * den))
    D = np.empty((p + 1, p + 1))
    D[c.iu, c.ju] = upper
    D[c.ju, c.iu] = upper
    # Small dense solves with A itself (p×p): cheaper here than triangular solves on L's block.
    A = ev.L[:p, :p] @ ev.L[:p, :p].T
    sol = np.linalg.solve(A, np.column_stack([ev.L[:p, :p] @ ev.L[p, :p], D[:p, :p]]))
    v = np.append(-sol[:, 0], 1.0)
    dpwrss = -float(v @ D @ v)
    dldL2 = float(np.dot(c.count, c.s / den))
    if not reml:
        return dldL2 + stats.n * dpwrss / ev.pwrss
    dldRX2 = -float(np.trace(sol[:, 1:]))
    return dldL2 + dldRX2 + (stats.n - p) * dpwrss / ev.pwrss


def scalar_ri_pieces(
    theta: float, stats: GroupStats, reml: bool
) -> tuple[float, float, float, np.ndarray]:
    """(ldL2, ldRX2, pwrss, (R_X'R_X)⁻¹ on the original scale) at θ: the pieces of lmer's
    deviance in (θ, σ) that lmerTest's Satterthwaite method differentiates."""
    ev = _evaluate(abs(float(theta)), stats, reml)
    res = _estimates(ev, stats, reml, False, True, [], 0)
    return ev.ldL2, ev.ldRX2, ev.pwrss, res.vcov_unscaled


def _grid_values(
    thetas: np.ndarray, stats: GroupStats, reml: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The criterion and its derivative in φ = θ² at many θ at once (stacked Cholesky factors
    and solves: the search's grid in one pass instead of one Python call per point). The same
    formulas as `_evaluate` and `_dcriterion_dphi`; non-positive-definite points give inf/NaN."""
    c = stats.pooled()
    p = stats.p
    t2 = np.asarray(thetas, float) ** 2
    den = 1.0 + np.outer(t2, c.s)  # (m, K)
    upper = c.aug_upper[None, :] - (t2[:, None] / den) @ c.M.T  # (m, T)
    m = t2.size
    aug = np.empty((m, p + 1, p + 1))
    aug[:, c.iu, c.ju] = upper
    aug[:, c.ju, c.iu] = upper
    dupper = (1.0 / (den * den)) @ c.M.T
    D = np.empty((m, p + 1, p + 1))
    D[:, c.iu, c.ju] = dupper
    D[:, c.ju, c.iu] = dupper
    ldL2 = np.log1p(t2[:, None] * c.s[None, :]) @ c.count
    dldL2 = (c.s[None, :] / den) @ c.count
    crit = np.full(m, np.inf)
    slope = np.full(m, np.nan)
    n, nmp = stats.n, stats.n - p
    two_pi = 2.0 * math.pi
    try:
        L = np.linalg.cholesky(aug)
        ok = np.ones(m, bool)
    except np.linalg.LinAlgError:
        L = np.zeros_like(aug)
        ok = np.zeros(m, bool)
        for k in range(m):
            try:
                L[k] = np.linalg.cholesky(aug[k])
                ok[k] = True
            except np.linalg.LinAlgError:
                continue
    diag = np.diagonal(L, axis1=1, axis2=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        pwrss = diag[:, p] ** 2
        ldRX2 = 2.0 * np.sum(np.log(diag[:, :p]), axis=1)
        if reml:
            crit = ldL2 + ldRX2 - stats.ldW + nmp * (1.0 + np.log(two_pi * pwrss / nmp))
        else:
            crit = ldL2 - stats.ldW + n * (1.0 + np.log(two_pi * pwrss / n))
        A = aug[:, :p, :p]
        rhs = np.concatenate([aug[:, :p, p : p + 1], D[:, :p, :p]], axis=2)
        sol = np.linalg.solve(np.where(ok[:, None, None], A, np.eye(p)), rhs)
        v = np.concatenate([-sol[:, :, 0], np.ones((m, 1))], axis=1)
        dpwrss = -np.einsum("mi,mij,mj->m", v, D, v)
        if reml:
            slope = dldL2 - np.trace(sol[:, :, 1:], axis1=1, axis2=2) + nmp * dpwrss / pwrss
        else:
            slope = dldL2 + n * dpwrss / pwrss
    crit = np.where(ok & np.isfinite(crit), crit, np.inf)
    slope = np.where(ok, slope, np.nan)
    return crit, slope


def scalar_ri_criterion(theta: float, stats: GroupStats, reml: bool) -> float:
    """lme4's profiled deviance d(θ) (ML) or REML criterion d_R(θ) (spec §2.2)."""
    return _evaluate(abs(float(theta)), stats, reml).criterion


def scalar_ri_profile_pieces(
    theta: float, stats: GroupStats, full: bool = False
) -> tuple[float, float, np.ndarray | None, np.ndarray | None]:
    """(log|L_θ|², pwrss, β̂(θ), (R_X'R_X)⁻¹) at θ (the last two only when `full`): the PLS
    pieces a profile of the ML deviance over (σ_b, σ) or β_j needs (mixbridge.inference)."""
    ev = _evaluate(abs(float(theta)), stats, False)
    if not full or ev.L is None:
        return ev.ldL2, ev.pwrss, None, None
    est = _estimates(ev, stats, False, False, True, [], 0)
    return ev.ldL2, ev.pwrss, est.beta, est.vcov_unscaled


# ---------------------------------------------------------------------------------------------
# 1-D optimization and the estimates


def _start_theta(stats: GroupStats) -> float:
    """A scale for θ from the between/within split of y (cf. lme4's v_g/v_e start, §1.6)."""
    sw = float(np.sum(stats.s))
    if sw <= 0:
        return 1.0
    mean = float(np.sum(stats.Sy)) / sw
    occupied = stats.s > 0
    gm = stats.Sy[occupied] / stats.s[occupied]
    v_g = float(np.sum(stats.s[occupied] * (gm - mean) ** 2)) / sw
    v_e = max(stats.yty / sw - mean * mean - v_g, 0.0)
    if v_e > 0 and v_g > 0:
        return max(min(math.sqrt(v_g / v_e), 1e6), 1e-3)
    return 1.0


def scalar_ri_fit(
    stats: GroupStats, reml: bool, boundary_tol: float = BOUNDARY_TOL
) -> ScalarRIResult:
    """Minimize the criterion over θ ≥ 0 and return the estimates at θ̂ (spec §2.3–2.4).
    `boundary_tol`: lme4's check.boundary distance (0 switches it off)."""
    evals = 0
    cache: dict[float, float] = {}

    def f(t: float) -> float:
        nonlocal evals
        t = float(t)
        if t not in cache:
            evals += 1
            cache[t] = _evaluate(t, stats, reml).criterion
        return cache[t]

    messages: list[Message] = []
    converged = True
    # A log-spaced grid around the data's own scale finds the basins (the criterion can have a
    # local minimum at 0 and another inside, even one between two grid points whose values both
    # exceed the value at 0): every grid local minimum, and every interval where the derivative
    # in θ² turns from negative to positive, is polished; the best of them wins.
    t0 = _start_theta(stats)
    grid = [0.0] + list(t0 * np.logspace(-4, 3, 36))
    gvals, gslopes = _grid_values(np.array(grid), stats, reml)
    evals += len(grid)
    vals = [float(v) for v in gvals]
    slopes = [float(v) for v in gslopes[1:]]
    for t, v in zip(grid, vals, strict=True):
        cache[float(t)] = v
    i = int(np.argmin(vals))
    while i == len(grid) - 1 and grid[-1] < 1e12:  # minimum beyond the grid: extend upwards
        grid.append(grid[-1] * 10.0)
        vals.append(f(grid[-1]))
        slopes.append(_dcriterion_dphi(grid[-1] ** 2, stats, reml))
        i = int(np.argmin(vals))
    if i == len(grid) - 1:
        converged = False
        theta = grid[i]
        messages.append(
            Message(
                "warning", "theta did not reach a minimum (unbounded)", "python", code="convergence"
            )
        )
    else:
        slope_cache: dict[float, float] = {}

        def g(t: float) -> float:
            # cached: each polish asks for its end points, and brentq asks for them again
            t = float(t)
            if t not in slope_cache:
                slope_cache[t] = _dcriterion_dphi(t * t, stats, reml)
            return slope_cache[t]

        last = len(grid) - 1
        around_minima = {
            (max(j - 1, 0), min(j + 1, last))
            for j in range(last)
            if vals[j] <= vals[max(j - 1, 0)] and vals[j] <= vals[j + 1]
        }
        sign_changes = {(j, j + 1) for j in range(1, last) if slopes[j - 1] < 0.0 < slopes[j]}
        theta, best = grid[i], vals[i]  # never return worse than the best grid point
        polished: list[float] = []
        for lo, hi in [*sorted(around_minima), *sorted(sign_changes - around_minima)]:
            if grid[hi] <= grid[lo]:
                continue
            if (lo, hi) in sign_changes and any(grid[lo] < c < grid[hi] for c in polished):
                # a stationary point in this cell was already found from the wider bracket
                # around a grid minimum: polishing the cell again lands on the same root
                continue
            mid = lo if vals[lo] <= vals[hi] else hi
            cand = _polish(f, g, grid[lo], grid[hi], grid[mid])
            polished.append(cand)
            if f(cand) < best:
                theta, best = cand, f(cand)
    # lme4's check.boundary: snap to the bound if that does not worsen the criterion.
    if 0.0 < theta < boundary_tol and f(0.0) <= f(theta):
        theta = 0.0
    final = _evaluate(theta, stats, reml)
    if not math.isfinite(final.criterion):
        converged = False
        messages.append(
            Message(
                "warning", "criterion is not finite at the optimum", "python", code="convergence"
            )
        )
    singular = theta < SINGULAR_TOL
    if singular:
        messages.append(Message("message", SINGULAR_TEXT, "python", code="singular"))
    result = _estimates(final, stats, reml, singular, converged, messages, evals)
    result.start = t0
    return result


def _polish(
    f: Callable[[float], float], g: Callable[[float], float], lo: float, hi: float, mid: float
) -> float:
    """θ̂ in the bracket [lo, hi] around the best grid point `mid`: a root of the derivative g
    (in φ = θ²) when g changes sign, else a bounded Brent search on f itself."""
    g_lo = g(lo) if lo > 0 else g(0.0)
    if lo == 0.0 and g_lo >= 0.0:  # increasing from the bound: the minimum is θ = 0
        return 0.0
    g_hi = g(hi)
    if g_lo < 0.0 < g_hi:
        phi = optimize.brentq(
            lambda ph: g(math.sqrt(ph)), lo * lo, hi * hi, xtol=1e-300, rtol=1e-15, maxiter=200
        )
        return math.sqrt(phi)
    res = optimize.minimize_scalar(
        f, bounds=(lo, hi), method="bounded", options={"xatol": 1e-12 * hi, "maxiter": 500}
    )
    return float(res.x)


def _estimates(
    ev: _Eval,
    stats: GroupStats,
    reml: bool,
    singular: bool,
    converged: bool,
    messages: list[Message],
    n_evals: int,
) -> ScalarRIResult:
    p = stats.p
    theta = ev.theta
    sigma2 = ev.pwrss / (stats.n - p if reml else stats.n)
    if ev.L is None:
        nan = np.full(p, np.nan)
        return ScalarRIResult(
            theta, nan, math.nan, np.full((p, p), np.nan), np.full(stats.n_groups, np.nan),
            np.full(stats.n_groups, np.nan), ev.criterion, ev.pwrss, ev.ldL2, ev.ldRX2,
            singular, False, messages, n_evals, ev.reml_criterion, ev.ml_deviance,
        )  # fmt: skip
    RXt = ev.L[:p, :p]  # R_X' (lower)
    gamma = linalg.solve_triangular(RXt, ev.L[p, :p], lower=True, trans="T")
    R_inv_t = linalg.solve_triangular(RXt, np.eye(p), lower=True)  # R_X'^{-1}
    A_inv = R_inv_t.T @ R_inv_t
    # Map the shifted problem back: X_shifted = X·S with S = I − e_int·x_shift' (det 1), so
    # β = S·γ + y_shift·e_int and A⁻¹ = S·A_shifted⁻¹·S'.
    beta = gamma.copy()
    if stats.intercept is not None:
        S = np.eye(p)
        S[stats.intercept, :] -= stats.x_shift
        beta = S @ beta
        beta[stats.intercept] += stats.y_shift
        A_inv = S @ A_inv @ S.T
    t2 = theta * theta
    d = 1.0 + t2 * stats.s
    # Residual group sums are unchanged by the shift, so use the shifted statistics.
    b = t2 * (stats.Sy - stats.SX @ gamma) / d
    cond_var = sigma2 * t2 / d
    return ScalarRIResult(
        theta=theta,
        beta=beta,
        sigma=math.sqrt(sigma2),
        vcov_unscaled=(A_inv + A_inv.T) / 2.0,
        b=b,
        cond_var=cond_var,
        criterion=ev.criterion,
        pwrss=ev.pwrss,
        ldL2=ev.ldL2,
        ldRX2=ev.ldRX2,
        singular=singular,
        converged=converged,
        messages=messages,
        n_evals=n_evals,
        reml_criterion=ev.reml_criterion,
        ml_deviance=ev.ml_deviance,
    )


def scalar_ri_fitted(
    X: np.ndarray, codes: np.ndarray, result: ScalarRIResult, offset: np.ndarray | None = None
) -> np.ndarray:
    """μ_i = o_i + x_i'β̂ + b̂_{g(i)}: the second (and last) pass over the rows."""
    mu = np.asarray(X, dtype=float) @ result.beta
    mu += result.b[codes]
    if offset is not None:
        mu += offset
    return mu
