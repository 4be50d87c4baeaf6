"""The fixed effects' coefficient table (lmerTest's summary; lme4's for glmer and ddf="lme4").

Columns estimate, std_error, df, statistic, p_value, indexed by lme4's coefficient names. lmer
with Satterthwaite or Kenward–Roger df comes from the engine (`FitMethods.tests`: the Python
engine's `python_tests`, the R engine's lmerTest); lme4's t table and glmer's Wald z table only
need the fit's estimates and vcov.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import stats

from mixbridge.errors import ArgumentError
from mixbridge.inference.engine_tests import check_ddf, engine_tests

if TYPE_CHECKING:
    from mixbridge.results import MixedFit

COLUMNS = ["estimate", "std_error", "df", "statistic", "p_value"]


def wald_table(fit: MixedFit, *, normal: bool) -> pd.DataFrame:
    """lme4's summary table: t values without df (lmer) or Wald z tests (glmer)."""
    est = fit.fixef.to_numpy(dtype=float)
    se = fit.fixef_se.reindex(fit.fixef.index).to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        stat = est / se
    df = np.full(est.size, np.nan)
    p = 2.0 * stats.norm.sf(np.abs(stat)) if normal else np.full(est.size, np.nan)
    return pd.DataFrame(
        {"estimate": est, "std_error": se, "df": df, "statistic": stat, "p_value": p},
        index=pd.Index(list(fit.fixef.index)),
    )


def t_table(names: list[str], est: np.ndarray, se: np.ndarray, df: np.ndarray) -> pd.DataFrame:
    """lmerTest's contest1D table: t = estimate/se, p = 2·P(T_df > |t|)."""
    est, se, df = (np.asarray(a, dtype=float) for a in (est, se, df))
    with np.errstate(divide="ignore", invalid="ignore"):
        stat = est / se
    p = 2.0 * stats.t.sf(np.abs(stat), df)
    return pd.DataFrame(
        {"estimate": est, "std_error": se, "df": df, "statistic": stat, "p_value": p},
        index=pd.Index(names),
    )


def coef_table(fit: MixedFit, ddf: str = "satterthwaite") -> pd.DataFrame:
    """See `MixedFit.coef_table`."""
    method = check_ddf(ddf)
    if fit.model == "glmer":
        if method == "kenward-roger":
            raise ArgumentError(
                "ddf='kenward-roger' applies to lmer fits only (glmer: Wald z tests)", "ddf"
            )
        return wald_table(fit, normal=True)
    if method == "lme4":
        return wald_table(fit, normal=False)
    table = engine_tests(fit, method, "coef_table()")(fit, "coef_table", method, None)
    return table[COLUMNS]


def coef_table_at(
    formula: str,
    data: object,
    *,
    theta: object,
    sigma: float,
    reml: bool = True,
    ddf: str = "satterthwaite",
    weights: object = None,
    offset: object = None,
) -> pd.DataFrame:
    """The Python engine's coefficient table at given (θ, σ), without optimizing: β and vcov(β)
    are lme4's at that θ, the df are computed there (the optimizer-free check against lmerTest
    at lme4's own parameters, as `lmer_objective` is for the criterion)."""
    tests, point = _tests_at(formula, data, theta, sigma, reml, weights, offset)
    method = check_ddf(ddf, ("satterthwaite", "kenward-roger"))
    return tests(point, "coef_table", method, None)[COLUMNS]


def anova_at(
    formula: str,
    data: object,
    *,
    theta: object,
    sigma: float,
    reml: bool = True,
    type: object = 3,  # noqa: A002 - lmerTest's argument name
    ddf: str = "satterthwaite",
    weights: object = None,
    offset: object = None,
) -> pd.DataFrame:
    """lmerTest's anova() table at given (θ, σ), without optimizing (see `coef_table_at`)."""
    from mixbridge.inference.term_anova import COLUMNS as ANOVA_COLUMNS
    from mixbridge.inference.term_anova import check_type

    tests, point = _tests_at(formula, data, theta, sigma, reml, weights, offset)
    method = check_ddf(ddf, ("satterthwaite", "kenward-roger"))
    return tests(point, "anova", method, check_type(type))[ANOVA_COLUMNS]


def _tests_at(
    formula: str,
    data: object,
    theta: object,
    sigma: float,
    reml: bool,
    weights: object,
    offset: object,
) -> tuple[object, object]:
    from mixbridge.inference.python_tests import PythonTests
    from mixbridge.inference.term_anova import fixed_terms_info
    from mixbridge.inference.varpar import LmerDevianceModel
    from mixbridge.python_impl.lmer_devfun import LmerDevfun
    from mixbridge.python_impl.pls import blas_single_thread
    from mixbridge.python_impl.spec import check_lmer_terms, mixed_terms

    terms = mixed_terms(formula, data, weights=weights, offset=offset, model="lmer")
    check_lmer_terms(terms)
    with blas_single_thread():
        devfun = LmerDevfun(terms, reml)
        th = devfun.check_theta(theta)
        st = devfun.state(th)
        vcov = float(sigma) ** 2 * devfun.pred.rx_inverse()
    names = list(terms.x_names)
    point = _FitPoint(
        theta=th,
        sigma=float(sigma),
        reml=bool(reml),
        fixef=pd.Series(st.beta, index=names),
        vcov=pd.DataFrame((vcov + vcov.T) / 2.0, index=names, columns=names),
    )
    tests = PythonTests(
        LmerDevianceModel(devfun),
        kenward_roger=_kr_builder(devfun),
        terms_info=lambda: fixed_terms_info(terms),
    )
    return tests, point


def _kr_builder(devfun: object) -> object:
    from mixbridge.inference import kenward_roger

    return (
        kenward_roger.general_builder(devfun) if hasattr(kenward_roger, "general_builder") else None
    )


class _FitPoint:
    """The fields of a fit the tests read, at given parameters."""

    def __init__(self, **fields: object) -> None:
        self.__dict__.update(fields)
