"""The R engine's inference: lme4's own `confint.merMod` and `anova.merMod`, through the bridge.

R refits each model from the same data (lme4's fit, deterministic) and runs lme4's function on
it (r_scripts/mixbridge.R: mb_confint_refit, mb_anova_refit); the results come back as the same
DataFrames the Python engine returns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from mixbridge.errors import ArgumentError
from mixbridge.results import MixedFit, emit_warnings

Run = Callable[[str, dict[str, Any]], dict[str, Any]]


def confint_hook(run: Run, model: str, fit_args: dict[str, Any]) -> Callable[..., pd.DataFrame]:
    """fit.methods.confint of an R fit: `run(function, args)` calls an mb_* function with the
    fit's data (the bridge's transport); `fit_args` are the fit's lmer/glmer arguments."""

    def confint(
        *, method: str, level: float, parm: list[str], nsim: int, seed: int | None
    ) -> pd.DataFrame:
        from mixbridge.bridge import build

        args = {
            "model": model, "fit_args": fit_args, "method": method, "level": float(level),
            "parm": list(parm), "nsim": int(nsim), "seed": None if seed is None else int(seed),
        }  # fmt: skip
        res = run("mb_confint_refit", args)
        value = build.check(res, "confint")
        emit_warnings(build.messages(res))
        table = pd.DataFrame(
            {
                "lower": np.asarray(value["lower"], float),
                "upper": np.asarray(value["upper"], float),
            },
            index=pd.Index([str(n) for n in value["names"]]),
        )
        if "replicates" in value:  # boot: R's replicates, for their Monte Carlo error
            n_rep = int(np.ravel(value["n_rep"])[0])
            reps = np.asarray(value["replicates"], float).reshape(-1, n_rep).T
            table.attrs["replicates"] = pd.DataFrame(reps, columns=list(table.index))
        return table

    return confint


def r_anova(fits: list[MixedFit], names: list[str], refit: bool) -> pd.DataFrame:
    """lme4's anova(m1, m2, ..., refit, model.names) on lme4's fits of the same models."""
    from mixbridge.bridge import _encode, _run, build, resolve_transport

    calls = [f.call for f in fits]
    if any(c is None for c in calls):
        raise ArgumentError("anova on R fits needs fits made by mixbridge.lmer/glmer", "fits")
    first = calls[0]
    for c in calls[1:]:
        if c.weights is not first.weights or c.offset is not first.offset:
            raise NotImplementedError(
                "anova with engine='r' needs the models to share their weights= and offset= "
                "arguments (give them as the same column names)"
            )
    columns: dict[str, Any] = {}
    wo: dict[str, Any] = {}
    nrow = 0
    for c in calls:
        cols, nrow, wo = _encode(c.model, c.formula, c.data, c.weights, c.offset)
        for col in cols:
            columns.setdefault(col.name, col)
    models = {}
    for name, c in zip(names, calls, strict=True):
        args: dict[str, Any] = {"model": c.model, "formula": c.formula, **wo}
        if c.model == "glmer":
            args.update(family=c.family, link=c.link, nAGQ=int(c.nagq))
        else:
            args["REML"] = bool(c.reml)
        models[name] = args
    transport, _ = resolve_transport(fits[0].extra.get("transport"))
    res = _run(
        "mb_anova_refit", transport, {"models": models, "refit": bool(refit)},
        list(columns.values()), nrow,
    )  # fmt: skip
    value = build.check(res, "anova")
    emit_warnings([m for m in build.messages(res) if m.kind == "warning"])
    reml = [c.model == "lmer" and c.reml for c in calls]
    table = pd.DataFrame(
        {
            "npar": value["npar"], "aic": value["AIC"], "bic": value["BIC"],
            "loglik": value["logLik"], "deviance": value["deviance"], "chisq": value["Chisq"],
            "df": value["Df"], "p_value": value["Pr(>Chisq)"],
        },
        index=pd.Index([str(n) for n in value["names"]]),
    )  # fmt: skip
    table = table.astype(float)
    by_name = dict(zip(names, fits, strict=True))
    table.attrs["heading"] = [f"{n}: {by_name[n].formula}" for n in table.index]
    table.attrs["refitted"] = [n for n, r in zip(names, reml, strict=True) if r and refit]
    return table
