"""lmer's deviance function (lme4's `mkLmerDevfun` / `lmer_Deviance`): a pure function of θ.

    devfun = LmerDevfun(terms, reml)
    devfun(theta)              d(θ) (ML) or d_R(θ) (REML): setTheta → updateDecomp → solve →
                               Laplace, the values the fit reports (`state(θ)` gives every piece)
    devfun.profiled(theta)     the same criterion from one augmented factorization (the
                               optimizer loop); `profiled_grad` adds its analytic gradient

on the blocked core (the one with lmer's profiled criterion, `pls.ProfiledCore`), and lme4's
start for scalar terms (`scalar_start`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from mixbridge.errors import ArgumentError
from mixbridge.python_impl.pls import lower_bounds
from mixbridge.python_impl.pls_blocked import BlockedCore
from mixbridge.python_impl.response import profiled_criteria

if TYPE_CHECKING:
    from mixbridge.formula.frames import MixedTerms


@dataclass
class PLSState:
    """Everything the outputs need at one θ (cf. lme4's devcomp)."""

    theta: np.ndarray
    beta: np.ndarray
    u: np.ndarray
    pwrss: float
    ldL2: float
    ldRX2: float
    ml_deviance: float
    reml_criterion: float


_GRAD_THETA_MIN = 1e-6  # see LmerDevfun.profiled_grad


class LmerDevfun:
    """d(θ) or d_R(θ) for fixed model terms: lme4's `devfun` (setTheta → updateDecomp → solve →
    Laplace). Calling it is a pure function of θ; `state(θ)` returns the full PLS solution."""

    def __init__(self, terms: MixedTerms, reml: bool) -> None:
        self.terms = terms
        self.reml = bool(reml)
        self.pred = BlockedCore(terms)
        off = np.zeros(terms.n) if terms.offset is None else np.asarray(terms.offset, float)
        self.offset = off
        self.y = np.asarray(terms.y, dtype=float) - off
        w = self.pred.prior_w
        self.ldW = float(np.sum(np.log(w[w > 0])))
        self.lower = lower_bounds(self.pred.reterms)

    def check_theta(self, theta: Any) -> np.ndarray:
        th = np.atleast_1d(np.asarray(theta, dtype=float)).ravel()
        if th.size != self.pred.n_theta:
            raise ArgumentError(
                f"theta must have length {self.pred.n_theta} for this model, got {th.size}", "theta"
            )
        if not np.all(np.isfinite(th)):
            raise ArgumentError("theta must be finite", "theta")
        return th

    def state(self, theta: np.ndarray) -> PLSState:
        pred = self.pred
        kept = pred.kept_state(theta, self.y)  # the gradient at θ solved the system already
        if kept is None:
            pred.update(theta)
            beta, u = pred.solve(self.y)
        else:
            beta, u = kept
        r2 = pred.pwrss(self.y, beta, u)
        ml, rc = profiled_criteria(pred.ldL2, pred.ldRX2, self.ldW, r2, pred.n, pred.p)
        return PLSState(np.array(theta, float), beta, u, r2, pred.ldL2, pred.ldRX2, ml, rc)

    def __call__(self, theta: np.ndarray) -> float:
        st = self.state(theta)
        return st.reml_criterion if self.reml else st.ml_deviance

    def profiled(self, theta: np.ndarray) -> float:
        """The same criterion for the optimizer loop: from `BlockedCore.profile` (one Cholesky of
        the augmented [Z X y] system, PWRSS as its last pivot; no solve, no n-vectors). Agrees
        with `__call__` to rounding; the reported values come from `state`."""
        ld, ldrx, r2 = self.pred.profile(theta, self.y)
        ml, rc = profiled_criteria(ld, ldrx, self.ldW, r2, self.pred.n, self.pred.p)
        return rc if self.reml else ml

    def profiled_grad(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """`profiled` and its analytic gradient (NaN when the model has vector-valued terms).

        Every θ_k of a scalar term scales its ℓ_k columns, so with S_s,k the sums of the
        leading blocks' inverse diagonals (`BlockedCore.profile_gradient_sums`):
            d_R = log|Ω_[ZX]| + (n − p) log r²   ->  ∂_k = (2(ℓ_k − S2_k) − 2(n − p) Sy_k) / θ_k
            d   = log|Ω_[Z]|  + n log r²         ->  ∂_k = (2(ℓ_k − S1_k) − 2n Sy_k) / θ_k
        (log r² = log|Ω_[ZXy]| − log|Ω_[ZX]|). Components with θ_k ≤ _GRAD_THETA_MIN are NaN
        (the optimizer takes a finite difference): the criterion is even in θ_k, so θ_k = 0 is
        always stationary and only a one-sided difference tells whether to leave the bound;
        below that the ratio also loses its precision (ℓ_k − S is O(θ_k²)).
        """
        theta = np.asarray(theta, dtype=float)
        f = self.profiled(theta)
        sums = self.pred.profile_gradient_sums()
        if sums is None:
            return f, np.full(theta.size, np.nan)
        n, p = self.pred.n, self.pred.p
        lev, s1, s2, sy = sums.T
        if self.reml:
            num = 2.0 * (lev - s2) - 2.0 * (n - p) * sy
        else:
            num = 2.0 * (lev - s1) - 2.0 * n * sy
        with np.errstate(divide="ignore", invalid="ignore"):
            g = np.where(theta > _GRAD_THETA_MIN, num / theta, np.nan)
        return f, g

    def curvature_guess(self, theta: np.ndarray) -> np.ndarray | None:
        """A diagonal Hessian guess for the optimizer's first step (all terms scalar):
        (4/θ_k²) Σ_j κ_j² over the levels of term k, κ_j = θ_k² n_j / (1 + θ_k² n_j) with n_j
        the level's weighted Σ z². For one scalar term at its optimum the criterion is
        ℓ log λ + (n − p) log(W + B/λ) in λ = 1 + θ²n, whose curvature in θ is that sum to a
        factor (1 − ℓ/n); with 1e6 rows crossed (1e5 × 5e3 levels) it is within 5% of the true
        diagonal (the former 4ℓ_k/θ_k², κ = 1, was 35% high for ten rows per level). None
        with vector-valued terms or a θ_k on its bound."""
        theta = np.asarray(theta, dtype=float)
        pred = self.pred
        if any(pk != 1 for pk in pred.pk) or np.any(theta <= _GRAD_THETA_MIN):
            return None
        if getattr(self, "_zdiag", None) is None:
            self._zdiag = np.asarray(pred.Z.multiply(pred.Z).T @ pred.prior_w).ravel()
        out = np.empty(theta.size)
        for k in range(theta.size):
            t2n = theta[k] ** 2 * self._zdiag[int(pred.gp[k]) : int(pred.gp[k + 1])]
            out[k] = 4.0 * float(np.sum((t2n / (1.0 + t2n)) ** 2)) / theta[k] ** 2
        return out if np.all(out > 0) else None


def scalar_start(terms: MixedTerms) -> np.ndarray | None:
    """lme4's special start when every term is a scalar (1|f) on its own factor (§1.6)."""
    rts = terms.reterms
    groups = [t.group for t in rts]
    if not all(t.p == 1 and list(t.cnames) == ["(Intercept)"] for t in rts):
        return None
    if len(set(groups)) != len(groups):
        return None
    y = np.asarray(terms.y, dtype=float)
    vk = []
    for t in rts:
        codes = np.asarray(t.codes)
        means = np.bincount(codes, weights=y, minlength=t.n_levels) / np.maximum(
            np.bincount(codes, minlength=t.n_levels), 1
        )
        vk.append(float(np.var(means[codes], ddof=1)))
    ve = float(np.var(y, ddof=1)) - sum(vk)
    if ve <= 0:
        return None
    return np.sqrt(np.array(vk) / ve)


def moment_start(terms: MixedTerms, y: np.ndarray) -> np.ndarray | None:
    """θ from the method of moments (ANOVA / Henderson I) when every term is a scalar (1|f) on
    its own factor and the weights are 1: a start within about 1% of the REML/ML optimum on
    large crossed designs (1e6 rows, 1e5 × 5e3 levels: 0.05%), where each criterion evaluation
    costs a big dense factorization and lme4's start (`scalar_start`, 6% off there) costs
    several more of them. None when the conditions fail or a variance comes out ≤ 0.

    With r the OLS residuals of y (the offset removed) on X, factors k with level counts n_ki
    and cross-tabulated counts m_kl,ij, the within-level sums of squares W_k and the total T
    have the expectations (y = Xβ + Σ_k b_k + e; exact up to the p fitted columns)

        E W_k = Σ_{l≠k} σ_l² (n − Σ_ij m_kl,ij² / n_ki) + σ² (n − G_k)
        E T   = Σ_l σ_l² (n − Σ_i n_li² / n) + σ² (n − 1)

    which are solved for (σ_1², ..., σ_K², σ²); θ_k = σ_k / σ. O(n) work, no factorization.
    """
    rts = terms.reterms
    if not all(t.p == 1 and list(t.cnames) == ["(Intercept)"] for t in rts):
        return None
    if len({t.group for t in rts}) != len(rts):
        return None
    w = getattr(terms, "weights", None)
    if w is not None and not np.all(np.asarray(w, dtype=float) == 1.0):
        return None
    x = np.asarray(terms.X, dtype=float)
    n = x.shape[0]
    y = np.asarray(y, dtype=float)
    r = y - x @ np.linalg.lstsq(x, y, rcond=None)[0] if x.shape[1] else y - y.mean()
    codes = [np.asarray(t.codes, dtype=np.int64) for t in rts]
    counts = [np.bincount(c, minlength=int(t.n_levels)) for c, t in zip(codes, rts, strict=True)]
    k_ = len(rts)
    a = np.zeros((k_ + 1, k_ + 1))
    rhs = np.zeros(k_ + 1)
    rr = float(r @ r)
    for k, c in enumerate(codes):
        nk = counts[k]
        seen = nk > 0
        s = np.bincount(c, weights=r, minlength=nk.size)
        rhs[k] = rr - float(np.sum(s[seen] ** 2 / nk[seen]))
        a[k, k_] = n - np.count_nonzero(seen)
        for m, cm in enumerate(codes):
            if m != k:
                tab = sp.csr_matrix((np.ones(n), (c, cm)), shape=(nk.size, counts[m].size))
                tab.sum_duplicates()
                per_row = np.repeat(nk, np.diff(tab.indptr))
                a[k, m] = n - float(np.sum(tab.data**2 / per_row))
    rhs[k_] = rr - float(r.sum()) ** 2 / n
    for m in range(k_):
        a[k_, m] = n - float(np.sum(counts[m].astype(float) ** 2)) / n
    a[k_, k_] = n - 1.0
    try:
        sig2 = np.linalg.solve(a, rhs)
    except np.linalg.LinAlgError:
        return None
    if not (np.all(np.isfinite(sig2)) and np.all(sig2 > 0)):
        return None
    return np.sqrt(sig2[:k_] / sig2[k_])
