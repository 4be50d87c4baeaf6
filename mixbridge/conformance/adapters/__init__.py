"""Adapters that plug other Python mixed-model implementations in as mixbridge engines.

Adapter protocol (see `mixbridge.engines`): a module or object with any of `lmer`, `glmer`,
`bayesglm`, `lmer_objective`, `glmer_objective`, called with the keyword arguments listed there,
returning `MixedFit` / `BayesGLMFit` with lme4's names and meanings. What a peer cannot do must
raise `ArgumentError` saying so (never a silently different model). Register your own with
`mixbridge.engines.register("name", obj)`; then `engine="name"` works in every fitting call and
its fits go through `mixbridge.compare` like any other.

Built in: "statsmodels" (MixedLM), and "glmm" / "mixedlm" when those PyPI packages are installed
(`pip install 'mixbridge[peers]'`, pinned to the versions the adapters were checked with). They
register themselves, by module path, when this package is imported (`import mixbridge` does):
nothing of a peer is imported until its engine is used.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from mixbridge import engines
from mixbridge.errors import ArgumentError

PEER_ENGINES = ("statsmodels", "glmm", "mixedlm")
for _name in PEER_ENGINES:
    engines.register(_name, f"{__name__}.{_name}_engine")

_BAR = re.compile(r"\(([^()|]*?)(\|\|?)([^()|]+)\)")


def split_formula(formula: str) -> tuple[str, str, list[tuple[str, str, bool]]]:
    """("y", "1 + x", [(re_expr, group, double_bar)]) for `y ~ 1 + x + (re | g)`."""
    if "~" not in formula:
        raise ArgumentError(f"formula {formula!r} has no '~'", "formula")
    lhs, rhs = (s.strip() for s in formula.split("~", 1))
    bars = [(m.group(1).strip(), m.group(3).strip(), m.group(2) == "||") for m in
            _BAR.finditer(rhs)]  # fmt: skip
    fixed = _BAR.sub("", rhs)
    fixed = re.sub(r"\+\s*\+", "+", fixed)
    fixed = fixed.strip().strip("+").strip() or "1"
    return lhs, fixed, bars


def r_coef_name(name: str) -> str:
    """patsy/statsmodels names to R's: Intercept -> (Intercept), period[T.2] -> period2,
    C(g)[T.b] -> gb, and the same inside interactions."""
    if name == "Intercept":
        return "(Intercept)"

    def one(part: str) -> str:
        m = re.match(r"^C\((\w+)[^)]*\)\[T\.(.*)\]$", part)
        if m:
            return m.group(1) + m.group(2)
        m = re.match(r"^(.*)\[T\.(.*)\]$", part)
        if m:
            return m.group(1) + m.group(2)
        return part

    return ":".join(one(p) for p in name.split(":"))


def theta_from_cov(cov_unscaled: np.ndarray) -> np.ndarray:
    """lme4's θ (lower Cholesky factor, column-major lower triangle) from Σ/σ²."""
    p = cov_unscaled.shape[0]
    try:
        T = np.linalg.cholesky(cov_unscaled)
    except np.linalg.LinAlgError:  # singular: fall back to an LDL-like square root
        w, v = np.linalg.eigh(cov_unscaled)
        root = v @ np.diag(np.sqrt(np.clip(w, 0, None)))
        _, r = np.linalg.qr(root.T)
        T = r.T * np.sign(np.diag(r))[None, :]
        T = np.nan_to_num(T)
    return np.array([T[i, j] for j in range(p) for i in range(j, p)])


def theta_names(group: str, names: list[str]) -> list[str]:
    out = []
    for j in range(len(names)):
        for i in range(j, len(names)):
            out.append(f"{group}.{names[i]}" if i == j else f"{group}.{names[i]}.{names[j]}")
    return out


def varcorr_frame(group: str, names: list[str], cov: np.ndarray, sigma: float) -> pd.DataFrame:
    """as.data.frame(VarCorr(fit)): variances, then correlations (i < j), then Residual."""
    rows = []
    sd = np.sqrt(np.clip(np.diag(cov), 0, None))
    for i, n in enumerate(names):
        rows.append((group, n, None, cov[i, i], sd[i]))
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            denom = sd[i] * sd[j]
            rows.append((group, names[i], names[j], cov[i, j], cov[i, j] / denom if denom else 0.0))
    rows.append(("Residual", None, None, sigma**2, sigma))
    return pd.DataFrame(rows, columns=["grp", "var1", "var2", "vcov", "sdcor"])
