"""lme4's glmer in pure Python: the stages composed, as lme4's glmer() does (spec §3).

    formula, data --spec.glmer_spec---------> terms, family, settings, response start (glFormula)
                  --GlmerModel.build--------> GLM response + PLS core (pls.select_core)
                  --Devfun------------------> initial PIRLS -> lp0           (mkGlmerDevfun)
        stage 1:  --optimizers "Brent"/"Nelder-Mead" on dev.stage1(θ)        (nAGQ = 0 stage)
        stage 2:  --optimizers "Nelder-Mead" (+ bound probes) on dev.stage2(θ, β), or, for
                    big (1|g) data with a canonical link, glmer_gradient's BFGS on the converged
                    deviance with its analytic gradient                     (updateGlmerDevfun)
                  --check.boundary, deriv12, checkConv --> result.build_fit  (mkMerMod)

One function per fit: the deviance function is lme4's at the model's PIRLS tolerance `tol_pwrss`
(lme4's default 1e-7 below GRADIENT_MIN_ROWS rows; TIGHT_TOL, the converged Laplace/AGQ deviance,
from there on; or what `control` says). The fit minimizes it, reports it at its estimates
(-2 logLik, up to the saturated constant for nAGQ > 1), `fit.objective` and `glmer_objective`
evaluate it (same start lp0, same tolerance). The converged deviance is the one to optimize on big
data: lme4's stopping rule (|Δpdev|/pdev < 1e-7) leaves log|L|² from the previous iteration's
weights, an error that grows with the number of groups (+0.38 at 20,000) and bends its optimum.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mixbridge.data_input import is_dask
from mixbridge.errors import ArgumentError
from mixbridge.python_impl import optimizers
from mixbridge.python_impl.checkconv import (
    SINGULAR_TEXT,
    SINGULAR_TOL,
    check_boundary,
    check_conv,
    deriv12,
    optimum_doubts,
)
from mixbridge.python_impl.family_nb import NegativeBinomial
from mixbridge.python_impl.glmer_devfun import Devfun, GlmerModel
from mixbridge.python_impl.glmer_gradient import (
    NoFastPath,
    initial_hessian,
    optimize_stage2,
    probe_bound,
)
from mixbridge.python_impl.optsummary import OptSummary
from mixbridge.python_impl.pirls import PirlsState
from mixbridge.python_impl.predict import FitPredictions
from mixbridge.python_impl.response import saturated_log_lik
from mixbridge.python_impl.result import FitEstimates, b_from_u, build_fit
from mixbridge.python_impl.spec import GlmerSpec, glmer_settings, glmer_spec
from mixbridge.results import Message, MixedFit

if TYPE_CHECKING:
    from mixbridge.formula.frames import ModelFrame


# ---------------------------------------------------------------------------------------------
# Entry points (engine protocol)


def glmer(
    formula: str,
    data: pd.DataFrame,
    *,
    family: str = "binomial",
    link: str | None = None,
    nagq: int = 1,
    weights: Any = None,
    offset: Any = None,
    control: Mapping[str, Any] | None = None,
    frame: ModelFrame | None = None,
    nb_theta: float | None = None,
    **_: Any,
) -> MixedFit:
    """Fit `glmer(formula, data, family, nAGQ = nagq)` (spec §3.4) and build the MixedFit.
    `frame`: the evaluated model frame from the input checks (None: evaluate here);
    `nb_theta`: θ of family "negative.binomial" (MASS's negative.binomial(theta))."""
    if family == "negative.binomial":  # not canonical: the general path (no lean/Dask kernel)
        if is_dask(data):
            raise ArgumentError(
                "negative.binomial is not fitted on a Dask DataFrame; compute() the data", "data"
            )
        spec = glmer_spec(
            formula, data, family=family, link=link, nagq=nagq, weights=weights, offset=offset,
            control=control, frame=frame, nb_theta=nb_theta,
        )  # fmt: skip
        return fit_spec(spec)
    if is_dask(data):  # out of core: (1|g), canonical link, nAGQ = 1 (distributed_glmer)
        from mixbridge.python_impl.distributed_glmer import glmer_dask

        return glmer_dask(
            formula, data, family=family, link=link, nagq=nagq, weights=weights, offset=offset,
            control=control,
        )  # fmt: skip
    from mixbridge.python_impl.glmer_lean import try_glmer_lean  # (imports this module)

    lean = try_glmer_lean(
        formula, data, family=family, link=link, nagq=nagq, weights=weights, offset=offset,
        control=control, frame=frame,
    )  # fmt: skip
    if lean is not None:  # big (1|g) data: the group-sum path in chunks (glmer_lean)
        return lean
    spec = glmer_spec(
        formula,
        data,
        family=family,
        link=link,
        nagq=nagq,
        weights=weights,
        offset=offset,
        control=control,
        frame=frame,
    )
    return fit_spec(spec)


def glmer_objective(
    formula: str,
    data: pd.DataFrame,
    *,
    theta: np.ndarray,
    beta: np.ndarray,
    family: str = "binomial",
    link: str | None = None,
    nagq: int = 1,
    weights: Any = None,
    offset: Any = None,
    control: Mapping[str, Any] | None = None,
    frame: ModelFrame | None = None,
    nb_theta: float | None = None,
    **_: Any,
) -> float:
    """lme4's `glmer(..., devFunOnly = TRUE)` evaluated at (θ, β): the stage-2 deviance function
    (after stage 1 as glmer runs it, which sets its starting linear predictor); for nagq = 0 the
    stage-1 function of θ (β is ignored).

    It is the function `glmer` with the same arguments minimizes and reports (-2 logLik at its
    estimates; nAGQ > 1: plus 2·fit.loglik_constant), and `fit.objective`: PIRLS at
    `control["tol_pwrss"]`, by default lme4's 1e-7 below GRADIENT_MIN_ROWS rows and TIGHT_TOL (the
    converged Laplace/AGQ deviance) from there on. lme4's own function at the converged
    tolerance: `engine="r", control={"tol_pwrss": 1e-12}`."""
    spec = glmer_spec(
        formula,
        data,
        family=family,
        link=link,
        nagq=nagq,
        weights=weights,
        offset=offset,
        control=control,
        frame=frame,
        nb_theta=nb_theta,
    )
    model = GlmerModel.build(spec)
    theta = np.asarray(theta, dtype=float).reshape(-1)
    beta = np.asarray(beta, dtype=float).reshape(-1)
    if theta.size != model.n_theta:
        raise ArgumentError(f"theta must have length {model.n_theta}, got {theta.size}", "theta")
    dev = Devfun(model)
    if model.nagq == 0:
        return dev.stage1(theta)
    if beta.size != model.X.shape[1]:
        raise ArgumentError(f"beta must have length {model.X.shape[1]}, got {beta.size}", "beta")
    stage1(dev, model)
    dev.start_stage2()
    return dev.stage2(np.concatenate([theta, beta]))


def fit_spec(spec: GlmerSpec) -> MixedFit:
    return fit_model(GlmerModel.build(spec))


def fit_model(
    model: GlmerModel, start: np.ndarray | None = None, h0: np.ndarray | None = None
) -> MixedFit:
    """The fit of a built model. `start` (θ, β) and `h0` (its approximate Hessian): the
    gradient path's starting point and metric instead of the initial PIRLS fit's (glmer_nb
    passes the optimum at a neighbouring NB θ); the optimizer's start only, the optimum of the
    converged deviance does not depend on it. Ignored elsewhere."""
    dev = Devfun(model)
    opt1 = stage1(dev, model)
    beta1 = np.asarray(dev.state.beta, dtype=float)
    rx_se = np.sqrt(np.diag(model.core.rx_inverse()))
    info: dict[str, Any] = {
        "tol_pwrss": model.tol,
        "stage1": {
            "start": opt1.start.tolist(),
            "theta": opt1.final.tolist(),
            "fval": opt1.fval,
            "n_evals": opt1.n_evals,
        },
    }
    if model.nagq == 0:
        return _finish_stage1(model, dev, opt1.final, opt1.fval, info)

    dev.start_stage2()
    lp0 = dev.lp0
    lower = np.concatenate([model.theta_lower, np.full(beta1.size, -np.inf)])
    x0 = np.concatenate([opt1.final, beta1])
    f2 = optimizers.safe(dev.stage2)
    opt2: OptSummary | None = None
    if model.gradient:
        if start is not None:
            x0 = np.maximum(np.asarray(start, dtype=float), lower)
        if h0 is None or start is None:
            h0 = initial_hessian(model, x0[: model.n_theta])
        try:
            opt2 = probe_bound(dev, model, optimize_stage2(dev, model, x0, lower, h0), lower)
        except NoFastPath:
            dev.lp0 = lp0  # the stage-2 start that glmer_objective uses too
    if opt2 is None:
        step = 0.2 * np.concatenate([np.full(opt1.final.size, 0.1), np.minimum(rx_se, 10.0)])
        probe = (model.n_theta, model.theta0)
        opt2 = optimizers.minimize("Nelder-Mead", f2, x0, lower, step=step, probe=probe)
    x, fx = check_boundary(f2, opt2.final, opt2.fval, lower, ties=False)
    info["stage2"] = {
        "start": opt2.start.tolist(),
        "fval": fx,  # the criterion at the returned (θ, β)
        "n_evals": opt2.n_evals,
        "method": opt2.method,
    }
    derivs = (opt2.gradient, opt2.hessian) if opt2.gradient.size else None
    return _finish_stage2(model, dev, x, fx, lower, info, derivs, opt2.settled)


def stage1(dev: Devfun, model: GlmerModel) -> OptSummary:
    """Stage 1 as glmer runs it, leaving `dev` in the state its stage 2 starts from (so that
    glmer, fit.objective and glmer_objective restart PIRLS from the same lp0).

    Gradient path: no stage-1 optimization (the converged deviance does not depend on the
    start, and the gradient-based stage 2 converges from lme4's initial PIRLS fit at θ = 1
    directly; a stage-1 optimization would cost more, in joint PIRLS, than it saves)."""
    theta0 = model.theta0
    if model.gradient:
        return OptSummary("none", theta0.copy(), theta0.copy(), float("nan"), 0)
    f = optimizers.safe(dev.stage1)
    if model.scalar:
        opt = optimizers.minimize("Brent", f, theta0, model.theta_lower)
    else:
        step = 0.2 * np.maximum(np.abs(theta0), 1.0)
        opt = optimizers.minimize("Nelder-Mead", f, theta0, model.theta_lower, step=step)
    dev.stage1(opt.final)  # re-evaluate at the optimum: sets lp0 and the stage-1 state (lme4 too)
    return opt


# ---------------------------------------------------------------------------------------------
# Building the result


def vcov_from_hessian(hess: np.ndarray, n_theta: int) -> np.ndarray | None:
    """lme4's default glmer vcov: 2·[H⁻¹]_ββ, symmetrized; None if not positive definite."""
    try:
        hinv = np.linalg.inv(hess)
    except np.linalg.LinAlgError:
        return None
    v = 2.0 * hinv[n_theta:, n_theta:]
    v = 0.5 * (v + v.T)
    if not np.all(np.isfinite(v)):
        return None
    try:
        np.linalg.cholesky(v)
    except np.linalg.LinAlgError:
        return None
    return v


def _finish_stage2(
    model: GlmerModel,
    dev: Devfun,
    x: np.ndarray,
    fx: float,
    lower: np.ndarray,
    info: dict[str, Any],
    derivs: tuple[np.ndarray, np.ndarray] | None = None,
    settled: bool = True,
) -> MixedFit:
    nth = model.n_theta
    f2 = optimizers.safe(dev.stage2)
    # lme4's deriv12 (finite differences of the deviance) unless the gradient path has them
    grad, hess = deriv12(f2, x, fx, lower) if derivs is None else derivs
    messages = list(model.spec.messages)
    singular, converged, conv_msgs = check_conv(grad, hess, x, lower)
    doubts = optimum_doubts(grad, hess, x, lower, singular, settled=settled)
    converged = converged and not doubts
    messages += conv_msgs + doubts
    vcov = vcov_from_hessian(hess, nth)
    fval = dev.stage2(x)  # lme4 re-evaluates at the optimum: the state below belongs to it
    state = dev.state
    vcov_rx = model.core.rx_inverse()
    if vcov is None:
        vcov = vcov_rx
        messages.append(
            Message(
                "warning",
                "the Hessian-based vcov is not positive definite; using the R_X-based one",
                "python",
                code="vcov_fallback",
            )
        )
    info.update({"gradient": grad.tolist(), "hessian": hess.tolist()})
    return _glmer_fit(
        model, dev, state, x[:nth], x[nth:], fval, vcov, vcov_rx, singular, converged, messages,
        info,
    )  # fmt: skip


def _finish_stage1(
    model: GlmerModel, dev: Devfun, theta: np.ndarray, fx: float, info: dict[str, Any]
) -> MixedFit:
    f1 = optimizers.safe(dev.stage1)
    theta, fx = check_boundary(f1, theta, fx, model.theta_lower, ties=False)
    fval = dev.stage1(theta)
    state = dev.state
    vcov = model.core.rx_inverse()
    singular = bool(np.any((model.theta_lower == 0) & (theta < SINGULAR_TOL)))
    messages = list(model.spec.messages)
    if singular:
        messages.append(Message("message", SINGULAR_TEXT, "python", code="singular"))
    dev.offset = model.resp.offset + model.X @ state.beta
    return _glmer_fit(
        model, dev, state, theta, np.asarray(state.beta), fval, vcov, vcov, singular, True,
        messages, info,
    )  # fmt: skip


def _glmer_fit(
    model: GlmerModel,
    dev: Devfun,
    state: PirlsState,
    theta: np.ndarray,
    beta: np.ndarray,
    fval: float,
    vcov: np.ndarray,
    vcov_rx: np.ndarray,
    singular: bool,
    converged: bool,
    messages: list[Message],
    info: dict[str, Any],
) -> MixedFit:
    terms, resp, core = model.terms, model.resp, model.core
    reterms = list(terms.reterms)
    tks = model.lambda_blocks(theta)
    b = b_from_u(reterms, tks, state.u)
    cv = core.cond_var_by_factor(1.0) if model.spec.settings.cond_var else {}
    mu = state.mu
    devres = resp.dev_resids(mu)
    residuals = model.unsort(np.sign(resp.y - mu) * np.sqrt(np.maximum(devres, 0.0)))
    # lme4 1.1's AGQ deviance leaves out the saturated constant; we report the normalized one
    const = saturated_log_lik(resp) if model.nagq > 1 else 0.0
    messages += _divergence_messages(model, dev, state, beta, converged)
    if no_optimum_reached(messages):
        converged = False
    if singular and not any(m.code == "singular" for m in messages):
        messages.append(Message("message", SINGULAR_TEXT, "python", code="singular"))
    mu_rows = model.unsort(mu)
    est = FitEstimates(
        model="glmer",
        formula=terms.formula,
        family=resp.family_name,
        link=resp.family.link,
        reml=False,
        reterms=reterms,
        x_names=list(terms.x_names),
        nobs=int(terms.n),
        theta=np.asarray(theta, dtype=float),
        beta=beta,
        b=b,
        lambda_blocks=tks,
        sigma=None,
        vcov=vcov,
        cond_var=cv,
        criterion=fval - 2.0 * const,
        # lme4 counts a scale for every family but binomial and poisson (useSc), even where it
        # is fixed (negative.binomial(θ)): logLik's df and so AIC/BIC
        df=len(terms.x_names) + theta.size + (resp.family_name not in ("binomial", "poisson")),
        deviance=float(np.sum(devres)),
        reml_criterion=None,
        fitted=mu_rows,
        residuals=residuals,
        singular=bool(singular),
        converged=bool(converged),
        messages=messages,
        optimizer={"name": "brent/nelder_mead", **info},
        dropped_columns=list(terms.dropped_columns),
        nagq=int(model.nagq),
        vcov_rx=vcov_rx,
        loglik_constant=float(const),
        nb_theta=resp.family.theta if isinstance(resp.family, NegativeBinomial) else None,
    )
    trials = resp.n_trials if np.any(resp.n_trials > 1) else resp.weights
    pred = FitPredictions(
        terms,
        beta,
        b,
        tks,
        None,
        lambda: model.unsort(resp.offset + model.X @ beta),
        family=resp.family_name,
        linkinv=resp.linkinv,
        fitted_link=model.unsort(state.eta),
        fitted_response=mu_rows,
        trials=model.unsort(np.asarray(trials, dtype=float)),
        nb_theta=resp.family.theta if isinstance(resp.family, NegativeBinomial) else None,
    )
    return build_fit(
        est, objective=_objective(model, dev), predict=pred.predict, simulate=pred.simulate
    )


def _objective(model: GlmerModel, dev: Devfun) -> Callable[..., float]:
    """fit.objective: the fit's deviance function (`dev`, as left by the fit: its stage-2 start
    lp0 and tolerance). `control` (tol_pwrss, maxit) evaluates the function glmer_objective
    gives for the same model with that control instead."""
    others: dict[tuple[Any, ...], Devfun] = {}

    def devfun_for(control: dict[str, Any] | None) -> Devfun:
        if control is None:
            return dev
        settings = glmer_settings(control)
        key = (settings.tol_pwrss, settings.maxit)
        if key not in others:
            other = model.with_settings(settings)
            others[key] = d = Devfun(other)
            if other.nagq >= 1:
                stage1(d, other)
                d.start_stage2()
        return others[key]

    def objective(theta_: Any, beta_: Any = None, *, control: Any = None) -> float:
        d = devfun_for(None if control is None else dict(control))
        theta_ = np.ravel(np.asarray(theta_, dtype=float))
        if model.nagq == 0:
            return d.stage1(theta_)
        return d.stage2(np.concatenate([theta_, np.ravel(np.asarray(beta_, dtype=float))]))

    return objective


def _divergence_messages(
    model: GlmerModel, dev: Devfun, state: PirlsState, beta: np.ndarray, converged: bool
) -> list[Message]:
    """`divergence_messages` for this fit: the fitted values pinned at the edge counted here."""
    mu, resp = state.mu, model.resp
    edge = (mu <= 1e-10) | (mu >= 1 - 1e-10) if resp.family_name == "binomial" else mu <= 1e-10
    return divergence_messages(
        state.converged, dev.pirls_failures, int(edge.sum()), resp.family_name, model.maxit
    )


def no_optimum_reached(messages: list[Message]) -> bool:
    """PIRLS that never settled, or fitted values pinned at the edge (separation): the criterion
    keeps falling along a diverging path, so the fit is not converged (every glmer path)."""
    return any(m.code in ("pirls", "separation") for m in messages)


def divergence_messages(
    pirls_converged: bool, pirls_failures: int, edge_rows: int, family: str, maxit: int
) -> list[Message]:
    """Warnings for separated / degenerate data, shared by every glmer path (rows in memory and
    group sums): PIRLS that never settled at the final estimates (`pirls_converged` False
    after `maxit` iterations), PIRLS that hit its limit at `pirls_failures` trial values, and
    `edge_rows` fitted values pinned at the edge of the parameter space (glm's "fitted
    probabilities numerically 0 or 1"; means numerically 0 for the other families)."""
    out = []
    if not pirls_converged:
        out.append(
            Message(
                "warning",
                f"PIRLS did not converge in {maxit} iterations at the final estimates: "
                "some estimates diverge (complete or quasi-complete separation, or a group whose "
                "responses are all at one extreme); lme4 stops with 'pwrssUpdate did not "
                "converge in (maxit) iterations' here",
                "python",
                code="pirls",
            )
        )
    elif pirls_failures:
        out.append(
            Message(
                "note",
                f"PIRLS hit its iteration limit at {pirls_failures} trial parameter values "
                "during optimization",
                "python",
                code="pirls_trial",
            )
        )
    if edge_rows:
        what = "probabilities" if family == "binomial" else "means"
        out.append(
            Message(
                "warning",
                f"fitted {what} numerically 0 or 1 occurred in {edge_rows} rows: "
                "estimates may be diverging (separation)",
                "python",
                code="separation",
            )
        )
    return out
