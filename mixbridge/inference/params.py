"""The parameters lme4's profile and confint name and report (`.sig01`, …, `.sigma`, then the
fixed effects), and the map between them and θ (lme4's `Cv_to_Sv` / `Sv_to_Cv`).

Per random-effects term with p coefficients, θ holds the lower triangle of the relative
Cholesky factor Λ_k (column by column); the reported parameters hold the lower triangle of the
matrix with the standard deviations on the diagonal and the correlations below it, in the same
order. For models with a residual scale, the standard deviations are σ·sqrt(diag(Λ_kΛ_k')) and
`.sigma` follows them; for binomial and poisson glmer they are sqrt(diag(Λ_kΛ_k')).
"""

from __future__ import annotations

import math

import numpy as np

from mixbridge.errors import ArgumentError

# glmer families with a scale parameter (lme4's useSc): their profile also has `.sigma`
SCALE_FAMILIES = ("gaussian", "Gamma", "inverse.gaussian")


def has_sigma(model: str, family: str) -> bool:
    """Whether lme4 reports `.sigma` for this model (lmer always; glmer for scale families)."""
    return model == "lmer" or family in SCALE_FAMILIES


def sig_names(n_theta: int, sigma: bool) -> list[str]:
    """lme4's `.sig01`, `.sig02`, … (one per θ), then `.sigma` when the model has a scale."""
    return [f".sig{k + 1:02d}" for k in range(n_theta)] + ([".sigma"] if sigma else [])


def block_sizes(n_theta_per_block: list[int]) -> list[int]:
    """Term sizes p from the number of θ entries per term (p(p+1)/2 each)."""
    out = []
    for m in n_theta_per_block:
        p = int(round((math.sqrt(8 * m + 1) - 1) / 2))
        out.append(p)
    return out


def _lower(p: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of a p×p lower triangle, column by column (R's order)."""
    rows, cols = [], []
    for j in range(p):
        for i in range(j, p):
            rows.append(i)
            cols.append(j)
    return np.array(rows, int), np.array(cols, int)


def theta_to_sv(theta: np.ndarray, sizes: list[int], scale: float = 1.0) -> np.ndarray:
    """lme4's Cv_to_Sv: θ → standard deviations (scaled by `scale`, σ) and correlations."""
    theta = np.asarray(theta, dtype=float)
    out, pos = [], 0
    for p in sizes:
        m = p * (p + 1) // 2
        rows, cols = _lower(p)
        lam = np.zeros((p, p))
        lam[rows, cols] = theta[pos : pos + m]
        cov = scale * scale * (lam @ lam.T)
        sd = np.sqrt(np.diag(cov))
        sv = np.empty(m)
        for k, (i, j) in enumerate(zip(rows, cols, strict=True)):
            if i == j:
                sv[k] = sd[i]
            else:
                denom = sd[i] * sd[j]
                sv[k] = cov[i, j] / denom if denom > 0 else 0.0
        out.append(sv)
        pos += m
    return np.concatenate(out) if out else np.zeros(0)


def sv_to_theta(sv: np.ndarray, sizes: list[int], scale: float = 1.0) -> np.ndarray:
    """lme4's Sv_to_Cv: standard deviations and correlations → θ (relative to `scale`).

    A Cholesky factor that tolerates a zero standard deviation or a ±1 correlation (a singular
    covariance): a non-positive pivot gives a zero column, as the boundary θ of lme4."""
    sv = np.asarray(sv, dtype=float)
    out, pos = [], 0
    for p in sizes:
        m = p * (p + 1) // 2
        rows, cols = _lower(p)
        sd = np.zeros(p)
        cor = np.eye(p)
        for k, (i, j) in enumerate(zip(rows, cols, strict=True)):
            if i == j:
                sd[i] = sv[pos + k]
            else:
                cor[i, j] = cor[j, i] = sv[pos + k]
        cov = cor * np.outer(sd, sd) / (scale * scale)
        lam = _semidefinite_cholesky(cov)
        out.append(lam[rows, cols])
        pos += m
    return np.concatenate(out) if out else np.zeros(0)


def _semidefinite_cholesky(a: np.ndarray) -> np.ndarray:
    p = a.shape[0]
    lam = np.zeros_like(a)
    for j in range(p):
        d = a[j, j] - float(np.dot(lam[j, :j], lam[j, :j]))
        if d <= 1e-300:
            continue  # a zero column: this direction has no variance left
        lam[j, j] = math.sqrt(d)
        for i in range(j + 1, p):
            lam[i, j] = (a[i, j] - float(np.dot(lam[i, :j], lam[j, :j]))) / lam[j, j]
    return lam


def sv_kinds(sizes: list[int]) -> list[str]:
    """ "sd" or "cor" for each entry of the reported variance parameters."""
    kinds: list[str] = []
    for p in sizes:
        rows, cols = _lower(p)
        kinds += ["sd" if i == j else "cor" for i, j in zip(rows, cols, strict=True)]
    return kinds


def select_parm(names: list[str], n_var: int, parm: object) -> list[str]:
    """lme4's `parm`: None (all), "theta_" (the variance parameters), "beta_" (the fixed
    effects), or a list of names and/or 0-based positions."""
    if parm is None:
        return list(names)
    if isinstance(parm, str):
        if parm == "theta_":
            return list(names[:n_var])
        if parm == "beta_":
            return list(names[n_var:])
        parm = [parm]
    try:
        items = list(parm)  # type: ignore[call-overload]
    except TypeError:
        raise ArgumentError(
            f"parm must be None, 'theta_', 'beta_' or a list of names, got {parm!r}", "parm"
        ) from None
    out = []
    for it in items:
        if isinstance(it, (int, np.integer)) and not isinstance(it, bool):
            if not 0 <= int(it) < len(names):
                raise ArgumentError(
                    f"parm position {it} is out of range 0..{len(names) - 1}", "parm"
                )
            out.append(names[int(it)])
        elif isinstance(it, str) and it in names:
            out.append(it)
        else:
            raise ArgumentError(
                f"parm {it!r} is not a parameter of this model (parameters: {', '.join(names)})",
                "parm",
            )
    return out
