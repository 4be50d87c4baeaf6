"""lme4's lmer in pure Python: the stages composed, as lme4's lmer.R does (spec §1, §2, §4).

    formula, data --spec.lmer_spec--------> terms, settings       (lFormula + checks)
                  --pls.select_core-------> PLS core               (merPredD)
        general:  --LmerDevfun------------> d(θ) / d_R(θ)          (mkLmerDevfun, profiled criteria)
                  --optimizers "L-BFGS-B"-> θ̂ + checks             (optimizeLmer, checkConv)
        (1|g):    --core.group_stats------> GroupStats             (one data pass)
                  --lmm_scalar------------> θ̂ by 1-D search, β̂, b̂  (O(G) criterion)
                  --result.build_fit------> MixedFit               (mkMerMod)

A model whose only random term is `(1|g)` takes the O(G) path unless control= sets what only
the general optimizer has (a start, an evaluation limit). A Dask DataFrame is a source of the
same group statistics (`distributed`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mixbridge.data_input import is_dask
from mixbridge.errors import ArgumentError
from mixbridge.inference import kenward_roger
from mixbridge.inference.python_tests import PythonTests
from mixbridge.inference.term_anova import fixed_terms_info
from mixbridge.inference.varpar import DevianceModel, LmerDevianceModel, ScalarDevianceModel
from mixbridge.python_impl import optimizers, pls
from mixbridge.python_impl.group_stats import GroupStats, column_means, column_variances
from mixbridge.python_impl.lmer_devfun import LmerDevfun, moment_start, scalar_start
from mixbridge.python_impl.lmm_scalar import ScalarRIResult, scalar_ri_criterion, scalar_ri_fit
from mixbridge.python_impl.optsummary import OptSummary
from mixbridge.python_impl.pls import (
    blas_single_thread,
    lambda_blocks,
    select_core,
    theta_start,
)
from mixbridge.python_impl.pls_diagonal import DiagonalCore
from mixbridge.python_impl.predict import FitPredictions
from mixbridge.python_impl.result import FitEstimates, build_fit
from mixbridge.python_impl.spec import (
    LmerSettings,
    LmerSpec,
    check_lmer_terms,
    check_scale_x,
    lmer_settings,
    lmer_spec,
    mixed_terms,
)
from mixbridge.results import Deferred, Message, MixedFit, emit_warnings

if TYPE_CHECKING:
    from mixbridge.formula.frames import MixedTerms, ModelFrame

_ROW_BLOCK = 1 << 16


# ---------------------------------------------------------------------------------------------
# Entry points (engine protocol)


def lmer(
    formula: str,
    data: Any,
    *,
    reml: bool = True,
    weights: Any = None,
    offset: Any = None,
    control: Mapping[str, Any] | None = None,
    frame: ModelFrame | None = None,
    **_: Any,
) -> MixedFit:
    """Fit `lmer(formula, data, REML = reml)`; see the module docstring for the pipeline.
    `frame`: the evaluated model frame from the input checks (None: evaluate here)."""
    if is_dask(data):
        from mixbridge.python_impl.distributed import lmer_dask

        fit = lmer_dask(formula, data, reml=reml, weights=weights, offset=offset, control=control)
    else:
        spec = lmer_spec(
            formula, data, reml=reml, weights=weights, offset=offset, control=control, frame=frame
        )
        fit = fit_spec(spec, formula)
    emit_warnings(fit.messages)  # as the R engine re-emits R's warnings
    return fit


def lmer_objective(
    formula: str,
    data: pd.DataFrame,
    *,
    theta: Any,
    reml: bool = True,
    weights: Any = None,
    offset: Any = None,
    frame: ModelFrame | None = None,
    **_: Any,
) -> float:
    """lme4's deviance function (devFunOnly=TRUE) at θ: the REML criterion or ML deviance."""
    terms = mixed_terms(formula, data, weights=weights, offset=offset, model="lmer", frame=frame)
    check_lmer_terms(terms)
    with blas_single_thread():
        devfun = LmerDevfun(terms, reml)
        return devfun(devfun.check_theta(theta))


def fit_terms(
    terms: MixedTerms,
    *,
    formula: str,
    reml: bool,
    control: Mapping[str, Any] | None = None,
) -> MixedFit:
    """Fit lmer on already-built model terms."""
    settings = lmer_settings(control)
    check_lmer_terms(terms)
    return fit_spec(LmerSpec(terms, bool(reml), settings), formula)


def fit_spec(spec: LmerSpec, formula: str) -> MixedFit:
    with blas_single_thread():
        core = select_core(spec.terms, weights_vary=False)
        if isinstance(core, DiagonalCore) and not spec.settings.needs_general_optimizer:
            return _fit_diagonal(spec, core, formula)
        return _fit_general(spec, formula)


# ---------------------------------------------------------------------------------------------
# The general path: the profiled criterion over θ


def _fit_general(spec: LmerSpec, formula: str) -> MixedFit:
    terms, reml, settings = spec.terms, spec.reml, spec.settings
    devfun = LmerDevfun(terms, reml)
    start = settings.start
    if start is None and devfun.pred.q2 >= pls.BIG_BLOCK_ORDER:
        # every evaluation costs a big dense factorization: start at the moment estimates
        # (about 1% from the optimum on large crossed designs, lme4's start 6%)
        start = moment_start(terms, devfun.y)
    if start is None:
        start = scalar_start(terms)
    theta0 = theta_start(devfun.pred.reterms) if start is None else devfun.check_theta(start)
    options = settings.optimizer_settings()
    opt = _try_mirrored_start(devfun, _optimize(devfun, theta0, options), options)
    st = devfun.state(opt.final)  # leave the model state at the final θ (lme4's last step)
    pred = devfun.pred
    sigma = math.sqrt(st.pwrss / (pred.n - pred.p if reml else pred.n))
    b = pred.b(st.u)
    cond_var = pred.cond_var_by_factor(sigma) if settings.cond_var else {}
    fitted = devfun.offset + pred.Xb(st.beta) + pred.Zb(st.u)
    return _lmer_fit(
        spec,
        formula,
        theta=st.theta,
        beta=st.beta,
        b=b,
        sigma=sigma,
        vcov_unscaled=pred.rx_inverse(),
        cond_var=cond_var,
        ml_deviance=st.ml_deviance,
        reml_criterion=st.reml_criterion,
        fitted=fitted,
        opt=opt,
        objective=devfun,
        deviance_model=LmerDevianceModel(devfun),
    )


def _optimize(devfun: LmerDevfun, theta0: np.ndarray, settings: dict[str, Any]) -> OptSummary:
    """L-BFGS-B on the profiled criterion with its analytic gradient (optimizeLmer)."""
    return optimizers.minimize(
        "L-BFGS-B",
        devfun.profiled,
        theta0,
        devfun.lower,
        value_grad=devfun.profiled_grad,
        curvature=devfun.curvature_guess,
        # each evaluation costs a big dense factorization: the checkConv Hessian from the last
        # iterates where they serve (saves up to one gradient per θ), the floor stop vouched
        # by the trapezoid rule
        expensive=devfun.pred.q2 >= pls.BIG_BLOCK_ORDER,
        **settings,
    )


def _try_mirrored_start(
    devfun: LmerDevfun, opt: OptSummary, settings: dict[str, Any]
) -> OptSummary:
    """A singular fit with correlated terms can be a local optimum: a rank-deficient T_k with
    correlation +1 and one with -1 are separate basins (seen on very unbalanced random-slope
    data, where lme4's BOBYQA happened to land in the better one). Restart once from the default
    start with every off-diagonal set to the opposite sign of the solution's; keep the better."""
    off = ~np.isfinite(devfun.lower)  # off-diagonal θ have no lower bound
    if not opt.singular or not np.any(off & (opt.final != 0)):
        return opt
    start = theta_start(devfun.pred.reterms)
    start[off] = -np.sign(opt.final[off])
    alt = _optimize(devfun, start, settings)
    best = alt if alt.fval < opt.fval else opt
    best.n_evals = opt.n_evals + alt.n_evals
    best.status = f"{best.status} (best of the default and a mirrored-correlation start)"
    return best


# ---------------------------------------------------------------------------------------------
# The O(G) path: one scalar random intercept (spec §2)


def _fit_diagonal(spec: LmerSpec, core: DiagonalCore, formula: str) -> MixedFit:
    """One pass over the rows for the group statistics, the 1-D search on them, one pass for
    the fitted values: no Z, no n×p X when the terms give X's columns."""
    terms = spec.terms
    offset = _nonzero_or_none(terms.offset)
    y = np.asarray(terms.y, dtype=float)
    if offset is not None:
        y = y - offset
    w = None if terms.weights is None else np.asarray(terms.weights, dtype=float)
    if w is not None and (w[:1] == 1.0).all() and (w.strides == (0,) or np.ptp(w) == 0.0):
        w = None  # unit weights: the unweighted sums (the frame gives ones when none were set)
    stats = core.group_stats(y, w)
    res = scalar_ri_fit(stats, spec.reml, spec.settings.boundary_tol)
    codes = np.asarray(terms.reterms[0].codes)

    def fitted() -> np.ndarray:
        """Xβ + b[g] (+ offset), computed when fit.fitted or fit.residuals is first read: the
        fit itself needs only the one pass over the rows for the group statistics."""
        out = terms.x_times(res.beta)
        for a in range(0, terms.n, _ROW_BLOCK):  # in blocks: no n-vector temporary for b[codes]
            out[a : a + _ROW_BLOCK] += res.b[codes[a : a + _ROW_BLOCK]]
        if offset is not None:
            out += offset
        return out

    return _lmer_fit(
        spec,
        formula,
        theta=np.array([res.theta]),
        beta=np.asarray(res.beta, float),
        b=np.asarray(res.b, float),
        sigma=float(res.sigma),
        vcov_unscaled=np.asarray(res.vcov_unscaled, float),
        cond_var=diagonal_cond_var(res, core.group, spec.settings),
        ml_deviance=float(res.ml_deviance),
        reml_criterion=float(res.reml_criterion),
        fitted=fitted,
        opt=res.opt_summary(),
        objective=group_stats_objective(stats, spec.reml),
        deviance_model=ScalarDevianceModel(stats, spec.reml),
        x_variances=None if w is not None else column_variances(stats),  # unweighted sds
        x_means=None if w is not None else column_means(stats),
    )


def diagonal_cond_var(
    res: ScalarRIResult, group: str, settings: LmerSettings
) -> dict[str, np.ndarray]:
    """The O(G) fit's conditional variances as ranef's condVar (empty when not wanted)."""
    if not settings.cond_var:
        return {}
    return {group: np.asarray(res.cond_var, float).reshape(-1, 1, 1)}


def group_stats_objective(stats: GroupStats, reml: bool) -> Any:
    """fit.objective of an O(G) fit: the criterion of θ from the group statistics."""

    def objective(th: Any) -> float:
        th = np.atleast_1d(np.asarray(th, dtype=float)).ravel()
        if th.size != 1 or not np.isfinite(th[0]):
            raise ArgumentError(f"theta must be one finite value for this model, got {th}", "theta")
        return scalar_ri_criterion(float(th[0]), stats, reml)

    return objective


def _nonzero_or_none(v: Any) -> np.ndarray | None:
    """An optional offset, None when absent or all zero."""
    if v is None:
        return None
    v = np.asarray(v, dtype=float)
    if v.strides == (0,):  # a broadcast constant (the formula module's "no offset")
        return v.copy() if v.size and v[0] != 0 else None
    return v if np.any(v) else None


# ---------------------------------------------------------------------------------------------
# The result


def _lmer_fit(
    spec: LmerSpec,
    formula: str,
    *,
    theta: np.ndarray,
    beta: np.ndarray,
    b: np.ndarray,
    sigma: float,
    vcov_unscaled: np.ndarray,
    cond_var: dict[str, np.ndarray],
    ml_deviance: float,
    reml_criterion: float,
    fitted: np.ndarray | Callable[[], np.ndarray],
    opt: OptSummary,
    objective: Any,
    x_variances: np.ndarray | None = None,
    x_means: np.ndarray | None = None,
    deviance_model: DevianceModel | None = None,
) -> MixedFit:
    terms, reml = spec.terms, spec.reml
    reterms = list(terms.reterms)
    tks = lambda_blocks([t.p for t in reterms], theta)
    crit = reml_criterion if reml else ml_deviance
    fitted_field, residuals_field = _row_fields(terms, fitted)
    vcov = sigma**2 * vcov_unscaled
    vcov = (vcov + vcov.T) / 2.0
    messages = [m for m in terms.messages if isinstance(m, Message)]
    x = terms.X if terms.x_built else terms.x_columns
    scale_msg = check_scale_x(x, variances=x_variances, means=x_means)
    if scale_msg is not None:
        messages.append(scale_msg)
    messages += opt.messages
    est = FitEstimates(
        model="lmer",
        formula=formula,
        family="gaussian",
        link="identity",
        reml=bool(reml),
        reterms=reterms,
        x_names=list(terms.x_names),
        nobs=int(terms.n),
        theta=theta,
        beta=beta,
        b=b,
        lambda_blocks=tks,
        sigma=float(sigma),
        vcov=vcov,
        cond_var=cond_var,
        criterion=crit,
        df=len(terms.x_names) + theta.size + 1,
        deviance=float(ml_deviance),
        reml_criterion=float(reml_criterion) if reml else None,
        fitted=fitted_field,
        residuals=residuals_field,
        singular=bool(opt.singular),
        converged=bool(opt.converged),
        messages=messages,
        # fval: the criterion at the returned θ (the optimizer's own value there agrees to
        # rounding; this one is the fit's criterion itself)
        optimizer={**opt.as_dict(), "fval": float(crit)},
        dropped_columns=list(terms.dropped_columns or []),
    )

    def objective_single_thread(th: Any) -> float:
        with blas_single_thread():
            return float(objective(th))

    def population() -> np.ndarray:
        eta = terms.x_times(beta)
        if terms.offset is not None:
            eta += np.asarray(terms.offset, float)
        return eta

    pred = FitPredictions(
        terms,
        np.asarray(beta, dtype=float),
        b,
        tks,
        float(sigma),
        population,
        weights=None if terms.weights is None else np.asarray(terms.weights, float),
    )
    fit = build_fit(
        est,
        objective=objective_single_thread,
        predict=pred.predict,
        simulate=pred.simulate,
        lazy_ranef=callable(fitted),  # the O(G) path: nothing per row or per level up front
    )
    if deviance_model is not None:
        fit.attach(tests=python_tests(spec, deviance_model))
    return fit


def _row_fields(terms: MixedTerms, fitted: np.ndarray | Callable[[], np.ndarray]) -> tuple:
    """fit.fitted and fit.residuals: values, or (fitted given as a function) `Deferred`s that
    compute them when first read, residuals from the same fitted values."""
    if not callable(fitted):
        return fitted, np.asarray(terms.y, dtype=float) - fitted
    lazy_fitted = Deferred(fitted, source="Xβ + Zb, computed when first read")

    def residuals() -> np.ndarray:
        return np.asarray(terms.y, dtype=float) - lazy_fitted.get()

    return lazy_fitted, Deferred(residuals, source="y - fitted, computed when first read")


def python_tests(spec: LmerSpec, model: DevianceModel) -> PythonTests:
    """The fit's tests hook (Satterthwaite / Kenward-Roger, `mixbridge.inference`)."""
    if isinstance(model, ScalarDevianceModel):
        kr = kenward_roger.scalar_builder(model.stats, spec.weighted)
    else:
        kr = kenward_roger.general_builder(model.devfun)
    terms = spec.terms
    return PythonTests(model, kenward_roger=kr, terms_info=lambda: fixed_terms_info(terms))
