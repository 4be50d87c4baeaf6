"""Fits as JSON-ready data: schema "mixbridge.fit/1" (`fit.to_dict()`, `mixbridge fit --json`).

The schema is stable: keys are only ever added under a new schema version. Conventions:

- labelled vectors (fixef, fixef_se, theta, coef, se, ...) are objects keyed by R's names, in
  R's order; matrices are {"names": [...], "values": [[row], ...]} (row-major);
- ranef: {factor: {"levels": [...], "terms": [...], "values": [[one row per level]]}};
  cond_var: {factor: [levels x terms x terms]};
- varcorr: a list of rows {grp, var1, var2, vcov, sdcor} as `as.data.frame(VarCorr(fit))`;
- numbers that are not finite: NaN and missing values are null, ±∞ are the strings "Inf"
  and "-Inf" (JSON has no such numbers);
- per-row vectors (fitted values, residuals) only with `rows=True`.

The keys of each kind are listed in MIXED_KEYS / BAYESGLM_KEYS (and in README).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from mixbridge.results import BayesGLMFit, MixedFit

SCHEMA = "mixbridge.fit/1"
MIXED_KEYS = (
    "schema", "kind", "model", "formula", "family", "link", "reml", "nagq", "engine",
    "nobs", "ngroups", "converged", "singular", "fixef", "fixef_se", "vcov", "theta", "sigma",
    "varcorr", "ranef", "cond_var", "loglik", "df", "deviance", "reml_criterion", "aic", "bic",
    "criterion", "dropped_columns", "messages", "versions",
)  # fmt: skip
BAYESGLM_KEYS = (
    "schema", "kind", "model", "formula", "family", "link", "engine", "nobs", "converged",
    "iterations", "coef", "se", "se_display", "vcov", "dispersion", "dispersion_pearson",
    "deviance", "null_deviance", "aic", "df_residual", "prior", "messages", "versions",
)  # fmt: skip
ROW_KEYS = {"mixed": ("fitted", "residuals"), "bayesglm": ("fitted",)}


def number(x: Any) -> float | str | None:
    """A JSON number: NaN/None -> null, ±inf -> "Inf"/"-Inf"."""
    if x is None:
        return None
    v = float(x)
    if math.isnan(v):
        return None
    if math.isinf(v):
        return "Inf" if v > 0 else "-Inf"
    return v


def _numbers(values: Any) -> list[Any]:
    return [number(v) for v in np.asarray(values, dtype=float).ravel()]


def _named(series: pd.Series) -> dict[str, Any]:
    return {str(k): number(v) for k, v in series.items()}


def _matrix(frame: pd.DataFrame) -> dict[str, Any]:
    return {
        "names": [str(c) for c in frame.columns],
        "values": [[number(v) for v in row] for row in frame.to_numpy(dtype=float)],
    }


def _text(x: Any) -> str | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else str(x)


def mixed_fit_dict(fit: MixedFit, rows: bool = False) -> dict[str, Any]:
    """A MixedFit as schema "mixbridge.fit/1" data (see the module docstring)."""
    ranef = {
        str(factor): {
            "levels": [str(x) for x in frame.index],
            "terms": [str(c) for c in frame.columns],
            "values": [[number(v) for v in row] for row in frame.to_numpy(dtype=float)],
        }
        for factor, frame in fit.ranef.items()
    }
    cond_var = {
        str(factor): np.vectorize(number, otypes=[object])(np.asarray(arr, dtype=float)).tolist()
        for factor, arr in fit.cond_var.items()
    }
    varcorr = [
        {"grp": _text(r["grp"]), "var1": _text(r["var1"]), "var2": _text(r.get("var2")),
         "vcov": number(r["vcov"]), "sdcor": number(r["sdcor"])}
        for _, r in fit.varcorr.iterrows()
    ]  # fmt: skip
    out: dict[str, Any] = {
        "schema": SCHEMA,
        "kind": "mixed",
        "model": fit.model,
        "formula": fit.formula,
        "family": fit.family,
        "link": fit.link,
        "reml": bool(fit.reml),
        "nagq": int(fit.nagq),
        "engine": str(fit.engine),
        "nobs": int(fit.nobs),
        "ngroups": {str(k): int(v) for k, v in fit.ngroups.items()},
        "converged": bool(fit.converged),
        "singular": bool(fit.singular),
        "fixef": _named(fit.fixef),
        "fixef_se": _named(fit.fixef_se),
        "vcov": _matrix(fit.vcov),
        "theta": {
            str(n): number(v)
            for n, v in zip(
                fit.theta_names or [f"theta[{i}]" for i in range(len(fit.theta))],
                np.asarray(fit.theta, dtype=float),
                strict=True,
            )
        },
        "sigma": number(fit.sigma),
        "varcorr": varcorr,
        "ranef": ranef,
        "cond_var": cond_var,
        "loglik": number(fit.loglik),
        "df": int(fit.df),
        "deviance": number(fit.deviance),
        "reml_criterion": number(fit.reml_criterion),
        "aic": number(fit.aic),
        "bic": number(fit.bic),
        "criterion": number(fit.criterion),
        "dropped_columns": [str(c) for c in fit.dropped_columns],
        "messages": [m.to_dict() for m in fit.messages],
        "versions": {str(k): str(v) for k, v in fit.versions.items()},
    }
    if rows:
        out["fitted"] = _numbers(fit.fitted)
        out["residuals"] = _numbers(fit.residuals)
    return out


def bayesglm_fit_dict(fit: BayesGLMFit, rows: bool = False) -> dict[str, Any]:
    """A BayesGLMFit as schema "mixbridge.fit/1" data (see the module docstring)."""
    out: dict[str, Any] = {
        "schema": SCHEMA,
        "kind": "bayesglm",
        "model": "bayesglm",
        "formula": fit.formula,
        "family": fit.family,
        "link": fit.link,
        "engine": str(fit.engine),
        "nobs": int(fit.nobs),
        "converged": bool(fit.converged),
        "iterations": int(fit.iterations),
        "coef": _named(fit.coef),
        "se": _named(fit.se),
        "se_display": _named(fit.se_display),
        "vcov": _matrix(fit.vcov),
        "dispersion": number(fit.dispersion),
        "dispersion_pearson": number(fit.dispersion_pearson),
        "deviance": number(fit.deviance),
        "null_deviance": number(fit.null_deviance),
        "aic": number(fit.aic),
        "df_residual": int(fit.df_residual),
        "prior": {
            "mean": _numbers(fit.prior_mean),
            "scale": _numbers(fit.prior_scale),
            "df": _numbers(fit.prior_df),
            "sd": _numbers(fit.prior_sd),
        },
        "messages": [m.to_dict() for m in fit.messages],
        "versions": {str(k): str(v) for k, v in fit.versions.items()},
    }
    if rows:
        out["fitted"] = _numbers(fit.fitted)
    return out
