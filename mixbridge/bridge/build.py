"""Turn the plain result lists returned by r_scripts/mixbridge.R into MixedFit / BayesGLMFit.

Both transports decode R's answer into the same structure (dicts, lists, float64 arrays), so
this module is the single place where R's names become mixbridge's fields.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import pandas as pd

from mixbridge.errors import RModelError
from mixbridge.results import BayesGLMFit, Deferred, Message, MixedFit, emit_warnings


def r_float(x: Any) -> float:
    """The first element of an R numeric vector (as decoded by a transport) as a float."""
    return float(np.asarray(x, dtype=float)[0])


def r_int(x: Any) -> int:
    """The first element of an R integer vector as an int."""
    return int(x[0])


def r_bool(x: Any) -> bool:
    """The first element of an R logical vector as a bool."""
    return bool(x[0])


def r_str(x: Any) -> str:
    """The first element of an R character vector; "" for an empty vector or NA."""
    return "" if not x or x[0] is None else str(x[0])


def r_series(nv: dict[str, Any]) -> pd.Series:
    """A named R numeric vector ({"names": [...], "values": [...]}) as a float Series."""
    return pd.Series(np.asarray(nv["values"], dtype=float), index=list(nv["names"]))


def r_matrix(m: dict[str, Any]) -> pd.DataFrame:
    """An R matrix ({"dim", "data" column-major, "rownames", "colnames"}) as a DataFrame."""
    nr, nc = (int(d) for d in m["dim"])
    data = np.asarray(m["data"], dtype=float).reshape((nr, nc), order="F")
    return pd.DataFrame(
        data, index=list(m["rownames"]) or None, columns=list(m["colnames"]) or None
    )


def message_code(text: str) -> str:
    t = text.lower()
    if "singular" in t and "boundary" in t:
        return "singular"
    if "rank deficient" in t:
        return "rank_deficient"
    if any(k in t for k in ("converge", "hessian", "eigenvalue", "gradient", "max|grad|")):
        return "convergence"
    if "scale" in t and "predictor" in t:
        return "scale"
    return ""


def messages(res: dict[str, Any]) -> list[Message]:
    out = []
    for m in res.get("messages") or []:
        text = r_str(m["text"])
        out.append(
            Message(
                kind=r_str(m["kind"]),
                text=text,
                origin="R",
                call=r_str(m["call"]),
                code=message_code(text),
            )  # fmt: skip
        )
    return out


def check(res: dict[str, Any], function: str) -> dict[str, Any]:
    """The value of a successful call; R's error (message and call) as RModelError otherwise."""
    if not r_bool(res["ok"]):
        err = res.get("error") or {}
        raise RModelError(r_str(err.get("text")), r_str(err.get("call")), function=function)
    return res["value"]


def versions(value: dict[str, Any], rpy2_version: str | None) -> dict[str, str]:
    v = {"python": platform.python_version()}
    for key in ("R", "lme4", "Matrix", "arm"):
        got = value.get("versions", {}).get(key)
        if got and got[0] is not None:
            v[key] = str(got[0])
    if rpy2_version:
        v["rpy2"] = rpy2_version
    return v


def cond_var(value: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """lme4's condVar per factor (R: nc x nc x levels, column-major) as levels x nc x nc."""
    out: dict[str, np.ndarray] = {}
    for r in value or []:
        nc, _, nl = (int(d) for d in r["dim"])
        arr = np.asarray(r["values"], dtype=float).reshape((nl, nc, nc)).transpose(0, 2, 1)
        out[r_str(r["factor"])] = arr
    return out


def _vector(value: Any) -> np.ndarray:
    return np.asarray(value, dtype=float)


# The fields R can leave out of a fit's result (r_scripts/mixbridge.R: .mb_deferrable), each
# decoded by one function whether it came with the fit or was fetched later (mb_mer_field).
FIELDS: dict[str, Callable[[Any], Any]] = {
    "cond_var": cond_var,
    "fitted": _vector,
    "residuals": _vector,
}


def _deferred(
    name: str,
    fetch_field: Callable[[str], dict[str, Any]],
    lock: AbstractContextManager[Any] | None,
    msgs: list[Message],
) -> Deferred[Any]:
    """fit.<name>, fetched from R when first read: decoded as if it had come with the fit; R's
    warnings and messages join fit.messages (warnings are re-emitted then)."""

    def fetch() -> Any:
        res = fetch_field(name)
        value = check(res, f"fit.{name}")
        new = messages(res)
        msgs.extend(new)
        emit_warnings(new)
        return FIELDS[name](value)

    return Deferred(fetch, lock=lock, source=f"{name} from lme4's fit in the embedded R session")


def mixed_fit(
    res: dict[str, Any],
    *,
    model: str,
    formula: str,
    versions_: dict[str, str],
    fetch_field: Callable[[str], dict[str, Any]] | None = None,
    lock: AbstractContextManager[Any] | None = None,
) -> MixedFit:
    """The MixedFit of an mb_lmer/mb_glmer result. Fields the result lists under "deferred"
    (left out by R) become Deferreds: `fetch_field(name)` returns R's {ok, value, messages,
    error} for that field when it is first read, under `lock`."""
    v = res["value"]
    msgs = messages(res)
    oi = v["optinfo"]
    # lme4 has no "converged" flag: the optimizer must report success and lme4's post-fit
    # checks (gradient, Hessian) must not have warned. A singular fit can still be converged.
    known = {m.text for m in msgs}
    for w in oi["warnings"]:
        if w not in known:
            msgs.append(Message("warning", w, origin="R", code=message_code(w)))
    opt_ok = bool(oi["code"]) and oi["code"][0] == 0
    conv_warn = any(m.kind == "warning" and m.code == "convergence" for m in msgs)
    lme4_conv = [t for t in oi["lme4_messages"] if message_code(t) == "convergence"]
    converged = opt_ok and not conv_warn and not lme4_conv

    vc = v["varcorr"]
    varcorr = pd.DataFrame(
        {
            "grp": vc["grp"],
            "var1": vc["var1"],
            "var2": vc["var2"],
            "vcov": np.asarray(vc["vcov"], dtype=float),
            "sdcor": np.asarray(vc["sdcor"], dtype=float),
        }
    )
    ranef: dict[str, pd.DataFrame] = {}
    for r in v["ranef"]:
        modes = r_matrix(r["modes"])
        modes.index = [str(i) for i in modes.index]
        ranef[r_str(r["factor"])] = modes
    left_out = set(v.get("deferred") or [])
    if left_out and fetch_field is None:
        raise ValueError(f"R left out {sorted(left_out)} and nothing can fetch them")
    deferrable = {
        name: _deferred(name, fetch_field, lock, msgs)  # type: ignore[arg-type]
        if name in left_out
        else FIELDS[name](v[name])
        for name in FIELDS
    }
    ng = v["ngrps"]
    vcov_rx = r_matrix(v["vcov_rx"]) if "vcov_rx" in v else None
    rc = v.get("reml_criterion")
    return MixedFit(
        model=model,  # type: ignore[arg-type]
        formula=formula,
        family=r_str(v["family"]),
        link=r_str(v["link"]),
        reml=r_bool(v["reml"]),
        fixef=r_series(v["fixef"]),
        vcov=r_matrix(v["vcov"]),
        theta=np.asarray(v["theta"]["values"], dtype=float),
        theta_names=list(v["theta"]["names"]),
        varcorr=varcorr,
        sigma=r_float(v["sigma"]),
        ranef=ranef,
        cond_var=deferrable["cond_var"],
        loglik=r_float(v["loglik"]),
        df=r_int(v["df"]),
        deviance=r_float(v["deviance"]),
        reml_criterion=None if rc is None else r_float(rc),
        aic=r_float(v["aic"]),
        bic=r_float(v["bic"]),
        nobs=r_int(v["nobs"]),
        ngroups={str(k): int(n) for k, n in zip(ng["names"], ng["values"], strict=True)},
        fitted=deferrable["fitted"],
        residuals=deferrable["residuals"],
        singular=r_bool(v["singular"]),
        converged=converged,
        messages=msgs,
        engine="r",
        versions=versions_,
        nagq=r_int(v["nagq"]),
        optimizer={
            "name": list(oi["optimizer"]),
            "code": oi["code"][0] if oi["code"] else None,
            "message": r_str(oi["message"]),
            "feval": oi["feval"][0] if oi["feval"] else None,
            "warnings": list(oi["warnings"]),
            "lme4_messages": list(oi["lme4_messages"]),
            "lme4_code": list(oi["lme4_code"]),
            **_derivs(oi),
        },
        dropped_columns=list(v["dropped_columns"]),
        vcov_rx=vcov_rx,
    )


def _derivs(optinfo: dict[str, Any]) -> dict[str, list]:
    """lme4's optinfo$derivs as the Python engine reports its own: gradient, hessian (lists)."""
    if optinfo.get("gradient") is None or optinfo.get("hessian") is None:
        return {}
    hessian = r_matrix(optinfo["hessian"]).to_numpy()
    return {
        "gradient": np.asarray(optinfo["gradient"], dtype=float).tolist(),
        "hessian": hessian.tolist(),
    }


def bayesglm_fit(res: dict[str, Any], *, formula: str, versions_: dict[str, str]) -> BayesGLMFit:
    v = res["value"]
    return BayesGLMFit(
        formula=formula,
        family=r_str(v["family"]),
        link=r_str(v["link"]),
        coef=r_series(v["coef"]),
        se=r_series(v["se"]),
        se_display=r_series(v["se_display"]),
        vcov=r_matrix(v["vcov"]),
        dispersion=r_float(v["dispersion"]),
        dispersion_pearson=r_float(v["dispersion_pearson"]),
        deviance=r_float(v["deviance"]),
        null_deviance=r_float(v["null_deviance"]),
        aic=r_float(v["aic"]),
        df_residual=r_int(v["df_residual"]),
        iterations=r_int(v["iter"]),
        converged=r_bool(v["converged"]),
        prior_mean=np.asarray(v["prior_mean"], dtype=float),
        prior_scale=np.asarray(v["prior_scale"], dtype=float),
        prior_df=np.asarray(v["prior_df"], dtype=float),
        prior_sd=np.asarray(v["prior_sd"], dtype=float),
        fitted=np.asarray(v["fitted"], dtype=float),
        nobs=r_int(v["nobs"]),
        messages=messages(res),
        engine="r",
        versions=versions_,
        extra={"fixed_dispersion": r_bool(v["fixed_dispersion"])},
    )
