"""The PLS pieces of the profile for a model whose only random term is `(1|g)`: from the group
statistics of one data pass (`lmm_scalar`), so every deviance the profile evaluates costs O(G)
instead of a pass over the rows (1e6 rows: the whole profile in about a second)."""

from __future__ import annotations

import math
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np

from mixbridge.python_impl.lmm_scalar import scalar_ri_profile_pieces
from mixbridge.python_impl.pls import select_core
from mixbridge.python_impl.pls_diagonal import DiagonalCore


class ScalarPieces:
    """log|L_θ|², pwrss(θ), β̂(θ) and (R_X'R_X)⁻¹(θ) of `y ~ X + (1|g)` from group sums."""

    def __init__(self, core: DiagonalCore, terms: Any) -> None:
        y = np.asarray(terms.y, dtype=float)
        if terms.offset is not None:
            y = y - np.asarray(terms.offset, dtype=float)
        w = None if terms.weights is None else np.asarray(terms.weights, dtype=float)
        if w is not None and np.all(w == 1.0):
            w = None
        self.stats = core.group_stats(y, w)
        self.n = int(self.stats.n)
        self.ldW = float(self.stats.ldW)
        self.theta_lower = np.zeros(1)

    def ml_estimates(self, fit: Any) -> Any:
        """The ML estimates (lme4's refitML) from the same group sums: θ̂, σ̂, β̂ and the SEs,
        as the attributes the profile reads (no second pass over the rows)."""
        import pandas as pd

        from mixbridge.python_impl.lmm_scalar import scalar_ri_fit

        res = scalar_ri_fit(self.stats, False)
        names = list(fit.fixef.index)
        se = np.sqrt(np.diag(np.asarray(res.vcov_unscaled))) * res.sigma
        return SimpleNamespace(
            theta=np.array([res.theta]), sigma=float(res.sigma),
            fixef=pd.Series(np.asarray(res.beta, float), index=names),
            fixef_se=pd.Series(se, index=names),
        )  # fmt: skip

    def basic(self, theta: np.ndarray) -> tuple[float, float]:
        ld, r2, _, _ = scalar_ri_profile_pieces(float(np.ravel(theta)[0]), self.stats)
        return ld, r2

    def fixed_dev(self, j: int) -> Callable[[np.ndarray, float], float]:
        """dev(θ, b) with β_j = b: β_{-j} (and u, σ) profiled out in closed form,
        pwrss_j = pwrss + (b − β̂_j(θ))² / [(R_X'R_X)⁻¹]_jj."""
        n, ldW = self.n, self.ldW

        def dev(theta: np.ndarray, b: float) -> float:
            ld, r2, beta, v = scalar_ri_profile_pieces(
                float(np.ravel(theta)[0]), self.stats, full=True
            )
            if beta is None or v is None:
                return math.inf
            r2j = r2 + (b - beta[j]) ** 2 / v[j, j]
            return ld - ldW + n * (1.0 + math.log(2.0 * math.pi * r2j / n))

        return dev


def scalar_pieces(terms: Any) -> ScalarPieces | None:
    """ScalarPieces when the model's random part is one (1|g) (the diagonal core), else None."""
    core = select_core(terms, weights_vary=False)
    if not isinstance(core, DiagonalCore):
        return None
    return ScalarPieces(core, terms)
