"""MASS's negative.binomial(θ) family (log link, θ known), as glmer and glmer_nb use it: V(μ) =
μ + μ²/θ, MASS's start (mustart = y + (y == 0)/6), and lme4's C++ deviance residuals and aic
(src/glmFamily.cpp negativeBinomialDist). glmer.nb estimates θ by refitting at trial values
(`glmer_nb`); the family itself always has a fixed θ, so it is not in `families.get_family`.
"""

from __future__ import annotations

import numpy as np
from scipy import special

from mixbridge.errors import DataError
from mixbridge.python_impl.families import (
    LINKS,
    Array,
    Family,
    Initialized,
    Link,
    nonnegative,
    y_log_y,
)


class NegativeBinomial(Family):
    """MASS's `negative.binomial(theta)` with the log link: V(μ) = μ + μ²/θ, θ known (glmer.nb
    estimates it by refitting at trial values). `family` is "negative.binomial"; R's family
    name is "Negative Binomial(θ)" (`r_name`). Deviance residuals and aic are lme4's C++
    (src/glmFamily.cpp negativeBinomialDist), which glmer uses for this family."""

    def __init__(self, theta: float, link: Link | None = None) -> None:
        theta = float(theta)
        if not np.isfinite(theta) or theta <= 0:
            raise DataError(
                f"negative.binomial theta must be a positive finite number, got {theta!r}", "theta"
            )
        super().__init__("negative.binomial", LINKS["log"] if link is None else link)
        self.theta = theta

    def __repr__(self) -> str:
        return f"NegativeBinomial(theta={self.theta!r}, link={self.link!r})"

    @property
    def has_dispersion(self) -> bool:
        return False  # the NB variance is fully determined by μ and θ

    @property
    def r_name(self) -> str:
        return f"Negative Binomial({self.theta:.4g})"

    def variance(self, mu: Array) -> Array:
        mu = np.asarray(mu, dtype=float)
        return mu + mu * mu / self.theta

    def validmu(self, mu: Array) -> bool:
        return bool(np.all(np.isfinite(mu)) and np.all(mu > 0))

    def dev_resids(self, y: Array, mu: Array, wt: Array) -> Array:
        th = self.theta
        with np.errstate(divide="ignore", invalid="ignore"):
            return 2.0 * wt * (y_log_y(y, mu) - (y + th) * np.log((y + th) / (mu + th)))

    def aic(self, y: Array, n: Array, mu: Array, wt: Array, dev: float) -> float:
        """lme4's C++ aic: 2 Σ [w (y+θ) log(μ+θ) − y log μ + lgamma(y+1) − θ log θ + lgamma θ
        − lgamma(θ+y)] — the prior weight multiplies only the first term there (MASS's R
        version weights every term; both agree for unit weights)."""
        th = self.theta
        y = np.asarray(y, dtype=float)
        terms = (
            wt * (y + th) * np.log(mu + th)
            - special.xlogy(y, mu)
            + special.gammaln(y + 1.0)
            - th * np.log(th)
            + special.gammaln(th)
            - special.gammaln(th + y)
        )
        return float(2.0 * np.sum(terms))

    def initialize(
        self, y: Array, weights: Array, n_trials: Array | None = None, response: str = "y"
    ) -> Initialized:
        y = nonnegative(y, "negative values not allowed for the negative binomial family", response)
        # MASS: mustart <- y + (y == 0)/6
        mustart = y + (y == 0) / 6.0
        return Initialized(y, np.ones_like(y), np.asarray(weights, dtype=float), mustart)
