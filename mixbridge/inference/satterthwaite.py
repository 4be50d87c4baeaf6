"""Satterthwaite's degrees of freedom for contrasts of β (lmerTest's `contest1D` / `contestMD`).

For a contrast l: var(l'β̂) = l'V l with V = vcov(β̂), g_k = l'J_k l (J = the Jacobian of V in
varpar = (θ, σ), `varpar.varpar_derivatives`), A = 2H⁺ (H = the Hessian of the deviance in
varpar; H⁺ its Moore–Penrose inverse over eigenvalues > 1e-8, as lmerTest) and

    df = 2 (l'V l)² / (g'A g).

Several rows (an F test): lmerTest's eigen decomposition of LVL', one df per direction and
their combination (`fstat_ddf`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from mixbridge.errors import MixbridgeWarning
from mixbridge.inference.varpar import VarparDerivatives

EIGEN_TOL = 1e-8  # lmerTest's as_lmerModLT(tol = 1e-8)
CONTRAST_EPS = math.sqrt(np.finfo(float).eps)  # contestMD's eps


@dataclass(frozen=True)
class Satterthwaite:
    """Everything the Satterthwaite tests need for one fit."""

    beta: np.ndarray
    vcov: np.ndarray  # vcov(β̂) as lme4 reports it
    sigma: float
    vcov_varpar: np.ndarray
    jacobian: np.ndarray

    def test_1d(self, L: np.ndarray) -> tuple[float, float, float]:  # noqa: N803
        """(estimate, std. error, df) of l'β."""
        L = np.asarray(L, dtype=float).ravel()  # noqa: N806
        var = float(L @ self.vcov @ L)
        grad = np.einsum("i,kij,j->k", L, self.jacobian, L)
        denom = float(grad @ self.vcov_varpar @ grad)
        df = 2.0 * var * var / denom if denom > 0 else math.nan
        return float(L @ self.beta), math.sqrt(var), df

    def test_md(self, L: np.ndarray) -> tuple[float, int, float]:  # noqa: N803
        """(F value, numerator df, denominator df) of Lβ = 0 (contestMD)."""
        L = np.atleast_2d(np.asarray(L, dtype=float))  # noqa: N806
        if L.shape[0] == 1:
            est, se, df = self.test_1d(L[0])
            return (est / se) ** 2, 1, df
        vl = L @ self.vcov @ L.T
        d, P = np.linalg.eigh((vl + vl.T) / 2.0)  # noqa: N806
        order = np.argsort(d)[::-1]
        d, P = d[order], P[:, order]  # noqa: N806
        tol = max(CONTRAST_EPS * d[0], 0.0)
        q = int(np.sum(d > tol))
        if q == 0:
            return math.nan, 0, math.nan
        ptl = P[:, :q].T @ L
        if q == 1:
            est, se, df = self.test_1d(ptl[0])
            return (est / se) ** 2, 1, df
        t2 = (ptl @ self.beta) ** 2 / d[:q]
        nu = np.empty(q)
        for m in range(q):
            grad = np.einsum("i,kij,j->k", ptl[m], self.jacobian, ptl[m])
            nu[m] = 2.0 * d[m] ** 2 / float(grad @ self.vcov_varpar @ grad)
        return float(np.sum(t2) / q), q, fstat_ddf(nu)


def fstat_ddf(nu: np.ndarray, tol: float = 1e-8) -> float:
    """The denominator df of an F statistic from the df of its q independent t² parts."""
    nu = np.asarray(nu, dtype=float)
    if nu.size == 1:
        return float(nu[0])
    if np.all(np.abs(np.diff(nu)) < tol):
        return float(np.mean(nu))
    if np.any(nu <= 2):
        return 2.0
    e = float(np.sum(nu / (nu - 2.0)))
    return 2.0 * e / (e - nu.size)


def satterthwaite(
    derivs: VarparDerivatives, beta: np.ndarray, vcov: np.ndarray, sigma: float
) -> Satterthwaite:
    """A = 2H⁺ from the Hessian, warning as lmerTest does on negative or near-zero eigenvalues."""
    h = (derivs.hessian + derivs.hessian.T) / 2.0
    values, vectors = np.linalg.eigh(h)
    neg = values < -EIGEN_TOL
    zero = np.abs(values) <= EIGEN_TOL
    if neg.any():
        shown = " ".join(f"{v:.1e}" for v in values[neg])
        warnings.warn(
            f"Model failed to converge with {int(neg.sum())} negative eigenvalue(s) of the "
            f"deviance's Hessian in (theta, sigma): {shown}",
            MixbridgeWarning,
            stacklevel=3,
        )
    if zero.any():
        shown = " ".join(f"{v:.1e}" for v in values[zero])
        warnings.warn(
            f"Model may not have converged with {int(zero.sum())} eigenvalue(s) of the "
            f"deviance's Hessian close to zero: {shown}",
            MixbridgeWarning,
            stacklevel=3,
        )
    pos = values > EIGEN_TOL
    h_inv = (vectors[:, pos] / values[pos]) @ vectors[:, pos].T
    return Satterthwaite(
        beta=np.asarray(beta, dtype=float),
        vcov=np.asarray(vcov, dtype=float),
        sigma=float(sigma),
        vcov_varpar=2.0 * h_inv,
        jacobian=derivs.jacobian,
    )
