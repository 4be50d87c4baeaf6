"""lmer's deviance as a function of varpar = (θ, σ) and its derivatives at the fit's estimates
(what lmerTest's `as_lmerModLT` differentiates numerically with numDeriv).

    D(θ, σ) = f(θ) + r(θ)/σ² + m·log(2πσ²)
    f = log|L_θ|² (+ log|R_X|² for REML),  r = the penalized weighted RSS at θ,
    m = n (ML) or n − p (REML)

is lmerTest's `devfun_vp` (up to the constant −log|W| of prior weights). Its σ-dependence is
explicit, so every σ-derivative is analytic; only f, r and the unscaled covariance
C(θ) = (R_X'R_X)⁻¹ are differentiated in θ, by central differences on a geometric ladder of
steps with Richardson extrapolation (error O(h¹⁰) at the ladder's end, against numDeriv's
O(h⁸) on the whole D with steps 10⁻⁴·|x|: our differences are at least as exact).

A `DevianceModel` gives f, r and C at any θ; `lmer_deviance_model` builds one from a fit's
deviance function (any random-effects structure) and `scalar_deviance_model` from the O(G)
group statistics of `(1|g)` (no pass over the rows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class ThetaPieces:
    """f(θ), r(θ) and C(θ) (see the module docstring)."""

    log_det: float
    pwrss: float
    cov_unscaled: np.ndarray


class DevianceModel(Protocol):
    """The θ-dependent pieces of lmer's deviance for one model (n rows, p fixed effects)."""

    n: int
    p: int
    reml: bool

    def pieces(self, theta: np.ndarray) -> ThetaPieces: ...


@dataclass(frozen=True)
class VarparDerivatives:
    """At varpar = (θ̂, σ̂): the Hessian of D, and the Jacobian of vcov(β) = σ²C(θ) as a
    (k, p, p) array (k = len(θ) + 1, σ last), lmerTest's `Jac_list`."""

    varpar: np.ndarray
    hessian: np.ndarray
    jacobian: np.ndarray


# Richardson ladder: first step STEP_REL·max(|θ_i|, STEP_FLOOR), halved LEVELS − 1 times.
STEP_REL = 0.02
STEP_FLOOR = 0.1
LEVELS = 5


def _richardson(values: list[np.ndarray]) -> np.ndarray:
    """Extrapolate central differences at steps h, h/2, h/4, … (errors in even powers of h)."""
    table = list(values)
    for k in range(1, len(table)):
        factor = 4.0**k
        table = [(factor * table[i + 1] - table[i]) / (factor - 1.0) for i in range(len(table) - 1)]
    return table[0]


def theta_derivatives(
    fun: callable, x: np.ndarray, levels: int = LEVELS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Value (m,), gradient (k, m) and Hessian (k, k, m) of a vector-valued smooth `fun` at x."""
    x = np.asarray(x, dtype=float)
    k = x.size
    f0 = np.asarray(fun(x), dtype=float)
    base = STEP_REL * np.maximum(np.abs(x), STEP_FLOOR)
    grad = np.empty((k, f0.size))
    hess = np.empty((k, k, f0.size))
    cache: dict[tuple[float, ...], np.ndarray] = {}

    def at(step: np.ndarray) -> np.ndarray:
        key = tuple(step)
        if key not in cache:
            cache[key] = np.asarray(fun(x + step), dtype=float)
        return cache[key]

    for i in range(k):
        d1, d2 = [], []
        for level in range(levels):
            h = base[i] / 2.0**level
            e = np.zeros(k)
            e[i] = h
            fp, fm = at(e), at(-e)
            d1.append((fp - fm) / (2.0 * h))
            d2.append((fp - 2.0 * f0 + fm) / (h * h))
        grad[i] = _richardson(d1)
        hess[i, i] = _richardson(d2)
    for i in range(k):
        for j in range(i + 1, k):
            dij = []
            for level in range(levels):
                hi, hj = base[i] / 2.0**level, base[j] / 2.0**level
                ei, ej = np.zeros(k), np.zeros(k)
                ei[i], ej[j] = hi, hj
                val = (at(ei + ej) - at(ei - ej) - at(ej - ei) + at(-ei - ej)) / (4.0 * hi * hj)
                dij.append(val)
            hess[i, j] = hess[j, i] = _richardson(dij)
    return f0, grad, hess


def varpar_derivatives(model: DevianceModel, theta: np.ndarray, sigma: float) -> VarparDerivatives:
    """The Hessian of D(θ, σ) and the Jacobian of σ²C(θ) at (θ, σ) (module docstring)."""
    theta = np.asarray(theta, dtype=float).ravel()
    p = model.p
    m = model.n - p if model.reml else model.n

    def pack(th: np.ndarray) -> np.ndarray:
        pc = model.pieces(th)
        return np.concatenate([[pc.log_det, pc.pwrss], np.asarray(pc.cov_unscaled).ravel()])

    v0, g, h = theta_derivatives(pack, theta)
    k = theta.size
    s2 = sigma * sigma
    r0 = v0[1]
    hess = np.empty((k + 1, k + 1))
    hess[:k, :k] = h[:, :, 0] + h[:, :, 1] / s2
    hess[:k, k] = hess[k, :k] = -2.0 * g[:, 1] / (s2 * sigma)
    hess[k, k] = 6.0 * r0 / (s2 * s2) - 2.0 * m / s2
    cov = v0[2:].reshape(p, p)
    jac = np.empty((k + 1, p, p))
    jac[:k] = s2 * g[:, 2:].reshape(k, p, p)
    jac[k] = 2.0 * sigma * cov
    jac = (jac + np.swapaxes(jac, 1, 2)) / 2.0
    return VarparDerivatives(np.append(theta, sigma), hess, jac)


# ---------------------------------------------------------------------------------------------
# Deviance models


class LmerDevianceModel:
    """f, r, C from lme4's PLS at any θ (`LmerDevfun.state`): any random-effects structure."""

    def __init__(self, devfun: object) -> None:
        self.devfun = devfun
        pred = devfun.pred  # type: ignore[attr-defined]
        self.n, self.p = int(pred.n), int(pred.p)
        self.reml = bool(devfun.reml)  # type: ignore[attr-defined]

    def pieces(self, theta: np.ndarray) -> ThetaPieces:
        st = self.devfun.state(np.asarray(theta, dtype=float))  # type: ignore[attr-defined]
        log_det = st.ldL2 + (st.ldRX2 if self.reml else 0.0)
        return ThetaPieces(log_det, st.pwrss, self.devfun.pred.rx_inverse())  # type: ignore[attr-defined]


class ScalarDevianceModel:
    """f, r, C of `y ~ X + (1|g)` from the O(G) group statistics (`lmm_scalar`)."""

    def __init__(self, stats: object, reml: bool) -> None:
        self.stats = stats
        self.n, self.p = int(stats.n), int(stats.p)  # type: ignore[attr-defined]
        self.reml = bool(reml)

    def pieces(self, theta: np.ndarray) -> ThetaPieces:
        from mixbridge.python_impl.lmm_scalar import scalar_ri_pieces

        th = float(np.ravel(theta)[0])
        ldL2, ldRX2, pwrss, cov = scalar_ri_pieces(abs(th), self.stats, self.reml)
        log_det = ldL2 + (ldRX2 if self.reml else 0.0)
        if not math.isfinite(pwrss):
            raise FloatingPointError("the deviance is not finite near the estimates")
        return ThetaPieces(log_det, pwrss, cov)
