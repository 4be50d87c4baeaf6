"""Shared mapping for the PyPI peers `glmm` and `mixedlm` onto lme4's MixedFit.

Both peers are optional (`pip install mixbridge[peers]`). Each adapter reads its peer's own result
fields (named in the adapter's docstring) and this module turns them into lme4's conventions:

- one random-effects term `(re | g)` with numeric slope columns (what the adapters accept);
- rows: the formula's columns with NA dropped (lme4's na.omit on the model frame, not the whole
  data frame);
- θ: the lower Cholesky factor of Σ/σ² (Σ for glmer) in lme4's column-major order, rebuilt from
  the peer's covariance matrix (peers order their own θ differently);
- cond_var: neither peer reports lme4's full conditional covariance blocks, so they are computed
  from the peer's own Σ, σ (and, for glmer, its fitted means) as lme4 does:
  Var(b_j | y) = σ² Λ (Λ' Z_j' W Z_j Λ + I)⁻¹ Λ' (β held at its estimate, W the final IRLS weights;
  W = 1 for lmer).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mixbridge.conformance.adapters import (
    split_formula,
    theta_from_cov,
    theta_names,
    varcorr_frame,
)
from mixbridge.errors import ArgumentError, DataError
from mixbridge.results import Message, MixedFit


def require(package: str, engine: str) -> Any:
    try:
        return importlib.import_module(package)
    except ImportError as exc:
        raise ArgumentError(
            f"engine {engine!r} needs the PyPI package {package!r}, which is not installed "
            f"({exc}); install it with: pip install 'mixbridge[peers]'",
            "engine",
        ) from exc


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def r_name(name: str, factor_levels: dict[str, list[str]] | None = None) -> str:
    """Peer coefficient names to R's: Intercept -> (Intercept); `period.1` (mixedlm: the k-th
    non-baseline level, 1-based) -> `period2` from the data's levels; `period[T.2]` -> `period2`;
    the same inside interactions (`a.1:x`)."""
    if name.lower() in ("intercept", "(intercept)"):
        return "(Intercept)"

    def one(part: str) -> str:
        m = re.match(r"^(.*)\[T\.(.*)\]$", part)
        if m:
            return m.group(1) + m.group(2)
        m = re.match(r"^(.+)\.(\d+)$", part)
        if m and factor_levels and m.group(1) in factor_levels:
            levels = factor_levels[m.group(1)]  # levels[0] is the baseline; .1 is the 2nd level
            k = int(m.group(2))
            if 0 < k < len(levels):
                return m.group(1) + levels[k]
        return part

    return ":".join(one(p) for p in name.split(":"))


def factor_levels(frame: pd.DataFrame) -> dict[str, list[str]]:
    """Levels of every non-numeric column, in R's order (categories, else sorted values)."""
    return {
        c: [str(x) for x in pd.Categorical(frame[c]).remove_unused_categories().categories]
        for c in frame.columns
        if not pd.api.types.is_numeric_dtype(frame[c])
    }


@dataclass
class Spec:
    """A one-term mixed model as the adapters accept it, and the rows it is fitted on."""

    formula: str
    lhs: str
    fixed: str
    group: str
    re_names: list[str]  # lme4's names of the random-effect columns: (Intercept), slopes
    frame: pd.DataFrame  # formula columns, NA rows dropped
    levels: list[str]  # grouping levels in R's order
    codes: np.ndarray  # row -> level index
    Z: np.ndarray  # n x q random-effect design (the same for every level)


def spec(formula: str, data: pd.DataFrame, engine: str, weights: Any, offset: Any) -> Spec:
    """Parse `y ~ fixed + (re | g)` and prepare the rows; anything else is an ArgumentError."""
    if weights is not None or offset is not None:
        raise ArgumentError(f"engine {engine!r} adapter maps no weights or offset", "engine")
    lhs, fixed, bars = split_formula(formula)
    if len(bars) != 1:
        raise ArgumentError(
            f"engine {engine!r} adapter maps exactly one random-effects term, got {len(bars)} "
            f"in {formula!r}",
            "engine",
        )
    re_expr, group, double = bars[0]
    if double or "/" in group or ":" in group:
        raise ArgumentError(
            f"engine {engine!r} adapter maps one correlated term (re | g), not {formula!r}",
            "engine",
        )
    parts = [p.strip() for p in re_expr.split("+") if p.strip()]
    intercept = not ({"0", "-1"} & set(parts))
    slopes = [p for p in parts if p not in ("0", "1", "-1")]
    # lme4's rows: complete cases of the formula's variables (words in the formula that are columns)
    words = set(re.findall(r"[A-Za-z_.][A-Za-z0-9_.]*", formula))
    used = [c for c in data.columns if str(c) in words]
    for col in [group, *slopes]:
        if col not in data.columns:
            raise DataError(f"column {col!r} of the random-effects term is not in data", col)
    frame = data[used].dropna().reset_index(drop=True)
    if frame.empty:
        raise DataError("no complete rows for the formula's columns", "data")
    for s in slopes:
        if not pd.api.types.is_numeric_dtype(frame[s]):
            raise ArgumentError(
                f"engine {engine!r} adapter maps numeric random slopes only; {s!r} is not numeric",
                s,
            )
    cat = pd.Categorical(frame[group]).remove_unused_categories()
    cols = ([np.ones(len(frame))] if intercept else []) + [
        frame[s].to_numpy(dtype=float) for s in slopes
    ]
    return Spec(
        formula=formula,
        lhs=lhs,
        fixed=fixed,
        group=group,
        re_names=(["(Intercept)"] if intercept else []) + slopes,
        frame=frame,
        levels=[str(x) for x in cat.categories],
        codes=np.asarray(cat.codes, dtype=np.int64),
        Z=np.column_stack(cols),
    )


def cond_var_blocks(s: Spec, cov_re: np.ndarray, sigma: float, w: np.ndarray) -> np.ndarray:
    """lme4's condVar blocks, levels x q x q, from Σ, σ and the working weights w (lmer: 1)."""
    q = cov_re.shape[0]
    th = theta_from_cov(cov_re / sigma**2)
    lam = np.zeros((q, q))
    k = 0
    for j in range(q):  # θ is column-major lower triangle
        for i in range(j, q):
            lam[i, j] = th[k]
            k += 1
    out = np.empty((len(s.levels), q, q))
    for lv in range(len(s.levels)):
        rows = s.codes == lv
        zj = s.Z[rows] * np.sqrt(w[rows])[:, None]
        a = lam.T @ (zj.T @ zj) @ lam + np.eye(q)
        out[lv] = sigma**2 * lam @ np.linalg.solve(a, lam.T)
    return out


def mixed_fit(
    s: Spec,
    *,
    model: str,
    family: str,
    link: str,
    reml: bool,
    engine: str,
    fixef: pd.Series,
    vcov: np.ndarray,
    cov_re: np.ndarray,
    sigma: float,
    ranef: pd.DataFrame,
    cond_var: np.ndarray,
    loglik: float,
    fitted: np.ndarray,
    converged: bool,
    singular: bool,
    messages: list[Message],
    dropped_columns: list[str] | None = None,
    objective: Any = None,
    optimizer: dict[str, Any] | None = None,
) -> MixedFit:
    """Assemble a MixedFit with lme4's derived quantities (df, AIC, BIC, θ, varcorr)."""
    n = len(s.frame)
    # glmer: Σ is on the linear-predictor scale, θ = chol(Σ) (lme4 keeps σ = 1 there)
    scale = sigma if model == "lmer" else 1.0
    theta = theta_from_cov(cov_re / scale**2)
    # lme4's logLik df: β, θ, and σ for families with a scale
    df = len(fixef) + len(theta) + (1 if model == "lmer" else 0)
    names = list(fixef.index)
    y = s.frame[s.lhs].to_numpy(dtype=float) if s.lhs in s.frame.columns else None
    fit = MixedFit(
        model=model, formula=s.formula, family=family, link=link, reml=reml,
        fixef=fixef, vcov=pd.DataFrame(vcov, index=names, columns=names), theta=theta,
        theta_names=theta_names(s.group, s.re_names),
        varcorr=varcorr_frame(s.group, s.re_names, cov_re, sigma)
        if model == "lmer" else varcorr_frame(s.group, s.re_names, cov_re, 1.0).iloc[:-1],
        sigma=float(sigma), ranef={s.group: ranef}, cond_var={s.group: cond_var},
        loglik=float(loglik), df=df,
        # lmer REML: lme4's deviance is the ML deviance at the REML estimates, which the peers
        # do not report; glmer: lme4's conditional deviance, which they do not report either
        deviance=-2.0 * loglik if (model == "lmer" and not reml) else math.nan,
        reml_criterion=-2.0 * loglik if reml else None,
        aic=-2.0 * loglik + 2 * df, bic=-2.0 * loglik + df * math.log(n), nobs=n,
        ngroups={s.group: len(s.levels)}, fitted=np.asarray(fitted, dtype=float),
        residuals=(y - fitted) if (y is not None and model == "lmer") else np.full(n, math.nan),
        singular=bool(singular), converged=bool(converged), messages=messages, engine=engine,
        versions={engine: version(engine)}, optimizer=dict(optimizer or {}),
        dropped_columns=list(dropped_columns or []),
    )  # fmt: skip
    return fit.attach(objective=objective)


def warning_messages(caught: list[Any], engine: str) -> list[Message]:
    return [
        Message("warning", str(w.message), engine, code=type(w.message).__name__) for w in caught
    ]
