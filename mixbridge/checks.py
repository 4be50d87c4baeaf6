"""Input checks shared by every engine, run before any engine (or R) sees the data.

Owned by the formula work: the formula is validated against an allow-list
(`mixbridge.formula.validate`), then columns, response, grouping factors and weights are checked.
Each failure raises a DataError/FormulaError/ArgumentError naming the column, level or argument.
"""

from __future__ import annotations

from typing import Any

import pandas as pd


def check_inputs(
    model: str,
    formula: str,
    data: pd.DataFrame,
    *,
    weights: Any = None,
    offset: Any = None,
    family: str | None = None,
) -> None:
    """Validate formula and data for `model` in {"lmer", "glmer", "bayesglm"}. Raises on failure."""
    # Placeholder until the formula module lands: the formula work replaces this body.
    return None


def check_bayesglm_args(**prior: Any) -> None:
    """Validate bayesglm's prior and fitting arguments (lengths are checked by the engine)."""
    return None
