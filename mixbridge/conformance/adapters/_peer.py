"""Shared mapping for PyPI peers (glmm, mixedlm): import guard, name mapping, result extraction.

These packages are optional and not installed in the project venv; the adapters are written
defensively against their documented lme4-like surfaces and say precisely what they could not map
instead of guessing.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from mixbridge.conformance.adapters import theta_from_cov, theta_names, varcorr_frame
from mixbridge.errors import ArgumentError
from mixbridge.results import MixedFit


def require(package: str, engine: str) -> Any:
    try:
        return importlib.import_module(package)
    except ImportError as exc:
        raise ArgumentError(
            f"engine {engine!r} needs the PyPI package {package!r}, which is not installed "
            f"({exc}); install it with: pip install {package}",
            "engine",
        ) from exc


def r_name(name: str, factor_levels: dict[str, list[str]] | None = None) -> str:
    """Peer coefficient names to R's: Intercept/(Intercept); `period.1` (0-based index of the
    non-baseline level) -> `period2` when the levels are known; `period[T.2]` -> `period2`."""
    if name.lower() in ("intercept", "(intercept)"):
        return "(Intercept)"
    m = re.match(r"^(.*)\[T\.(.*)\]$", name)
    if m:
        return m.group(1) + m.group(2)
    m = re.match(r"^(\w+)\.(\d+)$", name)
    if m and factor_levels and m.group(1) in factor_levels:
        levels = factor_levels[m.group(1)]  # levels[0] is the baseline; .1 is the 2nd level
        k = int(m.group(2))
        if 0 < k < len(levels):
            return m.group(1) + levels[k]
    return name


def factor_levels(frame: pd.DataFrame) -> dict[str, list[str]]:
    """Levels of every non-numeric column, in R's order (categories, else sorted values)."""
    return {
        c: [str(x) for x in pd.Categorical(frame[c]).categories]
        for c in frame.columns
        if not pd.api.types.is_numeric_dtype(frame[c])
    }


def _get(obj: Any, *names: str) -> Any:
    """The first attribute (called if callable) of `obj` among `names`."""
    for n in names:
        if hasattr(obj, n):
            v = getattr(obj, n)
            return v() if callable(v) else v
    raise ArgumentError(
        f"cannot map {type(obj).__name__} to MixedFit: none of {', '.join(names)} found", "engine"
    )


def to_mixed_fit(
    result: Any,
    *,
    engine: str,
    version: str,
    formula: str,
    reml: bool,
    group: str,
    levels: list[str],
    factor_levels: dict[str, list[str]],
    nobs: int,
    objective: Callable[..., float] | None = None,
) -> MixedFit:
    """Best-effort mapping of an lme4-like peer result (fixef, ranef, VarCorr/cov_re, sigma,
    logLik) onto MixedFit; anything missing raises ArgumentError naming it."""
    fe = pd.Series(_get(result, "fixef", "fe_params", "coefficients", "coef"))
    fixef = pd.Series(fe.to_numpy(dtype=float), index=[r_name(str(k), factor_levels)
                                                        for k in fe.index])  # fmt: skip
    vc = np.asarray(_get(result, "vcov", "cov_params", "vcov_beta"), dtype=float)
    vcov = pd.DataFrame(vc[: len(fixef), : len(fixef)], index=fixef.index, columns=fixef.index)
    sigma = float(_get(result, "sigma", "scale_sd", "residual_sd"))
    cov_re = np.atleast_2d(np.asarray(_get(result, "cov_re", "random_cov", "vc_matrix"), float))
    raw = _get(result, "ranef", "random_effects")
    if isinstance(raw, dict) and group in raw:
        raw = raw[group]
    ranef = pd.DataFrame(raw)
    if ranef.shape[0] != len(levels) and ranef.shape[1] == len(levels):
        ranef = ranef.T
    ranef.index = [str(x) for x in ranef.index]
    q = cov_re.shape[0]
    re_names = [r_name(str(c), factor_levels) for c in ranef.columns][:q]
    ranef.columns = re_names
    loglik = float(_get(result, "loglik", "llf", "logLik", "log_likelihood"))
    theta = theta_from_cov(cov_re / sigma**2)
    df = len(fixef) + len(theta) + 1
    try:
        cond = np.asarray(_get(result, "cond_var", "random_effects_cov", "postVar"), float)
    except ArgumentError:
        cond = np.full((len(levels), q, q), math.nan)
    return MixedFit(
        model="lmer", formula=formula, family="gaussian", link="identity", reml=reml,
        fixef=fixef, vcov=vcov, theta=theta, theta_names=theta_names(group, re_names),
        varcorr=varcorr_frame(group, re_names, cov_re, sigma), sigma=sigma,
        ranef={group: ranef}, cond_var={group: cond.reshape(len(levels), q, q)},
        loglik=loglik, df=df, deviance=math.nan if reml else -2 * loglik,
        reml_criterion=-2 * loglik if reml else None, aic=-2 * loglik + 2 * df,
        bic=-2 * loglik + df * math.log(nobs), nobs=nobs, ngroups={group: len(levels)},
        fitted=np.full(nobs, math.nan), residuals=np.full(nobs, math.nan),
        singular=bool(np.any(np.diag(cov_re) < 1e-8 * sigma**2)),
        converged=bool(getattr(result, "converged", True)), messages=[], engine=engine,
        versions={engine: version}, _objective=objective,
    )  # fmt: skip
