"""The public fitting calls. Each validates its input once, then hands it to an engine.

Engines live behind a registry (`mixbridge.engines`): "python" (default, pure numpy/scipy),
"r" (lme4/arm through the bridge) and adapters such as "statsmodels". Every engine returns the
same result types (`MixedFit`, `BayesGLMFit`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mixbridge import engines
from mixbridge.checks import (
    check_bayesglm_args,
    check_bayesglm_terms,
    check_dask_inputs,
    check_family_name,
    check_flag,
    check_inputs,
    check_nagq,
    check_theta_length,
    named_arguments,
)
from mixbridge.control import check_control
from mixbridge.data_input import as_vector, is_dask, model_data
from mixbridge.errors import ArgumentError
from mixbridge.results import BayesGLMFit, FitCall, MixedFit

ArrayOrColumn = str | Sequence[float] | np.ndarray | pd.Series | Any | None
# a pandas DataFrame, a polars DataFrame or LazyFrame, a pyarrow Table, or any frame narwhals
# supports (mixbridge.data_input); lmer also takes a Dask DataFrame
DataLike = Any


def _inputs(data: Any, formula: Any, weights: Any, offset: Any) -> tuple[Any, Any, Any]:
    """data, weights and offset of any DataFrame library as pandas/numpy (mixbridge.data_input):
    polars, pyarrow and every frame narwhals supports, only the columns the call uses."""
    weights = as_vector(weights, "weights")
    offset = as_vector(offset, "offset")
    return model_data(data, formula, weights, offset), weights, offset


@named_arguments
def lmer(
    formula: str,
    data: DataLike,
    reml: bool = True,
    weights: ArrayOrColumn = None,
    offset: ArrayOrColumn = None,
    *,
    engine: str = "python",
    transport: str | None = None,
    timeout: float | None = None,
    control: Mapping[str, Any] | None = None,
) -> MixedFit:
    """Fit a linear mixed model like lme4's `lmer(formula, data, REML = reml)`.

    `data`: pandas, polars (eager or lazy), a pyarrow Table or any frame narwhals supports
    (`mixbridge.data_input`). `weights` and `offset` are column names or arrays (one value per
    row of `data`). A Dask DataFrame is accepted (engine="python") for models whose random
    part is a single `(1|g)` term.
    """
    reml = check_flag(reml, "reml")
    ctrl = check_control("lmer", control, _engine_name(engine))
    if is_dask(data):
        impl = _dask_engine(engine)
        check_dask_inputs("lmer", formula, data, weights=weights, offset=offset)
        prepared: dict[str, Any] = {}
    else:
        data, weights, offset = _inputs(data, formula, weights, offset)
        frame = check_inputs("lmer", formula, data, weights=weights, offset=offset)
        if "start" in ctrl:
            check_theta_length(frame, ctrl["start"], "start")
        impl, prepared = engines.get(engine), _prepared(engine, frame)
    fit = impl.lmer(
        formula,
        data,
        reml=reml,
        weights=weights,
        offset=offset,
        control=ctrl,
        **_r_options(engine, transport, timeout),
        **prepared,
    )
    fit.call = FitCall("lmer", formula, data, reml=bool(reml), weights=weights, offset=offset)
    return fit


@named_arguments
def glmer(
    formula: str,
    data: DataLike,
    family: str = "binomial",
    link: str | None = None,
    nagq: int = 1,
    weights: ArrayOrColumn = None,
    offset: ArrayOrColumn = None,
    *,
    engine: str = "python",
    transport: str | None = None,
    timeout: float | None = None,
    control: Mapping[str, Any] | None = None,
    theta: float | None = None,
) -> MixedFit:
    """Fit a generalized linear mixed model like lme4's `glmer(..., family, nAGQ = nagq)`.

    `family="negative.binomial"` with `theta=` is MASS's `negative.binomial(theta)` (log link,
    V(μ) = μ + μ²/θ, θ fixed; `glmer_nb` estimates θ).

    The fit minimizes one deviance function and reports it at its estimates (-2 logLik); it is
    what `fit.objective` and `glmer_objective` with the same arguments evaluate. Its PIRLS
    tolerance, `fit.optimizer["tol_pwrss"]`, is lme4's 1e-7 unless `control` sets one, except on
    the Python engine from 50,000 rows, where it is 1e-12: the converged Laplace/AGQ deviance,
    whose optimum is lower than that of lme4's early-stopped function (README, "One glmer
    criterion at every size").
    """
    family = check_family_name(family, "glmer")
    nb = _nb_theta_argument(family, theta)
    g = _glmer_inputs(formula, data, family, link, nagq, weights, offset, engine, control)
    fit = g.engine.glmer(
        formula,
        g.data,
        family=family,
        link=link,
        nagq=g.nagq,
        weights=g.weights,
        offset=g.offset,
        control=g.control,
        **_r_options(engine, transport, timeout),
        **g.prepared,
        **nb,
    )
    fit.call = FitCall(
        "glmer", formula, g.data, reml=False, family=family, link=link, nagq=int(g.nagq),
        weights=g.weights, offset=g.offset, nb_theta=nb.get("nb_theta"),
    )  # fmt: skip
    return fit


@named_arguments
def glmer_nb(
    formula: str,
    data: DataLike,
    link: str | None = None,
    nagq: int = 1,
    weights: ArrayOrColumn = None,
    offset: ArrayOrColumn = None,
    *,
    engine: str = "python",
    transport: str | None = None,
    timeout: float | None = None,
    control: Mapping[str, Any] | None = None,
    theta_start: float | None = None,
) -> MixedFit:
    """A negative-binomial GLMM with its θ estimated, as lme4's `glmer.nb` (lme4 1.1-31): a
    poisson glmer, MASS's theta.ml on its fitted values for the start, then Brent's search over
    log θ (start ± 3, tol 5e-5) of -2 logLik of `glmer(family=negative.binomial(θ))`.

    The result is the glmer fit at the final θ, with `fit.nb_theta` (lme4's
    `getME(fit, "glmer.nb.theta")`); `fit.objective` is the deviance function at that θ.
    `theta_start` (Python engine) starts the search there instead (lme4 cannot). A θ that runs
    to the end of its interval (upper end: the Poisson limit) is a warning in `fit.messages`.
    """
    if theta_start is not None:
        from mixbridge.python_impl.spec import check_nb_theta

        theta_start = check_nb_theta(theta_start, "theta_start")
    if is_dask(data):
        raise ArgumentError(
            "glmer_nb needs the data in memory; compute() the Dask DataFrame", "data"
        )
    g = _glmer_inputs(
        formula, data, "negative.binomial", link, nagq, weights, offset, engine, control
    )
    # an engine without glmer_nb: the registry's clear error (engines.call)
    fit = engines.call(
        engine,
        "glmer_nb",
        formula,
        g.data,
        link=link,
        nagq=g.nagq,
        weights=g.weights,
        offset=g.offset,
        control=g.control,
        theta_start=theta_start,
        **_r_options(engine, transport, timeout),
        **g.prepared,
    )
    fit.call = FitCall(
        "glmer", formula, g.data, reml=False, family="negative.binomial", link=link,
        nagq=int(g.nagq), weights=g.weights, offset=g.offset, nb_theta=fit.nb_theta,
    )  # fmt: skip
    return fit


@dataclass
class _GlmerInputs:
    """glmer's checked inputs: the data as the engine takes them, nagq, the checked control,
    the engine implementation and its extra keyword arguments (the evaluated model frame)."""

    data: Any
    weights: Any
    offset: Any
    nagq: int
    control: Any
    engine: Any
    prepared: dict[str, Any]


def _glmer_inputs(
    formula: str,
    data: DataLike,
    family: str,
    link: str | None,
    nagq: int,
    weights: ArrayOrColumn,
    offset: ArrayOrColumn,
    engine: str,
    control: Mapping[str, Any] | None,
) -> _GlmerInputs:
    """glmer's and glmer_nb's input handling: nagq and control checked, the data read (or a
    Dask DataFrame checked for its engine), the model frame evaluated once."""
    nagq = check_nagq(nagq)
    ctrl = check_control("glmer", control, _engine_name(engine))
    if is_dask(data):
        impl = _dask_engine(engine)
        check_dask_inputs("glmer", formula, data, weights=weights, offset=offset)
        return _GlmerInputs(data, weights, offset, nagq, ctrl, impl, {})
    data, weights, offset = _inputs(data, formula, weights, offset)
    frame = check_inputs(
        "glmer", formula, data, weights=weights, offset=offset, family=family, link=link,
        nagq=nagq,
    )  # fmt: skip
    return _GlmerInputs(
        data, weights, offset, nagq, ctrl, engines.get(engine), _prepared(engine, frame)
    )


def _nb_theta_argument(family: str, theta: Any, name: str = "theta") -> dict[str, float]:
    """`theta=` of glmer: MASS's negative.binomial(theta), given exactly when the family is
    "negative.binomial" (ArgumentError naming `theta` otherwise); the engines' `nb_theta`."""
    from mixbridge.python_impl.spec import check_nb_theta

    if family == "negative.binomial":
        if theta is None:
            raise ArgumentError(
                f"family='negative.binomial' needs {name}= (MASS's negative.binomial(theta)); "
                "glmer_nb estimates it",
                name,
            )
        return {"nb_theta": check_nb_theta(theta, name)}
    if theta is not None:
        raise ArgumentError(
            f"{name}= is the negative.binomial family's parameter; family is {family!r}", name
        )
    return {}


@named_arguments
def bayesglm(
    formula: str,
    data: DataLike,
    family: str = "gaussian",
    link: str | None = None,
    weights: ArrayOrColumn = None,
    offset: ArrayOrColumn = None,
    prior_mean: float | Sequence[float] = 0.0,
    prior_scale: float | Sequence[float] | None = None,
    prior_df: float | Sequence[float] = 1.0,
    prior_mean_for_intercept: float = 0.0,
    prior_scale_for_intercept: float | None = None,
    prior_df_for_intercept: float = 1.0,
    min_prior_scale: float = 1e-12,
    scaled: bool = True,
    drop_baseline: bool = True,
    maxit: int = 100,
    epsilon: float = 1e-8,
    dispersion: float | None = None,
    *,
    engine: str = "python",
    transport: str | None = None,
    timeout: float | None = None,
) -> BayesGLMFit:
    """Fit arm's `bayesglm` (weakly informative t priors on the coefficients).

    `dispersion` (an extension, not in arm) holds the dispersion fixed, e.g. at lmer's sigma^2.
    """
    family = check_family_name(family, "bayesglm")
    scaled = check_flag(scaled, "scaled")
    drop_baseline = check_flag(drop_baseline, "drop_baseline")
    data, weights, offset = _inputs(data, formula, weights, offset)
    frame = check_inputs(
        "bayesglm", formula, data, weights=weights, offset=offset, family=family, link=link
    )
    prior = dict(
        prior_mean=prior_mean,
        prior_scale=prior_scale,
        prior_df=prior_df,
        prior_mean_for_intercept=prior_mean_for_intercept,
        prior_scale_for_intercept=prior_scale_for_intercept,
        prior_df_for_intercept=prior_df_for_intercept,
        min_prior_scale=min_prior_scale,
        scaled=scaled,
        drop_baseline=drop_baseline,
        maxit=maxit,
        epsilon=epsilon,
        dispersion=dispersion,
    )
    check_bayesglm_args(**prior)
    check_bayesglm_terms(frame, drop_baseline, prior)
    return engines.get(engine).bayesglm(
        formula,
        data,
        family=family,
        link=link,
        weights=weights,
        offset=offset,
        **prior,
        **_r_options(engine, transport, timeout),
        **_prepared(engine, frame),
    )


@named_arguments
def lmer_objective(
    formula: str,
    data: DataLike,
    theta: Sequence[float] | np.ndarray,
    reml: bool = True,
    weights: ArrayOrColumn = None,
    offset: ArrayOrColumn = None,
    *,
    engine: str = "python",
    transport: str | None = None,
    timeout: float | None = None,
) -> float:
    """lme4's deviance function (REML criterion or ML deviance) at `theta`, optimizer-free."""
    reml = check_flag(reml, "reml")
    theta = _numbers(theta, "theta")
    data, weights, offset = _inputs(data, formula, weights, offset)
    frame = check_inputs("lmer", formula, data, weights=weights, offset=offset)
    check_theta_length(frame, theta, "theta")
    return float(
        engines.get(engine).lmer_objective(
            formula,
            data,
            theta=theta,
            reml=reml,
            weights=weights,
            offset=offset,
            **_r_options(engine, transport, timeout),
            **_prepared(engine, frame),
        )
    )


@named_arguments
def glmer_objective(
    formula: str,
    data: DataLike,
    theta: Sequence[float] | np.ndarray,
    beta: Sequence[float] | np.ndarray,
    family: str = "binomial",
    link: str | None = None,
    nagq: int = 1,
    weights: ArrayOrColumn = None,
    offset: ArrayOrColumn = None,
    *,
    engine: str = "python",
    transport: str | None = None,
    timeout: float | None = None,
    control: Mapping[str, Any] | None = None,
    nb_theta: float | None = None,
) -> float:
    """glmer's deviance function (Laplace or AGQ) at (theta, beta), optimizer-free.

    `nb_theta`: θ of family "negative.binomial" (glmer's `theta=`; `theta` here is the
    random-effects θ).

    The function `glmer` with the same arguments minimizes: at its estimates this is
    `fit.criterion` (nAGQ > 1: plus 2·fit.loglik_constant on the Python engine),
    anywhere `fit.objective(theta, beta)`. `control={"tol_pwrss": ...}` sets the PIRLS tolerance
    (lme4's `tolPwrss`; default lme4's 1e-7, on the Python engine 1e-12 — the converged
    deviance — from `GRADIENT_MIN_ROWS` = 50,000 rows, see `fit.optimizer["tol_pwrss"]`).
    """
    family = check_family_name(family, "glmer")
    nagq = check_nagq(nagq)
    ctrl = check_control("glmer", control, _engine_name(engine))
    theta = _numbers(theta, "theta")
    beta = _numbers(beta, "beta")
    data, weights, offset = _inputs(data, formula, weights, offset)
    frame = check_inputs(
        "glmer", formula, data, weights=weights, offset=offset, family=family, link=link, nagq=nagq
    )
    check_theta_length(frame, theta, "theta")
    nb = _nb_theta_argument(family, nb_theta, "nb_theta")
    return float(
        engines.get(engine).glmer_objective(
            formula,
            data,
            theta=theta,
            beta=beta,
            family=family,
            link=link,
            nagq=nagq,
            weights=weights,
            offset=offset,
            control=ctrl,
            **_r_options(engine, transport, timeout),
            **_prepared(engine, frame),
            **nb,
        )
    )


def _dask_engine(engine: str) -> Any:
    """The engine, which must be registered as fitting Dask data (`engines.accepts`)."""
    impl = engines.get(engine)
    if not engines.accepts(engine, "dask"):
        fits = [e for e in engines.available() if engines.accepts(e, "dask")]
        raise ArgumentError(
            f"engine={engine!r} cannot fit a Dask DataFrame: engines that fit Dask data: "
            f"{', '.join(repr(e) for e in fits)} (engine='python': out of core, single "
            f"(1 | g) term); call .compute() to fit a pandas DataFrame with engine={engine!r}",
            "engine",
        )
    return impl


def _engine_name(engine: Any) -> str:
    if not isinstance(engine, str):
        raise ArgumentError(
            f"engine must be an engine name such as 'python' or 'r', got {engine!r}", "engine"
        )
    return engine


def _numbers(value: Any, name: str) -> np.ndarray:
    """A parameter vector (theta, beta) as finite floats."""
    try:
        arr = np.atleast_1d(np.asarray(value, dtype=float)).ravel()
    except (TypeError, ValueError):
        raise ArgumentError(f"{name} must be a vector of numbers, got {value!r}", name) from None
    if not np.all(np.isfinite(arr)):
        raise ArgumentError(f"{name} must be finite, got {value!r}", name)
    return arr


def _prepared(engine: str, frame: Any) -> dict[str, Any]:
    """The Python engine builds its model terms from the frame the input checks evaluated."""
    return {"frame": frame} if engine == "python" else {}


def _r_options(engine: str, transport: str | None, timeout: Any) -> dict[str, Any]:
    """transport= and timeout= belong to the R engine; elsewhere they are an error.

    transport: None (embedded, or the subprocess transport with a warning when rpy2 cannot
    start this R), "embedded" or "subprocess". timeout: seconds an R call may take.
    """
    from mixbridge.errors import ArgumentError

    if engine == "r":
        from mixbridge.bridge import check_timeout

        if transport is not None and (
            not isinstance(transport, str) or transport not in ("embedded", "subprocess")
        ):
            raise ArgumentError(
                f"transport must be 'embedded' or 'subprocess', got {transport!r}", "transport"
            )
        return {"transport": transport, "timeout": check_timeout(timeout)}
    if transport is not None:
        raise ArgumentError(f"transport= applies only to engine='r', not {engine!r}", "transport")
    if timeout is not None:
        raise ArgumentError(f"timeout= applies only to engine='r', not {engine!r}", "timeout")
    return {}
