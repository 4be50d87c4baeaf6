"""What summary.glm and display() report for a bayesglm fit (bayesglm_spec §6-§7).

Two dispersions, two sets of standard errors: `se` (summary.glm, vcov) use the Pearson
dispersion sum(w r^2)/(n - p) for families with a dispersion; `se_display` (display(), print(),
sim()) use the fit's own EM dispersion. Both scale the same V of the last augmented solve. Also
the null deviance (with an offset and an intercept: a refit of the intercept alone, arm's way)
and glm's aic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mixbridge.python_impl.bayesglm.dense import DenseDesign
from mixbridge.python_impl.bayesglm.irls import (
    CoreFit,
    IterationControl,
    ResponseData,
    fit_bayesglm_core,
)
from mixbridge.python_impl.bayesglm.priors import PriorSpec
from mixbridge.python_impl.families import Family
from mixbridge.results import Message

# Above this many coefficients the full p x p vcov is not formed (se/se_display still are).
VCOV_MAX_COEFS = 2000


@dataclass
class CoreSummary:
    """What the summary adds to the iteration's CoreFit."""

    se: np.ndarray
    se_display: np.ndarray
    vcov: np.ndarray | None  # V * dispersion_pearson (summary.glm's cov.scaled)
    dispersion_pearson: float
    null_deviance: float
    aic: float
    df_residual: int
    n_ok: int
    messages: list[Message]


def fit_null_model(
    data: ResponseData,
    *,
    family: Family,
    has_intercept: bool,
    prior: PriorSpec,
    control: IterationControl,
) -> CoreFit | None:
    """bayesglm.fit of the intercept alone with the offset, whose deviance is the null deviance
    when the model has both (None otherwise: the null deviance needs no fit)."""
    if data.offset is None or not has_intercept:
        return None
    return fit_bayesglm_core(
        DenseDesign(np.ones((len(data.y), 1))),
        data,
        family=family,
        has_intercept=True,
        prior=prior.intercept_only(),
        control=control,
    )


def summarize_core(
    core: CoreFit,
    *,
    family: Family,
    has_intercept: bool,
    offset: np.ndarray | None,
    null_fit: CoreFit | None,
) -> CoreSummary:
    """summary.glm / display() quantities, the null deviance and glm's aic. `null_fit`: the
    intercept-only refit (`fit_null_model`) when there is an offset and an intercept."""
    p = len(core.coef)
    rank = p  # the augmented fit always has full rank here (rank deficiency raises earlier)
    weights = core.prior_weights
    n_ok = int(np.sum(weights != 0))
    df_res = n_ok - rank
    messages: list[Message] = []
    pearson_default = 1.0 if not family.has_dispersion else float("nan")
    used = core.working_weights > 0
    if core.dispersion_fixed:
        pearson = core.dispersion  # summary() at the fixed phi, like display()
    elif family.has_dispersion and df_res > 0:
        pearson = float(
            np.sum(core.working_weights[used] * core.working_residuals[used] ** 2) / df_res
        )
    else:
        pearson = pearson_default
    diag_v = core.v.diag_v
    if core.dispersion_fixed:
        se = se_display = np.sqrt(diag_v * core.dispersion)
    else:
        se = np.sqrt(diag_v * pearson)
        se_display = np.sqrt(diag_v * core.dispersion)
    vcov = core.v.full_v(pearson) if p <= VCOV_MAX_COEFS else None

    if null_fit is not None:
        if not null_fit.converged:
            messages.append(
                Message(
                    "warning",
                    "fitting to calculate the null deviance did not converge -- increase 'maxit'?",
                    "python",
                    code="convergence",
                )
            )
        null_dev = null_fit.deviance
    else:
        if has_intercept:
            wtdmu = float(np.sum(weights * core.y) / np.sum(weights))
        else:
            offset_arr = np.zeros(len(core.y)) if offset is None else offset
            wtdmu = family.linkinv(offset_arr)
        null_dev = float(np.sum(family.dev_resids(core.y, wtdmu, weights)))
    aic = family.aic(core.y, core.n_trials, core.mu, weights, core.deviance) + 2 * rank
    return CoreSummary(
        se=se,
        se_display=se_display,
        vcov=vcov,
        dispersion_pearson=pearson,
        null_deviance=null_dev,
        aic=aic,
        df_residual=df_res,
        n_ok=n_ok,
        messages=messages,
    )
