"""Exact equality of two fits, field by field (every dataclass field, read as users read them, so
deferred fields are fetched): no tolerance, NaN equal to NaN."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pandas as pd

# engine functions, the call that made the fit, and what differs by design between transports
NOT_COMPARED = {"methods", "call"}


def fit_fields(fit: Any, skip: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    return {
        f.name: getattr(fit, f.name)
        for f in dataclasses.fields(fit)
        if f.name not in NOT_COMPARED | set(skip)
    }


def same(x: Any, y: Any) -> bool:
    """Exactly equal: same types of containers, same values bit for bit (NaN == NaN)."""
    if isinstance(x, (pd.DataFrame, pd.Series, pd.Index)):
        return type(x) is type(y) and x.equals(y) and _same_labels(x, y)
    if isinstance(x, np.ndarray):
        return (
            isinstance(y, np.ndarray)
            and x.shape == y.shape
            and np.array_equal(x, y, equal_nan=x.dtype.kind in "fc")
        )
    if isinstance(x, dict):
        return isinstance(y, dict) and list(x) == list(y) and all(same(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)):
        return type(x) is type(y) and len(x) == len(y) and all(map(same, x, y))
    if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
        return True
    return bool(x == y)


def _same_labels(x: Any, y: Any) -> bool:
    """pandas' equals() ignores the index and column labels' own values only partly."""
    if isinstance(x, pd.Index):
        return list(x) == list(y)
    if not list(x.index) == list(y.index):
        return False
    return not isinstance(x, pd.DataFrame) or list(x.columns) == list(y.columns)


def assert_same_fit(a: Any, b: Any, skip: set[str] | frozenset[str] = frozenset()) -> None:
    fa, fb = fit_fields(a, skip), fit_fields(b, skip)
    assert fa.keys() == fb.keys()
    different = [k for k in fa if not same(fa[k], fb[k])]
    assert not different, {k: (fa[k], fb[k]) for k in different}
