"""Likelihood-ratio tests between nested mixed models: lme4's `anova.merMod(m0, m1, ...)`.

    table = mixbridge.anova(m0, m1, refit=True)

Rows in lme4's order (by number of parameters, ties in the given order), columns `npar, aic,
bic, loglik, deviance, chisq, df, p_value`. REML fits are refitted by maximum likelihood first
(lme4's `refit = TRUE`; lme4 says "refitting model(s) with ML (instead of REML)"), on the engine
that made them. Each row's test is against the row above it: chisq = 2·max(0, Δ logLik),
df = Δ npar, p = P(χ²_df > chisq) (NaN when df = 0), as lme4 computes it.

Models fitted with the R engine get lme4's own table (`anova` in the embedded R session, on
lme4's fits of the same models and data); the others get it computed here from their
log-likelihoods, the only inputs lme4's table has.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np
import pandas as pd
from scipy import special

from mixbridge.errors import ArgumentError, MixbridgeWarning
from mixbridge.results import MixedFit

COLUMNS = ["npar", "aic", "bic", "loglik", "deviance", "chisq", "df", "p_value"]


def anova(*fits: MixedFit, refit: bool = True, names: list[str] | None = None) -> pd.DataFrame:
    """lme4's `anova(m0, m1, ..., refit = refit)`: likelihood-ratio tests between the models.

    `names`: row names (default lme4's generic MODEL1, MODEL2, … in the order given). The table's
    `attrs` hold "heading" (the models' formulas, as lme4 prints them) and "refitted" (the
    names of the models refitted with ML)."""
    fits, names = _check_models(fits, names)
    if all(f.engine == "r" for f in fits):
        from mixbridge.inference.r_engine import r_anova

        return r_anova(fits, names, refit=bool(refit))
    reml = [f.model == "lmer" and f.reml for f in fits]
    refitted: list[str] = []
    if refit:
        fits = [ml_refit(f) if r else f for f, r in zip(fits, reml, strict=True)]
        refitted = [n for n, r in zip(names, reml, strict=True) if r]
    elif any(reml) and not all(reml):
        warnings.warn("some models fit with REML = TRUE, some not", MixbridgeWarning, stacklevel=2)
    return lrt_table(fits, names, refitted)


def lrt_table(fits: list[MixedFit], names: list[str], refitted: list[str]) -> pd.DataFrame:
    """The table from the fits' log-likelihoods and parameter counts (lme4's arithmetic)."""
    npar = np.array([float(f.df) for f in fits])
    order = np.argsort(npar, kind="stable")  # R's order() keeps ties in the given order
    fits = [fits[i] for i in order]
    names = [names[i] for i in order]
    npar = npar[order]
    llk = np.array([float(f.loglik) for f in fits])
    nobs = np.array([float(f.nobs) for f in fits])
    chisq = np.concatenate([[np.nan], 2.0 * np.maximum(0.0, np.diff(llk))])
    df = np.concatenate([[np.nan], np.diff(npar)])
    with np.errstate(invalid="ignore"):
        p = np.where(df == 0, np.nan, special.chdtrc(np.where(df > 0, df, np.nan), chisq))
    p[0] = np.nan
    table = pd.DataFrame(
        {
            "npar": npar,
            "aic": -2.0 * llk + 2.0 * npar,
            "bic": -2.0 * llk + np.log(nobs) * npar,
            "loglik": llk,
            "deviance": -2.0 * llk,
            "chisq": chisq,
            "df": df,
            "p_value": p,
        },
        index=pd.Index(names),
    )
    table.attrs["heading"] = [f"{n}: {f.formula}" for n, f in zip(names, fits, strict=True)]
    table.attrs["refitted"] = list(refitted)
    return table


def ml_refit(fit: MixedFit) -> MixedFit:
    """lme4's refitML: the same lmer model fitted by maximum likelihood, on the fit's engine."""
    import mixbridge

    call = _call_of(fit, "refit it with ML")
    return mixbridge.lmer(
        call.formula,
        call.data,
        reml=False,
        weights=call.weights,
        offset=call.offset,
        engine=fit.engine,
    )


def _call_of(fit: MixedFit, purpose: str) -> Any:
    if fit.call is None:
        raise ArgumentError(
            f"this fit was not made by mixbridge.lmer/glmer (it has no call): cannot {purpose}",
            "fits",
        )
    return fit.call


def response_of(formula: str) -> str:
    """The formula's left-hand side, without blanks."""
    lhs = formula.split("~", 1)[0] if "~" in formula else ""
    return re.sub(r"\s+", "", lhs)


def _check_models(
    fits: tuple[MixedFit, ...], names: list[str] | None
) -> tuple[list[MixedFit], list[str]]:
    """lme4's checks: at least two merMods, the same number of observations, the same data
    (here: the same response, and the same values of it when both data are pandas frames)."""
    if len(fits) < 2:
        raise ArgumentError("anova needs at least two fitted models to compare", "fits")
    for k, f in enumerate(fits):
        if not isinstance(f, MixedFit):
            raise ArgumentError(
                f"model {k + 1} is a {type(f).__name__}, not a MixedFit (lmer/glmer fit)", "fits"
            )
    if names is None:
        names = [f"MODEL{k + 1}" for k in range(len(fits))]
    names = [str(n) for n in names]
    if len(names) != len(fits):
        raise ArgumentError(f"names has {len(names)} entries for {len(fits)} models", "names")
    if len(set(names)) != len(names):
        raise ArgumentError("names must be distinct", "names")
    nobs = {int(f.nobs) for f in fits}
    if len(nobs) > 1:
        raise ArgumentError(
            "models were not all fitted to the same size of dataset (nobs: "
            + ", ".join(f"{n}={f.nobs}" for n, f in zip(names, fits, strict=True))
            + ")",
            "fits",
        )
    responses = [response_of(f.formula) for f in fits]
    if len(set(responses)) > 1:
        raise ArgumentError(
            "models have different responses ("
            + ", ".join(f"{n}: {r}" for n, r in zip(names, responses, strict=True))
            + "): a likelihood-ratio test compares models of the same response",
            "fits",
        )
    models = {f.model for f in fits}
    if len(models) > 1 and any(f.model == "glmer" and f.nagq > 1 for f in fits):
        raise ArgumentError(
            "GLMMs with nAGQ>1 have log-likelihoods incommensurate with other models", "fits"
        )
    _check_same_data(list(fits), names)
    return list(fits), names


def _check_same_data(fits: list[MixedFit], names: list[str]) -> None:
    first = fits[0].call
    if first is None:
        return
    for name, f in zip(names[1:], fits[1:], strict=True):
        call = f.call
        if call is None or call.data is first.data:
            continue
        a, b = first.data, call.data
        if isinstance(a, pd.DataFrame) and isinstance(b, pd.DataFrame):
            same = a.shape[0] == b.shape[0] and all(
                a[c].equals(b[c]) for c in set(a.columns) & set(b.columns)
            )
            if not same:
                raise ArgumentError(
                    f"all models must be fit to the same data: {name}'s data differs from "
                    f"{names[0]}'s",
                    "fits",
                )
