"""The "r" engine: lme4's lmer/glmer and arm's bayesglm through R.

Pipeline: pandas columns -> R vectors (`convert`) -> an `mb_*` function in
r_scripts/mixbridge.R (fit, then every result as a plain list, R's warnings/errors as data)
-> MixedFit / BayesGLMFit (`build`). Two transports reach R:

* "embedded": rpy2 in this process, one lock around every call (`embedded`);
* "subprocess": a fresh `Rscript mixbridge_cli.R` per call, data as raw bytes (`subproc`).

Both return identical results. Keyword arguments follow `mixbridge.engines`' protocol, plus
`transport` (None: embedded, or subprocess with a warning when rpy2 cannot start this R) and
`timeout` (seconds an R call may take; RTimeoutError after that).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from mixbridge.bridge import build
from mixbridge.bridge.convert import Column, encode_frame
from mixbridge.control import check_control
from mixbridge.errors import ArgumentError, DataError, RNotAvailableError
from mixbridge.formula import validate_formula
from mixbridge.results import BayesGLMFit, Message, MixedFit, emit_warnings

TRANSPORTS = ("embedded", "subprocess")


def _check_control(model: str, control: Mapping[str, Any] | None) -> dict[str, Any]:
    """control= with mixbridge.control's keys; the R side maps them to lme4's arguments."""
    return check_control(model, control, "r")


def _check_transport(transport: Any) -> None:
    if not isinstance(transport, str) or transport not in TRANSPORTS:
        raise ArgumentError(
            f"transport must be 'embedded' or 'subprocess', got {transport!r}", "transport"
        )


def check_timeout(timeout: Any) -> float | None:
    """None, or a positive number of seconds (ArgumentError otherwise)."""
    if timeout is None:
        return None
    if isinstance(timeout, (bool, np.bool_)) or not isinstance(timeout, (int, float, np.number)):
        raise ArgumentError(
            f"timeout must be a number of seconds or None, got {timeout!r}", "timeout"
        )
    if not np.isfinite(timeout) or timeout <= 0:
        raise ArgumentError(
            f"timeout must be a positive number of seconds, got {timeout!r}", "timeout"
        )
    return float(timeout)


def _check_call_options(transport: str | None, timeout: Any) -> float | None:
    """Check transport= and timeout= before anything else runs; returns the timeout."""
    if transport is not None:
        _check_transport(transport)
    return check_timeout(timeout)


def resolve_transport(transport: str | None) -> tuple[str, Message | None]:
    """The transport to use, and the note to attach when the default had to fall back.

    None means "embedded when it can start": when rpy2 is missing or cannot load this R, the
    subprocess transport (Rscript, no rpy2) is used and the note says why and how to fix rpy2.
    Any other reason R cannot start (no R, missing R packages, a wrong R_HOME) is raised: the
    subprocess transport would fail the same way, or run a different R than the one asked for.
    An explicit transport is used as given.
    """
    if transport is not None:
        _check_transport(transport)
        return transport, None
    from mixbridge.bridge import embedded

    try:
        embedded.session()
    except RNotAvailableError as exc:
        if "rpy2" not in exc.missing:
            raise
        reason = str(exc).split("\n")[0]
        note = Message(
            "warning",
            f"the embedded R transport cannot start ({reason}); fitted through the subprocess "
            f"transport (Rscript) instead. To use the embedded transport: {exc.install}",
            origin="mixbridge",
            code="transport_fallback",
        )
        return "subprocess", note
    return "embedded", None


def _encode(model: str, formula: str, data: pd.DataFrame, weights: Any, offset: Any):
    """Validate the formula against the allow-list (again: the engine may be called directly,
    and the formula is the one string R parses), then encode the columns the model uses.
    Returns (columns, nrow, {"weights_col": name or None, "offset_col": name or None})."""
    columns = list(data.columns) if isinstance(data, pd.DataFrame) else []
    validate_formula(formula, columns, model)
    cols, nrow, weights_col, offset_col = encode_frame(data, formula, weights, offset)
    return cols, nrow, {"weights_col": weights_col, "offset_col": offset_col}


def _run(
    function: str,
    transport: str,
    args: dict[str, Any],
    columns: list[Column] | None,
    nrow: int,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Call an mb_* R function with the data as `data`; returns {ok, value, messages, error}."""
    _check_transport(transport)
    if transport == "subprocess":
        from mixbridge.bridge import subproc

        return subproc.call(function, args, columns, nrow, timeout=timeout)
    from mixbridge.bridge import embedded

    with embedded.LOCK:
        ri, env = embedded.session()
        if columns is not None:
            args = {**args, "data": embedded.data_frame(ri, env, columns, nrow)}
        return embedded.call(function, timeout=timeout, **args)


def _versions(value: dict[str, Any], transport: str) -> dict[str, str]:
    from mixbridge.bridge import locate

    # rpy2 only matters to the embedded transport (and may be absent or broken otherwise)
    return build.versions(value, locate.rpy2_version() if transport == "embedded" else None)


# Fields an embedded fit leaves in R until first read (r_scripts/mixbridge.R: .mb_deferrable):
# lme4's condVar costs more than the fit itself on big data, and the per-row vectors cost a
# transfer of n doubles each. The subprocess transport keeps no R process: R computes every
# field at once.
DEFERRED_FIELDS = ("cond_var", "fitted", "residuals")


def _fit_options(transport: str) -> dict[str, Any]:
    """keep_fit/defer for mb_lmer and mb_glmer: the embedded transport keeps the merMod in R
    (predict, deferred fields); the subprocess transport gets every field at once."""
    if transport == "embedded":
        return {"keep_fit": True, "defer": list(DEFERRED_FIELDS)}
    return {"keep_fit": False}


def _field_fetcher(fit_sexp: Any, timeout: float | None) -> Callable[[str], dict[str, Any]] | None:
    """fit.<field> from the merMod kept in the embedded R session (None: no merMod kept)."""
    if fit_sexp is None:
        return None

    def fetch(name: str) -> dict[str, Any]:
        from mixbridge.bridge import embedded

        with embedded.LOCK:
            return embedded.call("mb_mer_field", fit_sexp, name, timeout=timeout)

    return fetch


def _mixed_fit(
    res: dict[str, Any], model: str, formula: str, transport: str, timeout: float | None
) -> MixedFit:
    from mixbridge.bridge import embedded

    value = res["value"]
    return build.mixed_fit(
        res,
        model=model,
        formula=formula,
        versions_=_versions(value, transport),
        fetch_field=_field_fetcher(value.get("fit"), timeout),
        lock=embedded.LOCK,
    )


def _finish(fit: Any, transport: str, note: Message | None) -> None:
    """Record the transport used (and why, after a fallback), then re-emit the warnings."""
    fit.extra["transport"] = transport
    if note is not None:
        fit.messages.append(note)
    emit_warnings(fit.messages)


# ---------------------------------------------------------------------------------------------
# Deviance functions (also behind MixedFit.objective for R fits)


def _devfun_hook(
    function: str,
    transport: str,
    args: dict[str, Any],
    columns: list[Column],
    nrow: int,
    n_params: int | None = None,
    timeout: float | None = None,
) -> Callable[..., float]:
    """fit.objective(...) for an R fit: lme4's deviance function for the same model.

    Embedded: the R closure is built once (devFunOnly=TRUE) and kept; subprocess: one Rscript
    per evaluation. `n_params`: keep only that many leading parameters (glmer nAGQ = 0, whose
    deviance function takes theta alone, may still be called as objective(theta, beta)).
    glmer: `control` overrides the fit's control keys (e.g. tol_pwrss), as glmer_objective's.
    """
    cache: dict[Any, Any] = {}
    glmm = function == "mb_glmer_devfun"

    def params_of(*params: Any) -> np.ndarray:
        return np.concatenate([np.atleast_1d(np.asarray(p, dtype=float)) for p in params])

    def objective(*params: Any, control: Mapping[str, Any] | None = None) -> float:
        p = params_of(*params)
        if n_params is not None:
            p = p[:n_params]
        call_args = args
        if control is not None:
            if not glmm:
                raise ArgumentError("control= applies to glmer deviance functions only", "control")
            override = _check_control("glmer", control)
            call_args = {**args, "control": {**args["control"], **override}}
        if transport == "subprocess":
            fn = "mb_glmer_objective" if glmm else "mb_lmer_objective"
            key = "params" if glmm else "theta"
            res = _run(fn, transport, {**call_args, key: p}, columns, nrow, timeout)
            return float(build.check(res, fn)[0])
        from mixbridge.bridge import embedded

        key = repr(sorted(call_args.get("control", {}).items()))
        with embedded.LOCK:
            if key not in cache:
                res = _run(function, transport, call_args, columns, nrow, timeout)
                cache[key] = build.check(res, function)
            res = embedded.call("mb_call_devfun", cache[key], p, timeout=timeout)
        return float(build.check(res, "devfun")[0])

    return objective


def _predict_args(
    re_form: Any, allow_new_levels: bool, type: str, model: str, columns: list[str]
) -> dict[str, Any]:
    if type not in ("link", "response"):
        raise ArgumentError(f"type must be 'link' or 'response', got {type!r}", "type")
    if re_form is None:
        return {"re_form": None, "re_none": False, "allow_new_levels": bool(allow_new_levels),
                "type": type}  # fmt: skip
    if (isinstance(re_form, float) and np.isnan(re_form)) or (
        isinstance(re_form, str) and re_form.replace(" ", "") in ("NA", "~0", "~-1")
    ):
        return {"re_form": None, "re_none": True, "allow_new_levels": bool(allow_new_levels),
                "type": type}  # fmt: skip
    if not isinstance(re_form, str) or not re_form.strip().startswith("~"):
        raise ArgumentError(
            f"re_form must be None, NA, '~0' or a one-sided formula string, got {re_form!r}",
            "re_form",
        )
    # The string reaches R's as.formula: validate it with the same allow-list.
    validate_formula("mb_response__ " + re_form, [*columns, "mb_response__"], model)
    return {"re_form": re_form, "re_none": False, "allow_new_levels": bool(allow_new_levels),
            "type": type}  # fmt: skip


def _predict_hook(
    model: str,
    transport: str,
    fit_args: dict[str, Any],
    columns: list[Column],
    nrow: int,
    data: pd.DataFrame,
    offset: Any,
    fit_sexp: Any,
    timeout: float | None = None,
) -> Callable[..., np.ndarray]:
    """fit.predict(...) for an R fit: lme4's predict.merMod on the same model.

    Embedded: the merMod is kept in R; subprocess: the (deterministic) fit is redone in the
    worker Rscript, then predicted from.
    """
    formula = fit_args["formula"]
    data_columns = [str(c) for c in data.columns]

    def predict(
        newdata: pd.DataFrame | None = None,
        re_form: Any = None,
        allow_new_levels: bool = False,
        type: str = "link",
    ) -> np.ndarray:
        pargs = _predict_args(re_form, allow_new_levels, type, model, data_columns)
        nd = None
        if newdata is not None:
            if offset is not None and not isinstance(offset, str):
                raise DataError(
                    "the offset was given as an array; give it as a column name to predict "
                    "on new data",
                    "offset",
                )
            nd_cols, nd_n, _, _ = encode_frame(newdata, formula, None, offset)
            nd = (nd_cols, nd_n)
        if transport == "subprocess":
            from mixbridge.bridge import subproc

            args = {"model": model, "fit_args": fit_args, "predict_args": pargs}
            res = subproc.call("mb_predict_refit", args, columns, nrow, timeout=timeout, newdata=nd)
        else:
            from mixbridge.bridge import embedded

            with embedded.LOCK:
                ri, env = embedded.session()
                r_nd = None if nd is None else embedded.data_frame(ri, env, *nd)
                res = embedded.call("mb_predict", fit_sexp, newdata=r_nd, timeout=timeout, **pargs)
        value = build.check(res, "predict")
        emit_warnings(build.messages(res))
        return np.asarray(value, dtype=float)

    return predict


_R_DDF = {"satterthwaite": "Satterthwaite", "kenward-roger": "Kenward-Roger"}


def _tests_hook(
    transport: str,
    fit_args: dict[str, Any],
    columns: list[Column],
    nrow: int,
    fit_sexp: Any,
    timeout: float | None = None,
) -> Callable[..., pd.DataFrame]:
    """fit.coef_table / fit.anova for an R fit: lmerTest (and pbkrtest) on the same merMod.

    Embedded: on the merMod kept in R; subprocess: the (deterministic) fit is redone in the
    worker Rscript, then tested."""

    cache: dict[tuple[str, str, int], pd.DataFrame] = {}  # a fit's tables do not change

    def tests(fit: Any, kind: str, ddf: str, type: int | None) -> pd.DataFrame:  # noqa: A002
        targs = {"kind": kind, "ddf": _R_DDF[ddf], "type": int(type or 3)}
        key = (kind, ddf, int(type or 3))
        if key in cache:
            return cache[key].copy()
        if transport == "subprocess":
            from mixbridge.bridge import subproc

            args = {"fit_args": fit_args, "tests_args": targs}
            res = subproc.call("mb_tests_refit", args, columns, nrow, timeout=timeout)
        else:
            from mixbridge.bridge import embedded

            with embedded.LOCK:
                res = embedded.call("mb_tests", fit_sexp, timeout=timeout, **targs)
        value = build.check(res, "tests")
        emit_warnings(build.messages(res))
        names = [str(n) for n in np.atleast_1d(value.pop("names"))]
        table = {k: np.atleast_1d(np.asarray(v, dtype=float)) for k, v in value.items()}
        cache[key] = pd.DataFrame(table, index=pd.Index(names))
        return cache[key].copy()

    return tests


def _confint_hook(
    model: str,
    transport: str,
    fit_args: dict[str, Any],
    columns: list[Column],
    nrow: int,
    timeout: float | None,
) -> Callable[..., pd.DataFrame]:
    """fit.confint(...) for an R fit: lme4's confint.merMod (mixbridge.inference.r_engine)."""
    from mixbridge.inference.r_engine import confint_hook

    def run(function: str, args: dict[str, Any]) -> dict[str, Any]:
        return _run(function, transport, args, columns, nrow, timeout)

    return confint_hook(run, model, fit_args)


# ---------------------------------------------------------------------------------------------
# Engine protocol


def lmer(
    formula: str,
    data: pd.DataFrame,
    *,
    reml: bool,
    weights: Any,
    offset: Any,
    control: Mapping[str, Any] | None,
    transport: str | None = None,
    timeout: float | None = None,
) -> MixedFit:
    """lme4::lmer(formula, data, REML = reml, weights, offset, control)."""
    timeout = _check_call_options(transport, timeout)
    ctrl = _check_control("lmer", control)
    columns, nrow, wo = _encode("lmer", formula, data, weights, offset)
    transport, note = resolve_transport(transport)
    base = {"formula": formula, "REML": bool(reml), **wo}
    keep = _fit_options(transport)
    res = _run("mb_lmer", transport, {**base, "control": ctrl, **keep}, columns, nrow, timeout)
    value = build.check(res, "lmer")
    fit = _mixed_fit(res, "lmer", formula, transport, timeout)
    fit.attach(
        objective=_devfun_hook("mb_lmer_devfun", transport, base, columns, nrow, timeout=timeout),
        predict=_predict_hook(
            "lmer", transport, {**base, "control": ctrl}, columns, nrow, data, offset,
            value.get("fit"), timeout,
        ),
        tests=_tests_hook(
            transport, {**base, "control": ctrl}, columns, nrow, value.get("fit"), timeout
        ),
        confint=_confint_hook("lmer", transport, {**base, "control": ctrl}, columns, nrow, timeout),
    )  # fmt: skip
    _finish(fit, transport, note)
    return fit


def glmer(
    formula: str,
    data: pd.DataFrame,
    *,
    family: str,
    link: str | None,
    nagq: int,
    weights: Any,
    offset: Any,
    control: Mapping[str, Any] | None,
    transport: str | None = None,
    timeout: float | None = None,
    nb_theta: float | None = None,
    estimate_nb_theta: bool = False,
) -> MixedFit:
    """lme4::glmer(formula, data, family(link), nAGQ = nagq, weights, offset, control);
    family "negative.binomial": MASS::negative.binomial(nb_theta), or with
    `estimate_nb_theta` lme4::glmer.nb (θ estimated; the fit's hooks use the final θ)."""
    timeout = _check_call_options(transport, timeout)
    ctrl = _check_control("glmer", control)
    columns, nrow, wo = _encode("glmer", formula, data, weights, offset)
    transport, note = resolve_transport(transport)
    base = {
        "formula": formula,
        "family": family,
        "link": link,
        "nAGQ": int(nagq),
        **wo,
        "control": ctrl,
        **({} if nb_theta is None else {"nb_theta": float(nb_theta)}),
    }
    keep = _fit_options(transport)
    if estimate_nb_theta:
        nb_args = {k: v for k, v in base.items() if k not in ("family", "nb_theta")}
        res = _run("mb_glmer_nb", transport, {**nb_args, **keep}, columns, nrow, timeout)
        value = build.check(res, "glmer_nb")
    else:
        res = _run("mb_glmer", transport, {**base, **keep}, columns, nrow, timeout)
        value = build.check(res, "glmer")
    fit = _mixed_fit(res, "glmer", formula, transport, timeout)
    if "nb_theta" in value:  # getME(fit, "glmer.nb.theta"): the hooks refit at this θ
        fit.nb_theta = float(np.ravel(value["nb_theta"])[0])
        fit.family = "negative.binomial"
        base = {**base, "family": "negative.binomial", "nb_theta": fit.nb_theta}
        if "nb_evals" in value:
            fit.extra["nb_evals"] = int(np.ravel(value["nb_evals"])[0])
    if "tol_pwrss" in value:  # the PIRLS tolerance of lme4's deviance function (glmerControl)
        fit.optimizer["tol_pwrss"] = float(np.ravel(value["tol_pwrss"])[0])
    n_params = len(fit.theta) if int(nagq) == 0 else None
    fit.attach(
        objective=_devfun_hook(
            "mb_glmer_devfun", transport, base, columns, nrow, n_params, timeout
        ),
        predict=_predict_hook(
            "glmer", transport, base, columns, nrow, data, offset, value.get("fit"), timeout
        ),
        confint=_confint_hook("glmer", transport, base, columns, nrow, timeout),
    )
    _finish(fit, transport, note)
    return fit


def glmer_nb(
    formula: str,
    data: pd.DataFrame,
    *,
    link: str | None,
    nagq: int,
    weights: Any,
    offset: Any,
    control: Mapping[str, Any] | None,
    transport: str | None = None,
    timeout: float | None = None,
    theta_start: float | None = None,
    **_: Any,
) -> MixedFit:
    """lme4::glmer.nb(formula, data, nAGQ = nagq, weights, offset, control): the merMod at the
    estimated θ, `fit.nb_theta` = getME(fit, "glmer.nb.theta"). lme4 has no start for θ:
    `theta_start` is refused here."""
    if theta_start is not None:
        raise ArgumentError(
            "theta_start= is not available on engine='r': lme4's glmer.nb always starts from "
            "theta.ml on a poisson fit",
            "theta_start",
        )
    return glmer(
        formula, data, family="negative.binomial", link=link, nagq=nagq, weights=weights,
        offset=offset, control=control, transport=transport, timeout=timeout,
        estimate_nb_theta=True,
    )  # fmt: skip


def lmer_objective(
    formula: str,
    data: pd.DataFrame,
    *,
    theta: np.ndarray,
    reml: bool,
    weights: Any,
    offset: Any,
    transport: str | None = None,
    timeout: float | None = None,
) -> float:
    """lme4's lmer deviance function (devFunOnly=TRUE) at theta."""
    timeout = _check_call_options(transport, timeout)
    columns, nrow, wo = _encode("lmer", formula, data, weights, offset)
    transport, note = resolve_transport(transport)
    args = {
        "formula": formula,
        "theta": np.asarray(theta, dtype=float),
        "REML": bool(reml),
        **wo,
    }
    res = _run("mb_lmer_objective", transport, args, columns, nrow, timeout)
    value = build.check(res, "lmer_objective")
    emit_warnings(build.messages(res) + ([note] if note else []))
    return float(value[0])


def glmer_objective(
    formula: str,
    data: pd.DataFrame,
    *,
    theta: np.ndarray,
    beta: np.ndarray,
    family: str,
    link: str | None,
    nagq: int,
    weights: Any,
    offset: Any,
    control: Mapping[str, Any] | None,
    transport: str | None = None,
    timeout: float | None = None,
    nb_theta: float | None = None,
) -> float:
    """glmer's deviance function at c(theta, beta) (stage 2; nAGQ = 0: stage 1 at theta)."""
    timeout = _check_call_options(transport, timeout)
    ctrl = _check_control("glmer", control)
    columns, nrow, wo = _encode("glmer", formula, data, weights, offset)
    transport, note = resolve_transport(transport)
    theta = np.atleast_1d(np.asarray(theta, dtype=float))
    beta = np.atleast_1d(np.asarray(beta, dtype=float))
    params = theta if int(nagq) == 0 else np.concatenate([theta, beta])
    args = {
        "formula": formula,
        "params": params,
        "family": family,
        "link": link,
        "nAGQ": int(nagq),
        **wo,
        "control": ctrl,
        **({} if nb_theta is None else {"nb_theta": float(nb_theta)}),
    }
    res = _run("mb_glmer_objective", transport, args, columns, nrow, timeout)
    value = build.check(res, "glmer_objective")
    emit_warnings(build.messages(res) + ([note] if note else []))
    return float(value[0])


def bayesglm(
    formula: str,
    data: pd.DataFrame,
    *,
    family: str,
    link: str | None,
    weights: Any,
    offset: Any,
    prior_mean: Any,
    prior_scale: Any,
    prior_df: Any,
    prior_mean_for_intercept: float,
    prior_scale_for_intercept: float | None,
    prior_df_for_intercept: float,
    min_prior_scale: float,
    scaled: bool,
    drop_baseline: bool,
    maxit: int,
    epsilon: float,
    dispersion: float | None,
    transport: str | None = None,
    timeout: float | None = None,
) -> BayesGLMFit:
    """arm::bayesglm with the same arguments (dispersion: fixed-phi extension, see the R side)."""
    timeout = _check_call_options(transport, timeout)
    columns, nrow, wo = _encode("bayesglm", formula, data, weights, offset)
    transport, note = resolve_transport(transport)

    def num(x: Any) -> Any:
        if x is None:
            return None
        arr = np.atleast_1d(np.asarray(x, dtype=float))
        return float(arr[0]) if arr.size == 1 else arr

    args = {
        "formula": formula,
        "family": family,
        "link": link,
        **wo,
        "prior_mean": num(prior_mean),
        "prior_scale": num(prior_scale),
        "prior_df": num(prior_df),
        "prior_mean_for_intercept": num(prior_mean_for_intercept),
        "prior_scale_for_intercept": num(prior_scale_for_intercept),
        "prior_df_for_intercept": num(prior_df_for_intercept),
        "min_prior_scale": num(min_prior_scale),
        "scaled": bool(scaled),
        "drop_baseline": bool(drop_baseline),
        "maxit": int(maxit),
        "epsilon": float(epsilon),
        "dispersion": num(dispersion),
    }
    res = _run("mb_bayesglm", transport, args, columns, nrow, timeout)
    value = build.check(res, "bayesglm")
    fit = build.bayesglm_fit(res, formula=formula, versions_=_versions(value, transport))
    _finish(fit, transport, note)
    return fit


__all__ = ["bayesglm", "glmer", "glmer_objective", "lmer", "lmer_objective"]


def describe_data(data: pd.DataFrame, transport: str | None = None) -> list[dict[str, Any]]:
    """How R received `data` (class, levels, NA positions, values per column): a diagnostic."""
    columns, nrow, _, _ = encode_frame(data, "", all_columns=True)
    transport, _ = resolve_transport(transport)
    res = _run("mb_describe_df", transport, {}, columns, nrow)
    return build.check(res, "describe_data")
