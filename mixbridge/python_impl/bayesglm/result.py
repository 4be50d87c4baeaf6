"""The BayesGLMFit of a python-engine bayesglm fit, from the iteration and its summary."""

from __future__ import annotations

import functools
import importlib.metadata
import platform
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy

from mixbridge.errors import DataError
from mixbridge.python_impl.bayesglm.irls import CoreFit
from mixbridge.python_impl.bayesglm.summary import VCOV_MAX_COEFS, CoreSummary
from mixbridge.python_impl.families import Family
from mixbridge.results import BayesGLMFit, Message, emit_warnings


@functools.cache
def _versions() -> dict[str, str]:
    try:
        mine = importlib.metadata.version("mixbridge")
    except importlib.metadata.PackageNotFoundError:
        mine = "unknown"
    return {
        "mixbridge": mine,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
    }


def build_fit(
    core: CoreFit,
    summ: CoreSummary,
    *,
    family: Family,
    x_names: Sequence[str],
    formula: str,
    extra_messages: Sequence[Message] = (),
) -> BayesGLMFit:
    """The result object: coefficients and their tables named by X's columns, the messages of
    every stage (emitted as Python warnings), and in `extra` the per-row working quantities and
    the iteration path."""
    names = [str(s) for s in x_names]
    if len(names) != len(core.coef):
        raise DataError(f"{len(names)} coefficient names for {len(core.coef)} columns", "x_names")
    index = pd.Index(names)  # built once: with many levels, string Index construction is costly
    messages = list(extra_messages) + core.messages + summ.messages
    if summ.vcov is None:
        vcov = None
        messages.append(
            Message(
                "note",
                f"vcov not formed for {len(names)} coefficients (more than {VCOV_MAX_COEFS}); "
                "se and se_display are exact",
                "python",
                code="vcov_omitted",
            )
        )
    else:
        vcov = pd.DataFrame(summ.vcov, index=index, columns=index, copy=False)
    emit_warnings(messages)
    return BayesGLMFit(
        formula=formula,
        family=family.family,
        link=family.link,
        coef=pd.Series(core.coef, index=index),
        se=pd.Series(summ.se, index=index),
        se_display=pd.Series(summ.se_display, index=index),
        vcov=vcov,  # type: ignore[arg-type]
        dispersion=float(core.dispersion),
        dispersion_pearson=float(summ.dispersion_pearson),
        deviance=float(core.deviance),
        null_deviance=float(summ.null_deviance),
        aic=float(summ.aic),
        df_residual=int(summ.df_residual),
        iterations=int(core.iterations),
        converged=bool(core.converged),
        prior_mean=core.priors.mean,
        prior_scale=core.prior_scale_final,
        prior_df=core.priors.df,
        prior_sd=core.prior_sd,
        fitted=core.mu,
        nobs=summ.n_ok,
        messages=messages,
        engine="python",
        versions=dict(_versions()),
        extra={
            "linear_predictors": core.eta,
            "working_weights": core.working_weights,
            "working_residuals": core.working_residuals,
            "prior_weights": core.prior_weights,
            "y": core.y,  # response as fitted (binomial: proportions), for conformance checks
            "n_trials": core.n_trials,
            "vcov_unscaled_diag": core.v.diag_v,
            "solver": type(core.design).__name__,
            "boundary": core.boundary,
            "deviance_path": [d for d, _ in core.path],
            "dispersion_path": [ph for _, ph in core.path],
        },
    )
