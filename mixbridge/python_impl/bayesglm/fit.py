"""bayesglm's entry points: they compose the stages, as lme4's lmer.R composes lFormula,
mkLmerDevfun, optimizeLmer and mkMerMod.

    bayesglm(formula, data)
      terms.glm_terms             formula, data -> GLMTerms (y, X, weights, offset)
    fit_from_matrix(X, y, ...)
      solver.make_design          X -> DenseDesign | BlockedDesign
      priors.PriorSpec            the prior arguments
      irls.fit_bayesglm_core      arm's IRLS/EM iteration -> CoreFit
      summary.fit_null_model      the null-deviance refit (offset and intercept only)
      summary.summarize_core      se, se_display, vcov, null deviance, aic -> CoreSummary
      result.build_fit            -> BayesGLMFit
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd

from mixbridge.errors import DataError
from mixbridge.formula.frames import ModelFrame
from mixbridge.python_impl.bayesglm.irls import IterationControl, ResponseData, fit_bayesglm_core
from mixbridge.python_impl.bayesglm.priors import PriorSpec, PriorValue
from mixbridge.python_impl.bayesglm.result import build_fit
from mixbridge.python_impl.bayesglm.solver import ModelMatrix, Solver, make_design
from mixbridge.python_impl.bayesglm.summary import fit_null_model, summarize_core
from mixbridge.python_impl.bayesglm.terms import ColumnOrValues, cbind_trials, glm_terms
from mixbridge.python_impl.families import Family, get_family
from mixbridge.results import BayesGLMFit, Message


def _as_array(value: npt.ArrayLike | None, n: int, name: str) -> np.ndarray | None:
    if value is None:
        return None
    arr = np.asarray(value, dtype=float).ravel()
    if arr.size != n:
        raise DataError(f"{name} has {arr.size} values but the model uses {n} rows", name)
    return arr


def fit_from_matrix(
    X: ModelMatrix,
    y: npt.ArrayLike,
    x_names: Sequence[str],
    *,
    family: str | Family = "gaussian",
    link: str | None = None,
    has_intercept: bool,
    weights: npt.ArrayLike | None = None,
    offset: npt.ArrayLike | None = None,
    n_trials: npt.ArrayLike | None = None,
    formula: str = "",
    response: str = "y",
    solver: Solver = "auto",
    extra_messages: Sequence[Message] = (),
    prior_mean: PriorValue = 0.0,
    prior_scale: PriorValue | None = None,
    prior_df: PriorValue = 1.0,
    prior_mean_for_intercept: float = 0.0,
    prior_scale_for_intercept: float | None = None,
    prior_df_for_intercept: float = 1.0,
    min_prior_scale: float = 1e-12,
    scaled: bool = True,
    maxit: int = 100,
    epsilon: float = 1e-8,
    dispersion: float | None = None,
) -> BayesGLMFit:
    """bayesglm on an already-built model matrix (column 0 = intercept when `has_intercept`).

    The prior and fit arguments are bayesglm's; `dispersion` (extension) holds it fixed.
    """
    fam = family if isinstance(family, Family) else get_family(family, link)
    y = np.asarray(y, dtype=float)
    n = len(y)
    data = ResponseData(
        y,
        weights=_as_array(weights, n, "weights"),
        offset=_as_array(offset, n, "offset"),
        n_trials=_as_array(n_trials, n, "n_trials"),
        name=response,
    )
    design = make_design(X, has_intercept, solver)
    prior = PriorSpec(
        prior_mean=prior_mean,
        prior_scale=prior_scale,
        prior_df=prior_df,
        prior_mean_for_intercept=prior_mean_for_intercept,
        prior_scale_for_intercept=prior_scale_for_intercept,
        prior_df_for_intercept=prior_df_for_intercept,
        min_prior_scale=min_prior_scale,
        scaled=scaled,
    )
    control = IterationControl(maxit=maxit, epsilon=epsilon, dispersion=dispersion)
    core = fit_bayesglm_core(
        design, data, family=fam, has_intercept=has_intercept, prior=prior, control=control
    )
    null_fit = fit_null_model(
        data, family=fam, has_intercept=has_intercept, prior=prior, control=control
    )
    summ = summarize_core(
        core, family=fam, has_intercept=has_intercept, offset=data.offset, null_fit=null_fit
    )
    return build_fit(
        core, summ, family=fam, x_names=x_names, formula=formula, extra_messages=extra_messages
    )


def bayesglm(
    formula: str,
    data: pd.DataFrame,
    *,
    family: str = "gaussian",
    link: str | None = None,
    weights: ColumnOrValues = None,
    offset: ColumnOrValues = None,
    prior_mean: PriorValue = 0.0,
    prior_scale: PriorValue | None = None,
    prior_df: PriorValue = 1.0,
    prior_mean_for_intercept: float = 0.0,
    prior_scale_for_intercept: float | None = None,
    prior_df_for_intercept: float = 1.0,
    min_prior_scale: float = 1e-12,
    scaled: bool = True,
    drop_baseline: bool = True,
    maxit: int = 100,
    epsilon: float = 1e-8,
    dispersion: float | None = None,
    frame: ModelFrame | None = None,
    solver: Solver = "auto",
) -> BayesGLMFit:
    """arm::bayesglm(formula, family, data, ...) in Python (protocol: mixbridge.engines).

    Engine options: `frame`, the model frame the input checks already evaluated (None: evaluate
    here); `solver` ("auto", "dense", "blocked"), to force one of the least-squares solvers.
    """
    fam = get_family(family, link)
    terms = glm_terms(
        formula,
        data,
        family=fam.family,
        weights=weights,
        offset=offset,
        drop_baseline=drop_baseline,
        frame=frame,
    )
    offset_arr = None if terms.offset is None else np.asarray(terms.offset, dtype=float)
    if offset_arr is not None and not np.any(offset_arr):
        offset_arr = None  # no offset given (the frame reports zeros); matters for null_deviance
    return fit_from_matrix(
        terms.X,
        terms.y,
        terms.x_names,
        family=fam,
        has_intercept=bool(terms.has_intercept),
        weights=terms.weights,
        offset=offset_arr,
        n_trials=cbind_trials(terms),
        formula=formula,
        response=str(terms.response_name),
        solver=solver,
        extra_messages=list(terms.messages),
        prior_mean=prior_mean,
        prior_scale=prior_scale,
        prior_df=prior_df,
        prior_mean_for_intercept=prior_mean_for_intercept,
        prior_scale_for_intercept=prior_scale_for_intercept,
        prior_df_for_intercept=prior_df_for_intercept,
        min_prior_scale=min_prior_scale,
        scaled=bool(scaled),
        maxit=int(maxit),
        epsilon=float(epsilon),
        dispersion=None if dispersion is None else float(dispersion),
    )
