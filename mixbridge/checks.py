"""Input checks shared by every engine, run before any engine (or R) sees the data.

The formula is validated against an allow-list (`mixbridge.formula.validate`), then the variables
the formula uses are evaluated once (no model matrix is built) to check the response, NA
handling, grouping factors, weights and offset. Each failure raises a DataError/FormulaError/
ArgumentError naming the column, level or argument.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mixbridge.errors import ArgumentError, DataError, FormulaError

if TYPE_CHECKING:
    from mixbridge.formula.frames import ModelFrame

# families (R spelling) and the links R's family constructors accept, default first; shared
# with the Python engines' families (python_impl/families.py)
FAMILY_LINKS: dict[str, tuple[str, ...]] = {
    "gaussian": ("identity", "log", "inverse"),
    "binomial": ("logit", "probit", "cauchit", "log", "cloglog"),
    "poisson": ("log", "identity", "sqrt"),
    "Gamma": ("inverse", "identity", "log"),
    "inverse.gaussian": ("1/mu^2", "inverse", "identity", "log"),
    "quasibinomial": ("logit", "probit", "cauchit", "log", "cloglog"),
    "quasipoisson": ("log", "identity", "sqrt"),
}
FAMILIES = {
    "lmer": ("gaussian",),
    "glmer": ("binomial", "poisson", "Gamma", "inverse.gaussian", "gaussian"),
    "bayesglm": tuple(FAMILY_LINKS),
}


def check_inputs(
    model: str,
    formula: str,
    data: pd.DataFrame,
    *,
    weights: Any = None,
    offset: Any = None,
    family: str | None = None,
    link: str | None = None,
) -> ModelFrame:
    """Validate formula and data for `model` in {"lmer", "glmer", "bayesglm"}. Raises on failure.

    `link` is optional (checked against the family when given). Returns the evaluated model
    frame, which the Python engine builds its model terms from (no second evaluation).
    """
    from mixbridge.formula.frames import ModelFrame  # the same evaluation the engines use

    if model not in FAMILIES:
        raise ArgumentError(
            f"unknown model {model!r}; expected one of {', '.join(FAMILIES)}", "model"
        )
    if not isinstance(data, pd.DataFrame):
        raise DataError(f"data must be a pandas DataFrame, got {type(data).__name__}", column=None)
    if not isinstance(formula, str):
        raise FormulaError(f"formula must be a string, got {type(formula).__name__}")
    fam = _check_family(model, family, link)
    frame = ModelFrame(formula, data, model, fam, weights, offset, keep_order=model == "bayesglm")
    if len(data) == 0:
        raise DataError("data has 0 rows")
    _check_weights(frame.weights_in, "weights")
    if frame.offset_in is not None and np.isinf(frame.offset_in).any():
        rows = np.flatnonzero(np.isinf(frame.offset_in))
        raise DataError(f"offset has infinite values in {_rows(rows)}", column="offset")
    frame.evaluate(with_bars=model != "bayesglm")
    frame.na_omit()
    n = frame.n

    # -- response (the same coding the engines get) -------------------------------------------
    name = frame.response_name
    if frame.cbind:
        s, f = (v.values for v in frame.resp)  # type: ignore[union-attr]
        if (s < 0).any() or (f < 0).any() or not np.isfinite(s + f).all():
            raise DataError(
                f"cbind() response {name!r} needs finite, non-negative counts", column=name
            )
        if fam not in ("binomial", "quasibinomial"):
            raise DataError(
                f"cbind() response {name!r} is only for the binomial family, not {fam!r}",
                column=name,
            )
    y, _, _ = frame.response()
    _check_response_range(y, fam, name)
    if model == "lmer" and np.ptp(y) == 0:
        raise DataError(
            f"response {name!r} is constant ({y[0]:g} in all {n} rows used); lmer cannot "
            "estimate a residual variance (lme4 returns a degenerate fit with REML criterion "
            "-Inf)",
            column=name,
        )
    if model == "glmer" and np.ptp(y) == 0:
        raise DataError(
            f"response {name!r} is constant (lme4: 'Response is constant')", column=name
        )

    # -- grouping factors ----------------------------------------------------------------------
    if model != "bayesglm":
        _check_groups(frame, model, n)
    return frame


def _check_family(model: str, family: str | None, link: str | None) -> str:
    if model == "lmer":
        if family not in (None, "gaussian"):
            raise ArgumentError(f"lmer fits a gaussian model; family={family!r} given", "family")
        fam = "gaussian"
    else:
        fam = family or ("binomial" if model == "glmer" else "gaussian")
        if not isinstance(fam, str) or fam not in FAMILIES[model]:
            hint = " (R spells it 'Gamma')" if str(fam).lower() == "gamma" else ""
            raise ArgumentError(
                f"unknown family {fam!r} for {model}{hint}; available: "
                f"{', '.join(FAMILIES[model])}",
                "family",
            )
    if link is not None and link not in FAMILY_LINKS[fam]:
        raise ArgumentError(
            f"link {link!r} is not available for family {fam!r}; available: "
            f"{', '.join(FAMILY_LINKS[fam])}",
            "link",
        )
    return fam


def _check_response_range(y: np.ndarray, fam: str, name: str) -> None:
    if fam in ("binomial", "quasibinomial") and ((y < 0) | (y > 1)).any():
        bad = np.flatnonzero((y < 0) | (y > 1))
        raise DataError(
            f"binomial response {name!r} must be 0/1 or a proportion in [0, 1] "
            f"(R: y values must be 0 <= y <= 1); {len(bad)} value(s) are not, e.g. {y[bad[0]]:g}",
            column=name,
        )
    if fam in ("poisson", "quasipoisson") and (y < 0).any():
        raise DataError(
            f"poisson response {name!r} has negative values (R: negative values not allowed "
            "for the 'Poisson' family)",
            column=name,
        )
    if fam in ("Gamma", "inverse.gaussian") and (y <= 0).any():
        raise DataError(
            f"{fam} response {name!r} must be positive; it has {int((y <= 0).sum())} value(s) <= 0",
            column=name,
        )


def _check_groups(frame: Any, model: str, n: int) -> None:
    from mixbridge.formula.model_matrix import Design
    from mixbridge.formula.parse import deparse

    for k, (bar, info, vals) in enumerate(
        zip(frame.bars, frame.bar_infos, frame.bar_values, strict=True)
    ):
        nl = len(frame.group_factor(k).levels)
        name = bar.group_name
        if nl < 2:
            raise DataError(
                f"grouping factor {name!r} has only {nl} level; a random effect needs at least 2",
                column=name,
            )
        if model == "lmer" and nl >= n:
            raise DataError(
                f"grouping factor {name!r} has {nl} levels for {n} observations; lme4: number "
                "of levels of each grouping factor must be < number of observations",
                column=name,
            )
        dropped = {
            i: (v.drop_unused() if hasattr(v, "drop_unused") else v) for i, v in vals.items()
        }
        p = len(Design.from_values(info, dropped, "treatment").names)
        q = nl * p
        # lme4 checkZdims (check.nobs.vs.nRE = "stop"): lmer needs n > q, glmer n >= q
        term = f"{deparse(bar.lhs)} | {name}"
        if (model == "lmer" and n <= q) or (model == "glmer" and n < q):
            extra = " and the residual variance (or scale parameter)" if model == "lmer" else ""
            raise DataError(
                f"number of observations (={n}) {'<=' if model == 'lmer' else '<'} number of "
                f"random effects (={q}) for term ({term}); the random-effects parameters{extra} "
                "are probably unidentifiable",
                column=name,
            )


def _rows(rows: np.ndarray) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
    return f"{len(rows)} row(s) (positions {shown})"


def _check_weights(w: np.ndarray | None, what: str) -> None:
    if w is None:
        return
    if np.isinf(w).any():
        raise DataError(
            f"{what} must be finite; infinite in {_rows(np.flatnonzero(np.isinf(w)))}", column=what
        )
    neg = np.flatnonzero(w < 0)
    if len(neg):
        raise DataError(f"{what} must be non-negative; negative in {_rows(neg)}", column=what)


def _values(x: Any) -> Iterable[float]:
    if x is None:
        return []
    arr = np.atleast_1d(np.asarray(x, dtype=float))
    return arr.ravel().tolist()


def check_bayesglm_args(**prior: Any) -> None:
    """Validate bayesglm's prior and fitting arguments (lengths are checked by the engine)."""
    positive = (
        "prior_scale",
        "prior_scale_for_intercept",
        "prior_df",
        "prior_df_for_intercept",
        "min_prior_scale",
        "epsilon",
        "dispersion",
    )
    for name in positive:
        if name not in prior or prior[name] is None:
            continue
        try:
            vals = list(_values(prior[name]))
        except (TypeError, ValueError):
            raise ArgumentError(
                f"{name} must be a number or a vector of numbers, got {prior[name]!r}", name
            ) from None
        # prior_df may be Inf (normal prior) and prior_scale Inf (flat prior, as arm allows);
        # everything else must be finite
        may_be_inf = name.startswith(("prior_df", "prior_scale"))
        for v in vals:
            if math.isnan(v) or v <= 0 or (math.isinf(v) and not may_be_inf):
                raise ArgumentError(f"{name} must be > 0 (and finite), got {v!r}", name)
    for name in ("prior_mean", "prior_mean_for_intercept"):
        if name in prior and prior[name] is not None:
            try:
                vals = list(_values(prior[name]))
            except (TypeError, ValueError):
                raise ArgumentError(f"{name} must be numeric, got {prior[name]!r}", name) from None
            if not all(math.isfinite(v) for v in vals):
                raise ArgumentError(f"{name} must be finite, got {prior[name]!r}", name)
    if "maxit" in prior:
        maxit = prior["maxit"]
        if isinstance(maxit, bool) or not isinstance(maxit, (int, np.integer)) or maxit < 1:
            raise ArgumentError(f"maxit must be an integer >= 1, got {maxit!r}", "maxit")
