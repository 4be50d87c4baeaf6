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
        pred.update(theta)
        beta, u = pred.solve(self.y)
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
        """A diagonal Hessian guess for the optimizer's first step (all terms scalar): 4ℓ_k/θ_k²,
        the curvature of ℓ_k log(1 + θ_k² c) at c θ_k² ≫ 1; well-estimated terms are near it
        (1e6 rows crossed: 0.6–0.95 of the true diagonal). None with vector-valued terms or a
        θ_k on its bound."""
        theta = np.asarray(theta, dtype=float)
        if any(pk != 1 for pk in self.pred.pk) or np.any(theta <= _GRAD_THETA_MIN):
            return None
        return 4.0 * np.asarray(self.pred.nlev, dtype=float) / theta**2


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
