"""The one-way shrinkage identity recomputed from a mixed fit (background.md, bayesglm_spec §12).

For `y ~ 1 + (1|g)` (lmer) the conditional mode of each group mean is
    mu + rho_j (ybar_j - mu),   rho_j = tau^2 / (tau^2 + sigma^2 / n_j),
and lme4's condVar is sigma^2 theta^2 / (1 + theta^2 n_j). Both n_j and ybar_j can therefore be
recovered from the fit alone (ranef and cond_var), which lets checks recompute the closed form at
another dispersion without the data.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def one_way_pieces(mixed: Any) -> dict[str, Any]:
    """mu, tau, sigma, levels, b_j, n_j, ybar_j of a one-way random-intercept fit."""
    if len(mixed.ranef) != 1:
        raise ValueError("the shrinkage identity needs exactly one grouping factor")
    factor, frame = next(iter(mixed.ranef.items()))
    if list(frame.columns) != ["(Intercept)"]:
        raise ValueError(f"the shrinkage identity needs a scalar (1|{factor}) term")
    if list(mixed.fixef.index) != ["(Intercept)"]:
        raise ValueError("the shrinkage identity needs an intercept-only fixed part (y ~ 1 + ...)")
    mu = float(mixed.fixef["(Intercept)"])
    vc = mixed.varcorr
    tau = float(vc.loc[vc["grp"] == factor, "sdcor"].iloc[0])
    sigma = float(mixed.sigma)
    b = frame["(Intercept)"].to_numpy(dtype=float)
    cv = np.asarray(mixed.cond_var[factor], dtype=float).reshape(len(b), -1)[:, 0]
    # cond_var_j = sigma^2 tau^2 / (sigma^2 + tau^2 n_j)  =>  n_j = sigma^2 / cv_j - sigma^2 / tau^2
    n = sigma**2 / cv - sigma**2 / tau**2
    rho = tau**2 / (tau**2 + sigma**2 / n)
    return {
        "factor": factor,
        "levels": [str(x) for x in frame.index],
        "mu": mu,
        "tau": tau,
        "sigma": sigma,
        "ranef": b,
        "n": n,
        "ybar": mu + b / rho,
    }


def closed_form_group_means(pieces: dict[str, Any], dispersion: float | None = None) -> np.ndarray:
    """mu + rho_j (ybar_j - mu) with rho_j at `dispersion` (default: the fit's sigma^2)."""
    phi = pieces["sigma"] ** 2 if dispersion is None else float(dispersion)
    tau2 = pieces["tau"] ** 2
    rho = tau2 / (tau2 + phi / pieces["n"])
    return pieces["mu"] + rho * (pieces["ybar"] - pieces["mu"])


def level_names(coef_names: list[str], levels: list[str], factor: str) -> dict[str, str]:
    """Map each level to its coefficient name in a `~ 0 + g` / `~ 0 + factor(g)` fit."""
    for prefix in (f"factor({factor})", factor, ""):
        mapping = {lv: prefix + lv for lv in levels}
        if all(name in coef_names for name in mapping.values()):
            return mapping
    raise KeyError(
        f"cannot match bayesglm coefficients {coef_names[:4]}... to the levels of {factor!r}"
    )
