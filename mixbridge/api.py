"""The public fitting calls. Each validates its input once, then hands it to an engine.

Engines live behind a registry (`mixbridge.engines`): "python" (default, pure numpy/scipy),
"r" (lme4/arm through the bridge) and adapters such as "statsmodels". Every engine returns the
same result types (`MixedFit`, `BayesGLMFit`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from mixbridge import engines
from mixbridge.checks import check_bayesglm_args, check_inputs
from mixbridge.results import BayesGLMFit, FitCall, MixedFit

ArrayOrColumn = str | Sequence[float] | np.ndarray | pd.Series | None


def _is_dask(data: Any) -> bool:
    return type(data).__module__.startswith("dask")


def lmer(
    formula: str,
    data: pd.DataFrame,
    reml: bool = True,
    weights: ArrayOrColumn = None,
    offset: ArrayOrColumn = None,
    *,
    engine: str = "python",
    transport: str = "embedded",
    control: Mapping[str, Any] | None = None,
) -> MixedFit:
    """Fit a linear mixed model like lme4's `lmer(formula, data, REML = reml)`.

    `weights` and `offset` are column names or arrays (one value per row of `data`). A Dask
    DataFrame is accepted for models whose random part is a single `(1|g)` term.
    """
    if _is_dask(data):
        from mixbridge.python_impl.distributed import lmer_dask

        return lmer_dask(formula, data, reml=reml, weights=weights, offset=offset)
    frame = check_inputs("lmer", formula, data, weights=weights, offset=offset)
    fit = engines.get(engine).lmer(
        formula,
        data,
        reml=bool(reml),
        weights=weights,
        offset=offset,
        control=dict(control or {}),
        **_transport(engine, transport),
        **_prepared(engine, frame),
    )
    fit.call = FitCall("lmer", formula, data, reml=bool(reml), weights=weights, offset=offset)
    return fit


def glmer(
    formula: str,
    data: pd.DataFrame,
    family: str = "binomial",
    link: str | None = None,
    nagq: int = 1,
    weights: ArrayOrColumn = None,
    offset: ArrayOrColumn = None,
    *,
    engine: str = "python",
    transport: str = "embedded",
    control: Mapping[str, Any] | None = None,
) -> MixedFit:
    """Fit a generalized linear mixed model like lme4's `glmer(..., family, nAGQ = nagq)`."""
    frame = check_inputs(
        "glmer", formula, data, weights=weights, offset=offset, family=family, link=link
    )
    if not isinstance(nagq, (int, np.integer)) or isinstance(nagq, bool) or not 0 <= nagq <= 100:
        from mixbridge.errors import ArgumentError

        raise ArgumentError(f"nagq must be an integer from 0 to 100, got {nagq!r}", "nagq")
    fit = engines.get(engine).glmer(
        formula,
        data,
        family=family,
        link=link,
        nagq=int(nagq),
        weights=weights,
        offset=offset,
        control=dict(control or {}),
        **_transport(engine, transport),
        **_prepared(engine, frame),
    )
    fit.call = FitCall(
        "glmer", formula, data, reml=False, family=family, link=link, nagq=int(nagq),
        weights=weights, offset=offset,
    )  # fmt: skip
    return fit


def bayesglm(
    formula: str,
    data: pd.DataFrame,
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
    transport: str = "embedded",
) -> BayesGLMFit:
    """Fit arm's `bayesglm` (weakly informative t priors on the coefficients).

    `dispersion` (an extension, not in arm) holds the dispersion fixed, e.g. at lmer's sigma^2.
    """
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
    return engines.get(engine).bayesglm(
        formula,
        data,
        family=family,
        link=link,
        weights=weights,
        offset=offset,
        **prior,
        **_transport(engine, transport),
        **_prepared(engine, frame),
    )


def lmer_objective(
    formula: str,
    data: pd.DataFrame,
    theta: Sequence[float] | np.ndarray,
    reml: bool = True,
    weights: ArrayOrColumn = None,
    offset: ArrayOrColumn = None,
    *,
    engine: str = "python",
    transport: str = "embedded",
) -> float:
    """lme4's deviance function (REML criterion or ML deviance) at `theta`, optimizer-free."""
    frame = check_inputs("lmer", formula, data, weights=weights, offset=offset)
    return float(
        engines.get(engine).lmer_objective(
            formula,
            data,
            theta=np.asarray(theta, dtype=float),
            reml=bool(reml),
            weights=weights,
            offset=offset,
            **_transport(engine, transport),
            **_prepared(engine, frame),
        )
    )


def glmer_objective(
    formula: str,
    data: pd.DataFrame,
    theta: Sequence[float] | np.ndarray,
    beta: Sequence[float] | np.ndarray,
    family: str = "binomial",
    link: str | None = None,
    nagq: int = 1,
    weights: ArrayOrColumn = None,
    offset: ArrayOrColumn = None,
    *,
    engine: str = "python",
    transport: str = "embedded",
    control: Mapping[str, Any] | None = None,
) -> float:
    """glmer's deviance function (Laplace or AGQ) at (theta, beta), optimizer-free.

    `control={"tol_pwrss": 1e-12}` tightens the PIRLS tolerance (lme4's `tolPwrss`).
    """
    frame = check_inputs(
        "glmer", formula, data, weights=weights, offset=offset, family=family, link=link
    )
    return float(
        engines.get(engine).glmer_objective(
            formula,
            data,
            theta=np.asarray(theta, dtype=float),
            beta=np.asarray(beta, dtype=float),
            family=family,
            link=link,
            nagq=int(nagq),
            weights=weights,
            offset=offset,
            control=dict(control or {}),
            **_transport(engine, transport),
            **_prepared(engine, frame),
        )
    )


def _prepared(engine: str, frame: Any) -> dict[str, Any]:
    """The Python engine builds its model terms from the frame the input checks evaluated."""
    return {"frame": frame} if engine == "python" else {}


def _transport(engine: str, transport: str) -> dict[str, str]:
    """Only the R engine takes a transport; passing a non-default one elsewhere is an error."""
    if engine == "r":
        if transport not in ("embedded", "subprocess"):
            from mixbridge.errors import ArgumentError

            raise ArgumentError(
                f"transport must be 'embedded' or 'subprocess', got {transport!r}", "transport"
            )
        return {"transport": transport}
    if transport != "embedded":
        from mixbridge.errors import ArgumentError

        raise ArgumentError(f"transport= applies only to engine='r', not {engine!r}", "transport")
    return {}
