"""engine="statsmodels": statsmodels' MixedLM mapped onto lme4's MixedFit.

What it can fit: `lmer` with ONE grouping factor and one correlated term, `(1|g)` or
`(1 + x|g)` / `(x|g)` (random intercept and slopes), REML or ML, no weights or offset.
What it cannot (ArgumentError says so): crossed or nested factors, several terms, `||`,
no-intercept random terms, weights, offsets, glmer, bayesglm.

Mapping: fixef names to R's (Intercept -> (Intercept), period[T.2] -> period2); θ = the lower
Cholesky factor of cov_re/scale in lme4's column-major order; varcorr as as.data.frame(VarCorr);
ranef = random_effects; cond_var = random_effects_cov (Var(b | y) with β known, lme4's condVar);
loglik = llf (restricted for REML); df/AIC/BIC with lme4's df = p + len(θ) + 1. The objective
(-2 x statsmodels' profiled log-likelihood at θ) is exposed for the flat-optimum checks.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd

from mixbridge.conformance.adapters import (
    r_coef_name,
    split_formula,
    theta_from_cov,
    theta_names,
    varcorr_frame,
)
from mixbridge.errors import ArgumentError, DataError
from mixbridge.results import Message, MixedFit

NAME = "statsmodels"


def _spec(formula: str, weights: Any, offset: Any) -> tuple[str, str, str, str]:
    lhs, fixed, bars = split_formula(formula)
    if weights is not None or offset is not None:
        raise ArgumentError("engine 'statsmodels' (MixedLM) supports no weights or offset", NAME)
    if len(bars) != 1:
        raise ArgumentError(
            f"engine 'statsmodels' fits exactly one random-effects term, got {len(bars)} in "
            f"{formula!r} (MixedLM cannot express crossed/nested or several terms)",
            NAME,
        )
    re_expr, group, double = bars[0]
    if double:
        raise ArgumentError("engine 'statsmodels' cannot fit uncorrelated '||' terms", NAME)
    if "/" in group or ":" in group:
        raise ArgumentError(f"engine 'statsmodels' cannot fit nested grouping {group!r}", NAME)
    parts = [p.strip() for p in re_expr.split("+")]
    if "0" in parts or "-1" in parts:
        raise ArgumentError("engine 'statsmodels' needs an intercept in the random term", NAME)
    slopes = [p for p in parts if p not in ("1", "")]
    re_formula = "~" + (" + ".join(slopes) if slopes else "1")
    return lhs, fixed, group, re_formula


def _prepare(formula: str, data: pd.DataFrame, weights: Any, offset: Any) -> tuple[Any, ...]:
    import statsmodels.formula.api as smf

    lhs, fixed, group, re_formula = _spec(formula, weights, offset)
    if group not in data.columns:
        raise DataError(f"grouping column {group!r} not in data", group)
    frame = data.dropna().copy()
    levels = (
        [str(x) for x in frame[group].cat.remove_unused_categories().cat.categories]
        if isinstance(frame[group].dtype, pd.CategoricalDtype)
        else [str(x) for x in sorted(frame[group].unique())]
    )
    frame["_mb_group"] = frame[group].astype(str)
    model = smf.mixedlm(f"{lhs} ~ {fixed}", frame, groups=frame["_mb_group"],
                        re_formula=re_formula)  # fmt: skip
    return model, frame, group, levels


def _criterion(model: Any, theta: np.ndarray, q: int) -> float:
    """-2 x MixedLM's log-likelihood with β and σ² profiled out, at lme4's θ."""
    from statsmodels.regression.mixed_linear_model import MixedLMParams

    T = np.zeros((q, q))
    k = 0
    for j in range(q):
        for i in range(j, q):
            T[i, j] = theta[k]
            k += 1
    params = MixedLMParams.from_components(
        fe_params=np.zeros(model.k_fe), cov_re=T @ T.T, vcomp=np.zeros(0)
    )
    return float(-2.0 * model.loglike(params, profile_fe=True))


def lmer(
    formula: str,
    data: pd.DataFrame,
    *,
    reml: bool = True,
    weights: Any = None,
    offset: Any = None,
    control: dict | None = None,
    **_: Any,
) -> MixedFit:
    import statsmodels

    model, frame, group, levels = _prepare(formula, data, weights, offset)
    messages: list[Message] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = model.fit(reml=reml, method=(control or {}).get("method", ["lbfgs"]))
    for w in caught:
        messages.append(Message("warning", str(w.message), NAME, code=type(w.message).__name__))
    fe_names = list(model.exog_names)
    r_names = [r_coef_name(n) for n in fe_names]
    fixef = pd.Series(np.asarray(result.fe_params, dtype=float), index=r_names)
    cov = result.cov_params().loc[fe_names, fe_names].to_numpy(dtype=float)
    vcov = pd.DataFrame(cov, index=r_names, columns=r_names)
    scale = float(result.scale)
    sigma = math.sqrt(scale)
    re_names = _re_names(model)
    q = len(re_names)
    cov_re = np.asarray(result.cov_re, dtype=float).reshape(q, q)
    theta = theta_from_cov(cov_re / scale)
    ranef_raw = result.random_effects
    ranef = pd.DataFrame(
        [np.asarray(ranef_raw[lv], dtype=float)[:q] for lv in levels],
        index=levels,
        columns=re_names,
    )
    re_cov = result.random_effects_cov
    cond_var = np.stack([np.asarray(re_cov[lv], dtype=float)[:q, :q] for lv in levels])
    n = int(model.nobs)
    p = len(fe_names)
    df = p + len(theta) + 1
    loglik = float(result.llf)
    singular = bool(any(theta[i] < 1e-4 for i in _diag_index(q)))
    fitted = np.asarray(result.fittedvalues, dtype=float)
    fit = MixedFit(
        model="lmer",
        formula=formula,
        family="gaussian",
        link="identity",
        reml=bool(reml),
        fixef=fixef,
        vcov=vcov,
        theta=theta,
        theta_names=theta_names(group, re_names),
        varcorr=varcorr_frame(group, re_names, cov_re, sigma),
        sigma=sigma,
        ranef={group: ranef},
        cond_var={group: cond_var},
        loglik=loglik,
        df=df,
        deviance=-2.0 * loglik if not reml else math.nan,
        reml_criterion=-2.0 * loglik if reml else None,
        aic=-2.0 * loglik + 2 * df,
        bic=-2.0 * loglik + df * math.log(n),
        nobs=n,
        ngroups={group: len(levels)},
        fitted=fitted,
        residuals=np.asarray(model.endog, dtype=float) - fitted,
        singular=singular,
        converged=bool(result.converged),
        messages=messages,
        engine=NAME,
        versions={"statsmodels": statsmodels.__version__},
        optimizer={"method": result.method if hasattr(result, "method") else "lbfgs"},
    )
    fit.attach(objective=lambda th: _criterion(model, np.asarray(th, dtype=float), q))
    return fit


def lmer_objective(
    formula: str,
    data: pd.DataFrame,
    *,
    theta: np.ndarray,
    reml: bool = True,
    weights: Any = None,
    offset: Any = None,
    **_: Any,
) -> float:
    model, _frame, _group, _levels = _prepare(formula, data, weights, offset)
    if model.reml != reml:
        model.reml = bool(reml)
    q = len(_re_names(model))
    return _criterion(model, np.asarray(theta, dtype=float), q)


def _re_names(model: Any) -> list[str]:
    # statsmodels calls the random intercept "Group"
    names = list(model.data.exog_re_names)
    return ["(Intercept)" if n in ("Group", "Intercept") else r_coef_name(n) for n in names]


def _diag_index(q: int) -> list[int]:
    out, k = [], 0
    for j in range(q):
        for i in range(j, q):
            if i == j:
                out.append(k)
            k += 1
    return out


def glmer(*_: Any, **__: Any) -> MixedFit:
    raise ArgumentError("engine 'statsmodels' cannot fit glmer (MixedLM is Gaussian only)", NAME)


def bayesglm(*_: Any, **__: Any) -> Any:
    raise ArgumentError("engine 'statsmodels' has no bayesglm", NAME)
