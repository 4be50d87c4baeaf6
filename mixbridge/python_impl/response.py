"""The response side of lme4's models: lmer's profiled criterion (`lmerResp::Laplace`) and the
GLM response of glmer (`glmResp`: working weights, working response, deviance residuals, aic).

The response knows no linear algebra (the PLS core knows no family): PIRLS (`pirls`) combines
the two. glmer uses lme4's C++ inverse links and μ'(η) with their clamps, from the one link
table (`families.LINKS`: `lme4_linkinv`, `lme4_mu_eta`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special

from mixbridge.python_impl.families import DBL_EPSILON as EPS
from mixbridge.python_impl.families import Family

# canonical links: μ'(η) = V(μ), so the working weight is w·μ' (the fused (1|g) paths need them)
CANONICAL = {("binomial", "logit"), ("poisson", "log")}


def profiled_criteria(
    ldL2: float, ldRX2: float, ldW: float, pwrss: float, n: int, p: int
) -> tuple[float, float]:
    """(ML deviance d, REML criterion d_R) from the PLS pieces (spec §1.4, lmerResp::Laplace)."""
    two_pi = 2.0 * math.pi
    ml = ldL2 - ldW + n * (1.0 + math.log(two_pi * pwrss / n))
    nmp = n - p
    rc = ldL2 + ldRX2 - ldW + nmp * (1.0 + math.log(two_pi * pwrss / nmp))
    return ml, rc


@dataclass
class GlmResponse:
    """lme4's `glmResp`: the response side of PIRLS (family, y, prior weights, trials, offset).

    `family` is a `mixbridge.python_impl.families.Family` (its name, link and linkfun are used);
    the inverse link, μ'(η) and V(μ) follow lme4's C++ clamps. `n_trials` is the binomial number
    of trials per row (cbind: s+f; 1 otherwise), used by the aic and by simulate.

    Deviance residuals and the aic are split into a part that depends only on the data
    (precomputed once: y log y terms, log-factorials) and a part in log μ — each PIRLS step then
    costs one or two log passes over the data instead of six.
    """

    family: Family
    y: np.ndarray
    weights: np.ndarray
    offset: np.ndarray
    n_trials: np.ndarray

    def __post_init__(self) -> None:
        self.family_name = self.family.family
        self.link = self.family.link
        linkinv, mu_eta = self.family.lme4_linkinv, self.family.lme4_mu_eta
        if linkinv is None or mu_eta is None:
            raise ValueError(f"glmer has no lme4 link {self.link!r}")
        self._linkinv, self._mu_eta = linkinv, mu_eta
        y, w = self.y, self.weights
        self.unit_weights = bool(np.all(w == 1.0))
        if (
            self.family_name == "binomial"
            and self.unit_weights
            and not np.any(self.n_trials > 1)
            and bool(np.all((y == 0.0) | (y == 1.0)))
        ):
            # 0/1 response, unit weights (the common big-data case): every data-only term below
            # is exactly zero (y log y = 0, log choose(1, y) = 0), so skip six O(n) passes
            self._bernoulli = True
            self.dev_const = np.zeros_like(y)
            self._aic_k, self._aic_mk, self._aic_coef = y, 1.0 - y, np.ones_like(y)
            self._aic_const = 0.0
            self.aic_minus_dev = 0.0
            return
        if self.family_name == "binomial":
            self._bernoulli = bool(np.all((y == 0.0) | (y == 1.0)))
            self.dev_const = 2.0 * w * (special.xlogy(y, y) + special.xlogy(1.0 - y, 1.0 - y))
            m = self.n_trials if np.any(self.n_trials > 1) else w
            k = np.round(m * y)
            m = np.round(m)
            coef = np.where(m > 0, w / np.where(m > 0, m, 1.0), 0.0)
            self._aic_k, self._aic_mk, self._aic_coef = k, m - k, coef
            lchoose = special.gammaln(m + 1) - special.gammaln(k + 1) - special.gammaln(m - k + 1)
            self._aic_const = -2.0 * float(np.sum(coef * np.where(m > 0, lchoose, 0.0)))
            # with integer trials and successes aic(μ) − Σ dev(μ) does not depend on μ
            exact = bool(np.all(k == m * y) and np.all(coef * m == w))
        elif self.family_name == "poisson":
            self.dev_const = 2.0 * w * (special.xlogy(y, y) - y)
            self._aic_const = 2.0 * float(np.sum(w * special.gammaln(y + 1.0)))
            exact = True
        elif self.family_name == "negative.binomial":
            # MASS's negative.binomial(θ) with lme4's C++ deviance and aic (families.py); with
            # unit weights aic(μ) − Σ dev(μ) is free of μ, as for poisson
            th = float(self.family.theta)  # type: ignore[attr-defined]
            self.nb_theta = th
            self.dev_const = 2.0 * w * (special.xlogy(y, y) - (y + th) * np.log(y + th))
            exact = self.unit_weights
        else:
            raise ValueError(f"glmer family {self.family_name!r} is not supported")
        # aic(μ) = Σ dev(μ) + aic(y) whenever the binomial counts are integers (always for
        # poisson): the Laplace value then reuses PIRLS's deviance instead of another log pass
        self.aic_minus_dev: float | None = self.aic(np.asarray(y, float)) if exact else None

    def linkinv(self, eta: np.ndarray) -> np.ndarray:
        return self._linkinv(eta)

    def mu_eta(self, eta: np.ndarray, mu: np.ndarray | None = None) -> np.ndarray:
        if mu is not None and self.link == "logit":
            # dlogis(η) = μ(1 − μ); with lme4's clamps both sides floor at ε
            return np.maximum(EPS, mu * (1.0 - mu))
        if mu is not None and self.link == "log":
            return mu  # max(ε, exp(η)) is exactly lme4's μ
        return self._mu_eta(eta)

    def variance(self, mu: np.ndarray) -> np.ndarray:
        if self.family_name == "binomial":
            return np.maximum(EPS, mu * (1.0 - mu))
        if self.family_name == "negative.binomial":
            return mu + mu * mu / self.nb_theta
        return mu

    def working(
        self, eta: np.ndarray, mu: np.ndarray, offset: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """√W_i = μ'(η_i)·√(w_i/V(μ_i)) (lme4's sqrtWrkWt) and the working response
        z = (η − offset) + (y − μ)/μ'(η) (lme4's wrkResp)."""
        me = self.mu_eta(eta, mu)
        if (self.family_name, self.link) in CANONICAL:
            # canonical link: μ'(η) = V(μ) (same clamps), so μ'·√(w/V) = √(w·μ')
            sqrt_w = np.sqrt(me if self.unit_weights else self.weights * me)
        else:
            sqrt_w = me * np.sqrt(self.weights / self.variance(mu))
        return sqrt_w, (eta - offset) + (self.y - mu) / me

    def dev_resids(self, mu: np.ndarray) -> np.ndarray:
        """Deviance residuals (R's binomial/poisson dev.resids); μ may be (K, n) for AGQ."""
        w, y = self.weights, self.y
        if self.family_name == "binomial":
            if self._bernoulli:
                return -2.0 * w * np.log(np.where(y > 0.5, mu, 1.0 - mu))
            return self.dev_const - 2.0 * w * (
                special.xlogy(y, mu) + special.xlogy(1.0 - y, 1.0 - mu)
            )
        if self.family_name == "negative.binomial":
            th = self.nb_theta
            return self.dev_const - 2.0 * w * (special.xlogy(y, mu) - (y + th) * np.log(mu + th))
        return self.dev_const - 2.0 * w * (special.xlogy(y, mu) - mu)

    def aic(self, mu: np.ndarray) -> float:
        """−2 Σ log p(y_i | μ_i) with lme4's conventions (spec §3.6, src/glmFamily.cpp):
        binomial −2 Σ (w/m)·log dbinom(round(m·y), m, μ), m = round(n if any n > 1 else w)
        (rows with m ≤ 0 count 0); poisson −2 Σ w·log dpois(y, μ), with the continuous
        (lgamma) extension for non-integer counts, where R gives −∞ (the engine warns)."""
        if self.family_name == "binomial":
            ll = special.xlogy(self._aic_k, mu) + special.xlogy(self._aic_mk, 1.0 - mu)
            return self._aic_const - 2.0 * float(np.sum(self._aic_coef * ll))
        if self.family_name == "negative.binomial":
            return self.family.aic(self.y, self.n_trials, mu, self.weights, 0.0)
        return self._aic_const - 2.0 * float(
            np.sum(self.weights * (special.xlogy(self.y, mu) - mu))
        )


def saturated_log_lik(resp: GlmResponse) -> float:
    """Σ log p(y_i | μ_i = y_i): the constant lme4 1.1 leaves out of its nAGQ > 1 deviance."""
    return -0.5 * resp.aic(np.asarray(resp.y, dtype=float))
