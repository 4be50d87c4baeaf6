"""Shared test data (not a test module): unbalanced random designs for lmer against lme4, and the
benchmarks' big binomial random-intercept data for glmer."""

from __future__ import annotations

import numpy as np
import pandas as pd


def random_design(seed: int) -> tuple[pd.DataFrame, str]:
    """Unbalanced random designs of varied structure (some near or at the boundary)."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(80, 300))
    ng, nh = int(rng.integers(5, 25)), int(rng.integers(3, 8))
    g = rng.permutation(np.concatenate([np.arange(ng), rng.integers(0, ng, n - ng)]))
    h = rng.permutation(np.concatenate([np.arange(nh), rng.integers(0, nh, n - nh)]))
    x = rng.normal(loc=rng.normal(), scale=rng.uniform(0.5, 3), size=n)
    sd_g, sd_h, sd_x = rng.uniform(0, 2), rng.uniform(0, 1), rng.uniform(0, 0.7)
    y = (
        rng.normal()
        + 0.5 * x
        + rng.normal(scale=sd_g, size=ng)[g]
        + rng.normal(scale=sd_x, size=ng)[g] * x
        + rng.normal(scale=sd_h, size=nh)[h]
        + rng.normal(size=n)
    )
    data = pd.DataFrame({"y": y, "x": x, "g": [f"g{i}" for i in g], "h": [f"h{i}" for i in h]})
    formulas = [
        "y ~ x + (x | g)",
        "y ~ x + (1 | g) + (1 | h)",
        "y ~ x + (x || g) + (1 | h)",
        "y ~ x + (1 | h/g)",
        "y ~ 1 + (x | g) + (1 | h)",
        "y ~ x + (1 | g:h)",
    ]
    return data, formulas[seed % len(formulas)]


def big_binomial(n: int, groups: int, seed: int = 2) -> pd.DataFrame:
    """yb ~ x1 + x2 + (1 | g) data as benchmarks/datasets.glmm_data makes them (logit link,
    τ = 0.8, every group non-empty), g a Categorical with levels "0".."groups-1"."""
    rng = np.random.default_rng(seed)
    g = rng.permutation(np.arange(n) % groups)
    x = rng.normal(size=(2, n))
    eta = -0.5 + 0.7 * x[0] - 0.4 * x[1] + rng.normal(0.0, 0.8, groups)[g]
    y = (rng.uniform(size=n) < 1.0 / (1.0 + np.exp(-eta))).astype(float)
    levels = [str(i) for i in range(groups)]
    return pd.DataFrame(
        {"yb": y, "x1": x[0], "x2": x[1], "g": pd.Categorical.from_codes(g, levels)}
    )
