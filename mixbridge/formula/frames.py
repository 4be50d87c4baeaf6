"""Model frames: formula + DataFrame -> response, X, random-effects terms (the engines' input).

Pipeline (as lme4's `lFormula` and arm's `bayesglm`):
    validate + parse -> split fixed / random parts -> expand terms -> evaluate every variable on all
    rows -> na.omit over all of them (and weights, offset) -> drop unused levels -> model matrices
    -> (lmer/glmer) drop rank-deficient columns -> sort random-effects terms by number of levels.

This module runs the pipeline (`build_mixed_terms`, `build_glm_terms`); the evaluated frame is
`model_frame.ModelFrame`, the result types are `term_types` (both importable from here too).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mixbridge.errors import ArgumentError
from mixbridge.formula.model_frame import ModelFrame
from mixbridge.formula.model_matrix import (
    check_finite,
    check_finite_columns,
    check_finite_sparse,
    clearly_full_rank_gram,
    column_gram,
    rank_keep,
)
from mixbridge.formula.term_types import FormulaPart, GLMTerms, MixedTerms, ReTerm
from mixbridge.results import Message

__all__ = [
    "RANK_TOL",
    "FormulaPart",
    "GLMTerms",
    "MixedTerms",
    "ModelFrame",
    "ReTerm",
    "build_glm_terms",
    "build_mixed_terms",
]

RANK_TOL = 1e-7  # lme4's chkRank.drop.cols default tolerance


def build_mixed_terms(
    formula: str,
    data: pd.DataFrame,
    *,
    weights: Any = None,
    offset: Any = None,
    model: str = "lmer",
    family: str | None = None,
    frame: ModelFrame | None = None,
    lazy_x: bool = False,
) -> MixedTerms:
    """lme4's lFormula/glFormula: response, X (rank-deficient columns dropped), reterms.

    `frame`: the already evaluated model frame of this formula and data (from the input checks).
    `lazy_x`: when X is intercept + plain numeric columns of full rank, give the columns
    (`x_columns`) and assemble X only when it is first read.
    """
    if frame is None:
        frame = ModelFrame(formula, data, model, family, weights, offset, keep_order=False)
        frame.evaluate(with_bars=True)
        frame.na_omit()
    fixed = frame.fixed_part(contrasts="treatment", drop_unused=True)
    names = fixed.design.names
    columns = fixed.design.column_views(frame.fixed_values) if lazy_x else None
    x_gram = None
    if columns is not None:
        x_gram = column_gram(columns, frame.n, fixed.design.column_totals(frame.fixed_values))
        if not np.all(np.isfinite(x_gram)):  # finite X'X: finite columns (one pass for both)
            check_finite_columns(columns, names, "fixed-effects model matrix")
        if not clearly_full_rank_gram(x_gram, RANK_TOL):
            columns = x_gram = None  # the exact rank emulation needs X
    if columns is not None:
        x_full, keep = None, np.arange(len(names))
    else:
        x_full = fixed.design.matrix(frame.fixed_values, frame.n)
        check_finite(x_full, names, "fixed-effects model matrix")
        keep = rank_keep(x_full, RANK_TOL)
    kept = set(keep.tolist())
    dropped = [names[j] for j in range(len(names)) if j not in kept]
    if dropped:
        k = len(dropped)
        s = "s" if k > 1 else ""
        frame.messages.append(
            Message(
                kind="message",
                text=f"fixed-effect model matrix is rank deficient so dropping {k} column{s} / "
                f"coefficient{s}",
                origin="mixbridge",
                code="rank_deficient",
            )
        )
    y, n_trials, w = frame.response(shared_unit_weights=lazy_x)  # read-only ones: no n-vector
    reterms = frame.reterms()
    return MixedTerms(
        formula=formula,
        response_name=frame.response_name,
        y=y,
        n_trials=n_trials,
        weights=w,
        offset=frame.total_offset(),
        _x=x_full
        if x_full is None or len(keep) == len(names)
        else np.asfortranarray(x_full[:, keep]),
        x_names=[names[j] for j in keep],
        messages=frame.messages,
        row_index=frame.row_index,
        family=family,
        dropped_columns=dropped,
        reterms=reterms,
        x_columns=columns,
        x_gram=x_gram,
        _finite_y=y if frame.response_finite() else None,
        _fixed=fixed,
        _keep=keep,
    )


def build_glm_terms(
    formula: str,
    data: pd.DataFrame,
    *,
    weights: Any = None,
    offset: Any = None,
    family: str = "gaussian",
    drop_baseline: bool = True,
    sparse: bool | str = False,
    sparse_min_levels: int = 500,
    frame: ModelFrame | None = None,
) -> GLMTerms:
    """arm's bayesglm frame: keep.order=TRUE terms, drop.baseline contrasts, no column dropping.

    Like arm (which rebuilds X with model.frame's default drop.unused.levels=FALSE), categories of
    a pandas Categorical that are absent from the rows used keep their (all-zero) columns.
    sparse=True: X is a scipy.sparse CSC matrix with the same values and names (a factor with G
    levels then costs O(n) memory instead of n x G). sparse="auto": sparse when a factor used in
    the model has at least `sparse_min_levels` levels (decided after evaluation, no extra pass).
    `frame`: the already evaluated model frame of this formula and data (from the input checks).
    """
    if frame is None:
        frame = ModelFrame(formula, data, "bayesglm", family, weights, offset, keep_order=True)
        frame.evaluate(with_bars=False)
        frame.na_omit()
    contrasts = "treatment" if drop_baseline else "bayes"
    fixed = frame.fixed_part(contrasts=contrasts, drop_unused=False)
    if sparse == "auto":
        sparse = any(len(lv) >= sparse_min_levels for lv in fixed.design.levels.values())
    elif not isinstance(sparse, bool):
        raise ArgumentError(f"sparse must be True, False or 'auto', got {sparse!r}", "sparse")
    if sparse:
        x = fixed.design.sparse_matrix(frame.fixed_values, frame.n)
        check_finite_sparse(x, fixed.design.names, "model matrix")
    else:
        x = np.ascontiguousarray(fixed.design.matrix(frame.fixed_values, frame.n))
        check_finite(x, fixed.design.names, "model matrix")
    y, n_trials, w = frame.response()
    return GLMTerms(
        formula=formula,
        response_name=frame.response_name,
        y=y,
        n_trials=n_trials,
        weights=w,
        offset=frame.total_offset(),
        X=x,
        x_names=list(fixed.design.names),
        messages=frame.messages,
        row_index=frame.row_index,
        family=family,
        has_intercept=fixed.info.intercept,
        _fixed=fixed,
    )
