"""bayesglm's model terms: the formula module's GLMTerms (arm's keep.order=TRUE frame and
drop.baseline contrasts), with a sparse X when the model uses a factor with many levels, so
`y ~ x + factor(id)` with 1e5 levels never allocates an n x G array."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from mixbridge.formula import GLMTerms, build_glm_terms
from mixbridge.formula.frames import ModelFrame

# A factor with at least this many levels gets a sparse one-hot X (never a dense n x G array).
SPARSE_MIN_LEVELS = 500

# weights= / offset= as the engine receives them: a column name or the values
ColumnOrValues = str | Sequence[float] | np.ndarray | pd.Series | None


def glm_terms(
    formula: str,
    data: pd.DataFrame,
    *,
    family: str,
    weights: ColumnOrValues,
    offset: ColumnOrValues,
    drop_baseline: bool,
    frame: ModelFrame | None = None,
) -> GLMTerms:
    """build_glm_terms, with a sparse X when the model uses a factor with many levels.

    `frame`: the model frame the input checks already evaluated (None: evaluate here)."""
    return build_glm_terms(
        formula,
        data,
        family=family,
        weights=weights,
        offset=offset,
        drop_baseline=drop_baseline,
        sparse="auto",
        sparse_min_levels=SPARSE_MIN_LEVELS,  # read at call time (tests lower it)
        frame=frame,
    )


def cbind_trials(terms: GLMTerms) -> np.ndarray | None:
    """The trials of a cbind(s, f) response (None for any other response)."""
    if terms.n_trials is None:
        return None
    return np.asarray(terms.n_trials, dtype=float)
