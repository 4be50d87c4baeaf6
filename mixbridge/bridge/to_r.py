"""A fit handed to R: `MixedFit.to_r()` builds a real lme4 merMod at the fit's parameters.

The merMod is assembled by lme4's own modular functions, the way `lmer()`/`glmer()` assemble
theirs, with the optimizer replaced by the fit's θ (and β for glmer): lFormula/glFormula ->
mkLmerDevfun/mkGlmerDevfun -> one deviance evaluation at the parameters -> mkMerMod
(r_scripts/to_r.R). Nothing is refitted; every number the object reports is lme4's, computed
at those parameters, so any R package that takes a merMod (emmeans, lmerTest, broom.mixed,
performance, DHARMa) works on a Python fit.

Before handing the object over, lme4's criterion at the parameters is checked against the
fit's own (the objective tolerance of the policy): a difference means the data changed since
the fit, or the engines disagree on the model, and is an error, never a silent object.

glmer: the fit's optimizer gradient and Hessian over (θ, β), when it has them, travel as the
merMod's `optinfo$derivs`, exactly as lme4 stores its own finite-difference derivatives, so
`vcov()` on the object gives the fit's Hessian-based covariance; `vcov(use.hessian = FALSE)` is
lme4's R_X-based one at the fit's parameters.

The object lives in the embedded R session (rpy2): calls into R from several threads must hold
`mixbridge.bridge.embedded.LOCK`, as mixbridge's own calls do.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from mixbridge.bridge import build, embedded, locate
from mixbridge.bridge.convert import encode_frame
from mixbridge.errors import ArgumentError, DataError
from mixbridge.formula import validate_formula
from mixbridge.results import MixedFit, emit_warnings

_R_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9._]*$")
_STATE: dict[str, Any] = {}


def _conversion_env(ri: Any, env: Any) -> Any:
    """The environment holding r_scripts/to_r.R (a child of mixbridge.R's), sourced once."""
    if "env" not in _STATE:
        child = ri.baseenv["new.env"](parent=env)
        ri.baseenv["sys.source"](ri.StrSexpVector([locate.script_path("to_r.R")]), envir=child)
        _STATE["env"] = child
    return _STATE["env"]


def _derivs(fit: MixedFit, n_par: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The fit's optimizer gradient and Hessian over its parameters, when it kept them."""
    grad = fit.optimizer.get("gradient")
    hess = fit.optimizer.get("hessian")
    if grad is None or hess is None:
        return None, None
    g = np.asarray(grad, dtype=float).ravel()
    h = np.asarray(hess, dtype=float)
    if g.size != n_par or h.shape != (n_par, n_par):
        return None, None
    return g, h


def _stage1_theta(fit: MixedFit, n_theta: int) -> np.ndarray | None:
    """θ where the fit's first (nAGQ = 0) stage ended, when the engine reports it."""
    stage1 = fit.optimizer.get("stage1")
    theta = stage1.get("theta") if isinstance(stage1, dict) else None
    if theta is None or np.asarray(theta).size != n_theta:
        return None
    return np.asarray(theta, dtype=float)


def _criterion_for_lme4(fit: MixedFit) -> float:
    """The fit's criterion on lme4's scale (nAGQ > 1: without the saturated constant)."""
    return float(fit.criterion) + 2.0 * float(fit.loglik_constant)


def to_mermod(fit: MixedFit, name: str | None = None) -> Any:
    """`fit` as an lme4 merMod in the embedded R session (an rpy2 RS4 object); see the module."""
    from mixbridge.conformance.tolerance import POLICIES

    call = fit.call
    if call is None:
        raise ArgumentError(
            "this fit does not carry the call that made it (fits from mixbridge.lmer/glmer do; "
            "Dask fits and fits built by an engine directly do not): to_r needs its data",
            "fit",
        )
    if not isinstance(call.data, pd.DataFrame):
        raise ArgumentError(
            f"to_r needs the fit's data as a pandas DataFrame, not {type(call.data).__name__}",
            "data",
        )
    if name is not None and not (isinstance(name, str) and _R_NAME.match(name)):
        raise ArgumentError(f"name must be a syntactic R name, got {name!r}", "name")
    data = call.data
    validate_formula(fit.formula, [str(c) for c in data.columns], fit.model)
    columns, nrow, weights_col, offset_col = encode_frame(
        data, fit.formula, call.weights, call.offset
    )
    glmm = fit.model == "glmer"
    theta = np.asarray(fit.theta, dtype=float)
    beta = fit.fixef.to_numpy(dtype=float)
    n_par = theta.size + (beta.size if glmm and fit.nagq > 0 else 0)
    gradient, hessian = _derivs(fit, n_par)
    args: dict[str, Any] = {
        "model": fit.model,
        "formula": fit.formula,
        "theta": theta,
        "beta": beta if glmm else None,
        "stage1_theta": _stage1_theta(fit, theta.size) if glmm else None,
        "REML": bool(fit.reml),
        "family": call.family,
        "link": call.link,
        "nAGQ": int(fit.nagq),
        "weights_col": weights_col,
        "offset_col": offset_col,
        "gradient": gradient,
        "hessian": None if hessian is None else hessian.ravel(order="F"),
        "optimizer": f"mixbridge:{fit.engine}",
    }
    if call.family == "negative.binomial":  # MASS::negative.binomial(theta) at the fit's θ
        args["nb_theta"] = float(fit.nb_theta if fit.nb_theta is not None else call.nb_theta)
    with embedded.LOCK:
        ri, env = embedded.session()
        conv = _conversion_env(ri, env)
        r_args = {k: embedded.to_r(ri, v) for k, v in args.items()}
        r_args["data"] = embedded.data_frame(ri, env, columns, nrow)
        res = conv.find("mb_as_mermod")(**r_args)
        parts = dict(zip([str(n) for n in res.names], res, strict=True))
        decoded = {k: embedded.from_r(ri, parts[k]) for k in ("ok", "messages", "error")}
        build.check({**decoded, "value": None}, "to_r")
        mermod = parts["value"]
        summary = embedded.from_r(ri, conv.find("mb_mermod_check")(mermod))
        value = build.check(summary, "to_r")
        _check_same_model(fit, value, POLICIES)
        if name is not None:
            ri.globalenv[name] = mermod
        wrapped = _wrap(mermod)
    emit_warnings(build.messages(decoded), stacklevel=3)
    return wrapped


def _check_same_model(fit: MixedFit, value: dict[str, Any], policies: dict[str, Any]) -> None:
    theta_names = list(value["theta_names"])
    if fit.theta_names and theta_names != list(fit.theta_names):
        raise DataError(
            f"lme4 builds θ {theta_names} for this model, the fit has {list(fit.theta_names)}",
            "theta",
        )
    beta_names = list(value["beta_names"])
    if beta_names != [str(k) for k in fit.fixef.index]:
        raise DataError(
            f"lme4 builds fixed effects {beta_names}, the fit has {list(fit.fixef.index)}",
            "fixef",
        )
    fval = float(np.asarray(value["fval"], dtype=float)[0])
    mine = _criterion_for_lme4(fit)
    tol = policies["glmer" if fit.model == "glmer" else "lmer"]["objective"]
    if not abs(fval - mine) <= tol.bound(abs(mine)):
        raise DataError(
            f"lme4's criterion at this fit's parameters is {fval:.10g}, the fit's own is "
            f"{mine:.10g} (tolerance {tol.describe()}): the data changed since the fit, or "
            "the two engines do not see the same model",
            "data",
        )


def _wrap(sexp: Any) -> Any:
    """An rpy2 robjects view of the merMod (prints and converts like any R object)."""
    from rpy2.robjects.methods import RS4

    return RS4(sexp)
