"""lme4::allFit through the bridge, for `mixbridge.allfit` (r_scripts/mixbridge.R: mb_allfit).

One R call fits the model with lme4's defaults, runs `lme4::allFit` on it, and scores every
optimum, and any parameter vectors the caller adds (the Python engine's optima), with lme4's
deviance function for that model: the function an R fit's `objective()` evaluates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mixbridge.bridge import _encode, _run, build, check_timeout, resolve_transport
from mixbridge.results import FitCall, Message

# lme4 1.1-31's allFit table (meth.tab.0), by allFit's fit names
LME4_ALLFIT_OPTIMIZERS = (
    "bobyqa",
    "Nelder_Mead",
    "nlminbwrap",
    "nmkbw",
    "optimx.L-BFGS-B",
    "nloptwrap.NLOPT_LN_NELDERMEAD",
    "nloptwrap.NLOPT_LN_BOBYQA",
)


@dataclass
class RAllfitFit:
    """One of lme4::allFit's fits: its optimum scored by lme4's deviance function."""

    name: str
    ok: bool
    theta: np.ndarray | None = None
    fixef: pd.Series | None = None
    criterion: float = float("nan")
    messages: list[str] = field(default_factory=list)
    opt_code: float = float("nan")
    seconds: float = float("nan")


@dataclass
class RAllfitResult:
    fits: list[RAllfitFit]
    skipped: list[str]
    scores: np.ndarray
    messages: list[Message]
    versions: dict[str, str]


def _strings(x: Any) -> list[str]:
    if x is None:
        return []
    if isinstance(x, str):
        return [x]
    return [str(v) for v in x if v is not None]


def _float_or_nan(x: Any) -> float:
    """R's number, NaN when R sent an empty vector (the optimizer reported none)."""
    return build.r_float(x) if len(np.atleast_1d(x)) else float("nan")


def _one(x: dict[str, Any]) -> RAllfitFit:
    name = build.r_str(x["name"])
    secs = _float_or_nan(x.get("seconds", []))
    if not build.r_bool(x["ok"]):
        return RAllfitFit(name, False, messages=_strings(x.get("error")), seconds=secs)
    return RAllfitFit(
        name,
        True,
        theta=np.atleast_1d(np.asarray(x["theta"], dtype=float)),
        fixef=build.r_series(x["beta"]),
        criterion=build.r_float(x["criterion"]),
        messages=_strings(x.get("messages")),
        opt_code=_float_or_nan(x["opt_code"]),
        seconds=secs,
    )


def run_allfit(
    call: FitCall,
    *,
    score: list[np.ndarray] | None = None,
    transport: str | None = None,
    timeout: float | None = None,
) -> RAllfitResult:
    """lme4::allFit on the model of `call` (lme4's default controls), with `score`'s parameter
    vectors (lmer: θ; glmer: c(θ, β)) evaluated by the same deviance function."""
    timeout = check_timeout(timeout)
    data = call.data
    columns, nrow, wo = _encode(call.model, call.formula, data, call.weights, call.offset)
    transport, note = resolve_transport(transport)
    vectors = [np.ravel(np.asarray(s, dtype=float)) for s in (score or [])]
    n_par = vectors[0].size if vectors else 0
    args: dict[str, Any] = {
        "model": call.model,
        "formula": call.formula,
        "REML": bool(call.reml),
        "family": call.family,
        "link": call.link,
        "nAGQ": int(call.nagq),
        **wo,
        "n_par": int(n_par),
    }
    if call.nb_theta is not None:  # negative.binomial: refits at the fit's θ (lme4's allFit too)
        args["nb_theta"] = float(call.nb_theta)
    if vectors:
        args["score"] = np.concatenate(vectors)
    res = _run("mb_allfit", transport, args, columns, nrow, timeout)
    value = build.check(res, "allfit")
    fits = [_one(x) for x in (value.get("fits") or [])]
    return RAllfitResult(
        fits=fits,
        skipped=_strings(value.get("skipped")),
        scores=np.atleast_1d(np.asarray(value.get("scores", []), dtype=float)),
        messages=build.messages(res) + ([note] if note else []),
        versions=build.versions(value, None),
    )
