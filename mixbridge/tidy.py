"""Tidy tables of a mixed-model fit, in broom.mixed's layout (0.2.9), with snake_case columns.

    fit.tidy()                                    # effects=("fixed", "ran_pars")
    fit.tidy(effects="ran_vals", conf_int=True)   # conditional modes with Wald intervals
    fit.glance()                                  # one row: nobs, sigma, loglik, aic, bic, ...

Rows, row order, term names and which columns appear follow broom.mixed's `tidy.merMod` and
`glance.merMod` on a plain lme4 fit (lmerTest not loaded), so a table from any engine lines up
with broom.mixed's row for row:

- fixed: `estimate`, `std_error`, `statistic` (t for lmer, z for glmer); `p_value` only where
  lme4's summary has one (glmer families without a scale: binomial, poisson); no `df`.
- ran_pars: standard deviations and correlations per group in VarCorr's lower-triangle order,
  named `sd__(Intercept)`, `cor__(Intercept).Days`, and `sd__Observation` for the residual.
- ran_vals: conditional modes per grouping factor, term and level, `std_error` the square root of
  the conditional variance.
- conf_int: Wald intervals (lme4's `confint(method = "Wald")`) for fixed effects and conditional
  modes; none for ran_pars (lme4's Wald intervals leave them NA, and so does broom.mixed).
- glance: broom.mixed's names in snake_case as mixbridge's fields spell them: `nobs`, `sigma`,
  `loglik`, `aic`, `bic`, `deviance` (ML fits; REML fits have `reml_criterion` instead, as
  broom.mixed's `REMLcrit`), `df_residual`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import ndtr, ndtri

from mixbridge.errors import ArgumentError
from mixbridge.results import MixedFit

EFFECTS = ("fixed", "ran_pars", "ran_vals")
# broom.mixed's reorder_cols, in snake_case (the columns of a tidy table, in this order)
COLUMNS = (
    "effect",
    "group",
    "level",
    "term",
    "estimate",
    "std_error",
    "statistic",
    "df",
    "p_value",
    "conf_low",
    "conf_high",
)
# families whose GLMM has no scale parameter: lme4 reports z values and p-values for them
_NO_SCALE_FAMILIES = ("binomial", "poisson")


def _effects(effects: str | Iterable[str]) -> list[str]:
    chosen = [effects] if isinstance(effects, str) else list(effects)
    unknown = [e for e in chosen if e not in EFFECTS]
    if unknown or not chosen:
        raise ArgumentError(
            f"effects must be among {', '.join(EFFECTS)}, got {effects!r}"
            + (" (ran_coefs is not supported)" if "ran_coefs" in unknown else ""),
            "effects",
        )
    return chosen


def _check_level(conf_level: float) -> float:
    if isinstance(conf_level, bool) or not isinstance(conf_level, (int, float, np.floating)):
        raise ArgumentError(f"conf_level must be a number, got {conf_level!r}", "conf_level")
    if not 0.0 < float(conf_level) < 1.0:
        raise ArgumentError(f"conf_level must lie in (0, 1), got {conf_level!r}", "conf_level")
    return float(conf_level)


def _has_p_value(fit: MixedFit) -> bool:
    return fit.model == "glmer" and fit.family in _NO_SCALE_FAMILIES


def _fixed_rows(fit: MixedFit, conf_int: bool, conf_level: float) -> list[dict[str, Any]]:
    se = fit.fixef_se
    a = (1.0 - conf_level) / 2.0
    q_low, q_high = float(ndtri(a)), float(ndtri(1.0 - a))
    rows = []
    for term, estimate in fit.fixef.items():
        s = float(se[term])
        row: dict[str, Any] = {
            "effect": "fixed",
            "term": str(term),
            "estimate": float(estimate),
            "std_error": s,
            "statistic": float(estimate) / s,
        }
        if _has_p_value(fit):
            row["p_value"] = 2.0 * float(ndtr(-abs(row["statistic"])))
        if conf_int:  # lme4's confint(method = "Wald"): cf + ses %o% qnorm(a)
            row["conf_low"] = float(estimate) + s * q_low
            row["conf_high"] = float(estimate) + s * q_high
        rows.append(row)
    return rows


def _isna(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _ran_pars_rows(fit: MixedFit, conf_int: bool) -> list[dict[str, Any]]:
    """VarCorr per group in lower-triangle column-major order: sd of each column, then its
    correlations with the columns after it (as.data.frame(VarCorr(fit), order = "lower.tri"))."""
    vc = fit.varcorr
    rows = []
    for grp in pd.unique(vc["grp"]):
        part = vc[vc["grp"] == grp]
        if grp == "Residual":
            rows.append({"group": "Residual", "term": "sd__Observation",
                         "estimate": float(part["sdcor"].iloc[0])})  # fmt: skip
            continue
        variances = part[part["var2"].map(_isna)]
        covariances = part[~part["var2"].map(_isna)]
        names = [str(v) for v in variances["var1"]]
        for j, name in enumerate(names):
            rows.append({"group": str(grp), "term": f"sd__{name}",
                         "estimate": float(variances["sdcor"].iloc[j])})  # fmt: skip
            for other in names[j + 1 :]:
                match = covariances[(covariances["var1"] == name) & (covariances["var2"] == other)]
                if len(match):
                    rows.append({"group": str(grp), "term": f"cor__{name}.{other}",
                                 "estimate": float(match["sdcor"].iloc[0])})  # fmt: skip
    for row in rows:
        row["effect"] = "ran_pars"
        if conf_int:  # lme4's Wald intervals are NA for the variance parameters
            row["conf_low"] = row["conf_high"] = math.nan
    return rows


def _ran_vals_rows(fit: MixedFit, conf_int: bool, conf_level: float) -> list[dict[str, Any]]:
    """as.data.frame(ranef(fit, condVar = TRUE)): factor, then term, then level."""
    mult = float(ndtri((1.0 + conf_level) / 2.0))
    rows = []
    for factor, frame in fit.ranef.items():
        cv = fit.cond_var.get(factor)
        arr = None if cv is None else np.asarray(cv, dtype=float)
        if arr is not None and arr.ndim == 1:
            arr = arr[:, None, None]
        for k, term in enumerate(frame.columns):
            fits_shape = arr is not None and arr.shape[0] == len(frame) and k < arr.shape[1]
            sd = np.sqrt(arr[:, k, k]) if fits_shape else np.full(len(frame), np.nan)
            for level, estimate, s in zip(frame.index, frame[term], sd, strict=True):
                row: dict[str, Any] = {
                    "effect": "ran_vals",
                    "group": str(factor),
                    "level": str(level),
                    "term": str(term),
                    "estimate": float(estimate),
                    "std_error": float(s),
                }
                if conf_int:
                    row["conf_low"] = row["estimate"] - mult * row["std_error"]
                    row["conf_high"] = row["estimate"] + mult * row["std_error"]
                rows.append(row)
    return rows


def tidy_mixed(
    fit: MixedFit,
    effects: str | Iterable[str] = ("fixed", "ran_pars"),
    conf_int: bool = False,
    conf_level: float = 0.95,
) -> pd.DataFrame:
    """broom.mixed's `tidy(fit, effects, conf.int, conf.level)` for a MixedFit (see module)."""
    chosen = _effects(effects)
    level = _check_level(conf_level)
    rows: list[dict[str, Any]] = []
    # broom.mixed binds the pieces in this order whatever the order of `effects`
    if "fixed" in chosen:
        rows += _fixed_rows(fit, bool(conf_int), level)
    if "ran_pars" in chosen:
        rows += _ran_pars_rows(fit, bool(conf_int))
    if "ran_vals" in chosen:
        rows += _ran_vals_rows(fit, bool(conf_int), level)
    present = {key for row in rows for key in row}
    columns = [c for c in COLUMNS if c in present]
    frame = pd.DataFrame(rows, columns=columns)
    for c in ("group", "level"):
        if c in frame:
            frame[c] = frame[c].astype(object).where(frame[c].notna(), None)
    return frame


def glance_mixed(fit: MixedFit) -> pd.DataFrame:
    """broom.mixed's `glance(fit)` for a MixedFit: one row (see module)."""
    row: dict[str, Any] = {
        "nobs": int(fit.nobs),
        "sigma": float(fit.sigma),
        "loglik": float(fit.loglik),
        "aic": float(fit.aic),
        "bic": float(fit.bic),
    }
    if fit.model == "lmer" and fit.reml:
        row["reml_criterion"] = float(fit.reml_criterion)  # type: ignore[arg-type]
    else:
        row["deviance"] = float(fit.deviance)
    row["df_residual"] = int(fit.nobs - fit.df)
    return pd.DataFrame([row])
