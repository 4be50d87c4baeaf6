"""Builders for the MixedFit pieces shared by lmer and glmer: names, VarCorr, ranef, condVar,
likelihood summaries. Pure functions of the random-effects terms' labels (`TermLabels`) and the
final estimates.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import pandas as pd

from mixbridge.formula.levels import level_index
from mixbridge.python_impl.pls import theta_layout


class TermLabels(Protocol):
    """What the result needs of a random-effects term: its grouping factor, the factor's level
    labels and the term's column names (`mixbridge.formula.ReTerm`, or the Dask path's)."""

    @property
    def group(self) -> str: ...

    @property
    def levels(self) -> Sequence[str]: ...

    @property
    def cnames(self) -> list[str]: ...

    @property
    def n_levels(self) -> int: ...

    @property
    def p(self) -> int: ...


def make_unique(names: list[str]) -> list[str]:
    """R's make.unique(sep="."): repeated names get .1, .2, ... (Subject, Subject.1)."""
    seen: dict[str, int] = {}
    taken = set(names)
    out = []
    for nm in names:
        if nm not in seen:
            seen[nm] = 0
            out.append(nm)
            continue
        k = seen[nm]
        while True:
            k += 1
            cand = f"{nm}.{k}"
            if cand not in taken:
                break
        seen[nm] = k
        taken.add(cand)
        out.append(cand)
    return out


def theta_names(reterms: list[TermLabels]) -> list[str]:
    """getME(fit, "theta") names: g.name on the diagonal, g.row.col off it."""
    out = []
    for t in reterms:
        r, c = theta_layout(t.p)
        for ri, ci in zip(r, c, strict=True):
            if ri == ci:
                out.append(f"{t.group}.{t.cnames[ri]}")
            else:
                out.append(f"{t.group}.{t.cnames[ri]}.{t.cnames[ci]}")
    return out


def term_covariances(tks: list[np.ndarray], sigma: float) -> list[np.ndarray]:
    """Σ_k = σ² T_k T_k' per term (σ = 1 for families without a scale)."""
    return [sigma**2 * tk @ tk.T for tk in tks]


def varcorr_frame(
    reterms: list[TermLabels], tks: list[np.ndarray], sigma: float | None
) -> pd.DataFrame:
    """as.data.frame(VarCorr(fit)): per term its variances, then its covariances in lower-
    triangle column-major order; a final "Residual" row when the family has a scale (sigma)."""
    rows = []
    grps = make_unique([t.group for t in reterms])
    s = 1.0 if sigma is None else sigma
    for t, g, cov in zip(reterms, grps, term_covariances(tks, s), strict=True):
        sd = np.sqrt(np.diag(cov))
        for i in range(t.p):
            rows.append((g, t.cnames[i], None, cov[i, i], sd[i]))
        for j in range(t.p):
            for i in range(j + 1, t.p):
                den = sd[i] * sd[j]
                corr = cov[i, j] / den if den > 0 else np.nan
                rows.append((g, t.cnames[j], t.cnames[i], cov[i, j], corr))
    if sigma is not None:
        rows.append(("Residual", None, None, sigma**2, sigma))
    return pd.DataFrame(rows, columns=["grp", "var1", "var2", "vcov", "sdcor"])


def factor_terms(reterms: list[TermLabels]) -> dict[str, list[int]]:
    """Grouping factor -> indices of its terms, factors in order of first appearance (flist)."""
    out: dict[str, list[int]] = {}
    for k, t in enumerate(reterms):
        out.setdefault(t.group, []).append(k)
    return out


def ranef_frames(
    reterms: list[TermLabels], b: np.ndarray, gp: np.ndarray
) -> dict[str, pd.DataFrame]:
    """ranef(fit): one frame per grouping factor, rows = levels, columns = terms' coefficients
    (several terms on one factor side by side, in term order)."""
    out = {}
    for g, idx in factor_terms(reterms).items():
        parts = []
        for k in idx:
            t = reterms[k]
            blk = b[gp[k] : gp[k + 1]].reshape(t.n_levels, t.p)
            parts.append(pd.DataFrame(blk, columns=list(t.cnames)))
        frame = parts[0] if len(parts) == 1 else pd.concat(parts, axis=1)
        frame.index = level_index(reterms[idx[0]].levels)
        out[g] = frame
    return out


def ngroups(reterms: list[TermLabels]) -> dict[str, int]:
    return {g: int(reterms[idx[0]].n_levels) for g, idx in factor_terms(reterms).items()}


def likelihood_summary(criterion: float, n: int, df: int) -> dict[str, float]:
    """logLik = −criterion/2, AIC = −2logLik + 2df, BIC = −2logLik + df·log(n)."""
    loglik = -criterion / 2.0
    return {
        "loglik": loglik,
        "aic": -2.0 * loglik + 2.0 * df,
        "bic": -2.0 * loglik + df * math.log(n),
    }


def versions() -> dict[str, str]:
    import scipy

    import mixbridge

    return {
        "mixbridge": getattr(mixbridge, "__version__", "0.1.0"),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "python": platform.python_version(),
    }
