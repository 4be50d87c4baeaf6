"""The one builder of the Python engine's `MixedFit` (lme4's `mkMerMod`), for lmer (in memory,
O(G), Dask) and glmer alike: the estimates of a fit (`FitEstimates`) and its methods
(objective, predict, simulate) in, the result with lme4's names and derived quantities out
(theta names, VarCorr, ranef, logLik, AIC, BIC).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mixbridge.python_impl import output
from mixbridge.python_impl.output import TermLabels
from mixbridge.results import Deferred, Message, MixedFit


@dataclass
class FitEstimates:
    """What a fit estimated, in lme4's terms.

    `reterms`: the random-effects terms (their labels and sizes); `b` = Λũ, level-major per
    term; `lambda_blocks`: T_k per term; `sigma`: σ̂ (None: no residual scale, glmer);
    `vcov`: the fixed effects' covariance as reported; `criterion`: the minimized criterion for
    logLik (REML criterion, ML deviance or glmer's −2 logLik); `df`: logLik's df;
    `optimizer`: fit.optimizer (from the optimizers' records)."""

    model: str
    formula: str
    family: str
    link: str
    reml: bool
    reterms: list[TermLabels]
    x_names: list[str]
    nobs: int
    theta: np.ndarray
    beta: np.ndarray
    b: np.ndarray
    lambda_blocks: list[np.ndarray]
    sigma: float | None
    vcov: np.ndarray
    cond_var: dict[str, np.ndarray]
    criterion: float
    df: int
    deviance: float
    reml_criterion: float | None
    fitted: Any  # ndarray, or a lazy Dask collection
    residuals: Any
    singular: bool
    converged: bool
    messages: list[Message]
    optimizer: dict[str, Any]
    dropped_columns: list[str] = field(default_factory=list)
    nagq: int = 1
    vcov_rx: np.ndarray | None = None
    loglik_constant: float = 0.0
    nb_theta: float | None = None
    versions: dict[str, str] = field(default_factory=output.versions)


def build_fit(
    est: FitEstimates,
    *,
    objective: Callable[..., float] | None = None,
    predict: Callable[..., np.ndarray] | None = None,
    simulate: Callable[..., np.ndarray] | None = None,
    lazy_ranef: bool = False,
) -> MixedFit:
    """The MixedFit of `est`, with the engine's methods attached. `lazy_ranef`: the ranef
    frames (one labelled row per level) are built when first read (a `Deferred`)."""
    names = list(est.x_names)
    reterms = est.reterms
    gp = np.concatenate([[0], np.cumsum([t.n_levels * t.p for t in reterms])]).astype(int)
    lik = output.likelihood_summary(est.criterion, est.nobs, est.df)
    vcov_rx = est.vcov_rx
    fit = MixedFit(
        model=est.model,  # type: ignore[arg-type]
        formula=est.formula,
        family=est.family,
        link=est.link,
        reml=bool(est.reml),
        fixef=pd.Series(est.beta, index=names, dtype=float),
        vcov=pd.DataFrame(est.vcov, index=names, columns=names),
        theta=np.asarray(est.theta, dtype=float),
        theta_names=output.theta_names(reterms),
        varcorr=output.varcorr_frame(reterms, est.lambda_blocks, est.sigma),
        sigma=1.0 if est.sigma is None else float(est.sigma),
        ranef=(
            Deferred(lambda: output.ranef_frames(reterms, est.b, gp), source="ranef frames")
            if lazy_ranef
            else output.ranef_frames(reterms, est.b, gp)
        ),
        cond_var=est.cond_var,
        loglik=lik["loglik"],
        df=int(est.df),
        deviance=float(est.deviance),
        reml_criterion=None if est.reml_criterion is None else float(est.reml_criterion),
        aic=lik["aic"],
        bic=lik["bic"],
        nobs=int(est.nobs),
        ngroups=output.ngroups(reterms),
        fitted=est.fitted,
        residuals=est.residuals,
        singular=bool(est.singular),
        converged=bool(est.converged),
        messages=est.messages,
        engine="python",
        versions=est.versions,
        nagq=int(est.nagq),
        optimizer=est.optimizer,
        dropped_columns=list(est.dropped_columns),
        vcov_rx=None if vcov_rx is None else pd.DataFrame(vcov_rx, index=names, columns=names),
        loglik_constant=float(est.loglik_constant),
        nb_theta=est.nb_theta,
    )
    return fit.attach(objective=objective, predict=predict, simulate=simulate)


def b_from_u(reterms: list[TermLabels], tks: list[np.ndarray], u: np.ndarray) -> np.ndarray:
    """b = Λu, term by term (level-major blocks: B_k = U_k T_kᵀ)."""
    out, pos = [], 0
    for t, tk in zip(reterms, tks, strict=True):
        size = t.n_levels * t.p
        uk = np.asarray(u[pos : pos + size]).reshape(t.n_levels, t.p)
        out.append((uk @ tk.T).reshape(-1))
        pos += size
    return np.concatenate(out)
