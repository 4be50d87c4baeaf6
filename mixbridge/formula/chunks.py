"""A mixed model's formula evaluated chunk by chunk, for data that are never in memory at once
(a Dask DataFrame's partitions). Models whose random part is a single `(1 | g)` term with g a
column: their fit needs only group-level sums (`python_impl.distributed`).

    model = ChunkedFormula(formula, columns, dtypes)    parse, validate, what to gather
        model.group, model.used_columns, model.factor_columns
    model.set_levels(group_uniques, factor_uniques, head)
        the levels of g (lme4's order) and of every fixed-effect factor, gathered from all
        chunks, and a template model frame (a few real rows plus one row per level) that fixes
        the columns, contrasts and level codes of X in every chunk
    model.evaluate(chunk, weights, offset) -> Chunk
        na.omit, X (all columns, before lme4's rank check), y, prior weights, offset, group
        codes, with the in-memory input checks (`mixbridge.checks`) on the chunk's rows

Transforms whose coefficients need all rows at once (scale(), poly()) are refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mixbridge.checks import (
    check_finite_offset,
    check_finite_values,
    check_level_labels,
    check_weight_values,
)
from mixbridge.errors import DataError, FormulaError
from mixbridge.formula.evaluate import Transforms, as_grouping_factor, numeric, read_column
from mixbridge.formula.frames import MixedTerms, build_mixed_terms
from mixbridge.formula.parse import Call, Name, Num, deparse, walk
from mixbridge.formula.terms import expand_bars, split_bars
from mixbridge.formula.validate import parse_and_validate

_FACTOR_CALLS = {"factor", "as.factor", "ordered", "interaction"}
_STATEFUL_CALLS = {"scale", "poly"}  # need full-data coefficients: not supported out of core


@dataclass
class Chunk:
    """One chunk's model rows after na.omit: X with every column of the fixed part, the
    offset-free response y − o, prior weights (None: unit), group codes, the offset, the kept
    rows and how many rows NA dropped."""

    X: np.ndarray
    y: np.ndarray
    weights: np.ndarray | None
    codes: np.ndarray
    offset: np.ndarray
    rows: pd.DataFrame
    n_dropped: int


class ChunkedFormula:
    """See the module docstring."""

    def __init__(
        self, formula: str, columns: list[str], dtypes: Mapping[str, Any], model: str = "lmer"
    ) -> None:
        self.formula = formula
        self.model = model  # "lmer" or "glmer": whose input rules apply (weights)
        tree = parse_and_validate(formula, columns, model)
        fixed_rhs, bars = split_bars(tree.rhs)
        expanded = expand_bars(bars)
        ok = (
            len(expanded) == 1
            and isinstance(expanded[0].lhs, Num)
            and expanded[0].lhs.value == 1
            and len(expanded[0].group) == 1
            and isinstance(expanded[0].group[0], Name)
        )
        if not ok:
            got = ", ".join(f"({deparse(b.lhs)} | {b.group_name})" for b in expanded) or "none"
            raise FormulaError(
                "a Dask DataFrame can only be fitted when the random part is a single (1 | g) "
                f"term with g a column (got: {got}); compute() to pandas for other models",
                token=got,
            )
        for node in walk(tree.rhs):
            if getattr(node, "fn", None) in _STATEFUL_CALLS:
                raise FormulaError(
                    f"{node.fn}() needs coefficients from all rows at once and is not supported "
                    "with a Dask DataFrame; transform the column first",
                    token=deparse(node),
                )
        self.response = tree.lhs
        self.response_name = deparse(tree.lhs)
        self.group: str = expanded[0].group[0].id
        self.used_columns = _names_in([tree.lhs, tree.rhs], columns)
        self.factor_columns = _factor_columns(fixed_rhs, columns, dtypes, self.group)
        self.template: MixedTerms | None = None
        self.group_values = np.zeros(0, dtype=object)
        self.levels: list[str] = []

    def set_levels(
        self, group_uniques: pd.Series, factor_uniques: dict[str, pd.Series], head: pd.DataFrame
    ) -> None:
        """The levels gathered from every chunk (see the module docstring); DataError for
        labels R would read differently and for a grouping factor with one level."""
        self.group_values, self.levels = _level_order(self.group, group_uniques)
        check_level_labels(self.levels, self.group)
        if len(self.levels) < 2:
            raise DataError(
                f"grouping factor '{self.group}' must have > 1 sampled level", self.group
            )
        self.template = _template(self.formula, head, factor_uniques)
        for name, labels in self.template.fixed_factor_levels().items():
            check_level_labels(labels, name)

    @property
    def x_names(self) -> list[str]:
        """The names of every column of the fixed part (before lme4's rank check)."""
        assert self.template is not None
        return self.template.full_x_names

    def evaluate(self, part: pd.DataFrame, weights: str | None, offset: str | None) -> Chunk:
        """The model rows of one chunk, checked as in memory (see the module docstring)."""
        template = self.template
        assert template is not None
        na = part[self.used_columns].isna().any(axis=1).to_numpy()
        rows = part[~na] if na.any() else part
        X = template.full_fixed_matrix(rows)
        y = numeric(self.response, rows, Transforms(fitting=False))
        bad = np.isnan(y) | np.isnan(X).any(axis=1)
        if bad.any():  # NaN from a transform (e.g. log(-1)) is missing, like na.omit
            rows, X, y = rows[~bad], X[~bad], y[~bad]
        if not np.isfinite(y).all():
            raise DataError(
                f"response {self.response_name!r} has infinite values", column=self.response_name
            )
        names = template.full_x_names
        for j in np.flatnonzero(~np.isfinite(X.sum(axis=0))):
            check_finite_values(X[:, j], names[j])
        off = template.offset_for(rows)
        if offset is not None:
            off_arg = rows[offset].to_numpy(dtype=float)
            check_finite_offset(off_arg)
            off = off + off_arg
        check_finite_values(off, "offset")  # the formula's offset() terms
        w = None if weights is None else rows[weights].to_numpy(dtype=float)
        if w is not None:
            check_weight_values(w, self.model, "weights", where="a partition's rows")
        codes = pd.Categorical(rows[self.group], categories=self.group_values).codes
        if codes.size and codes.min() < 0:
            raise DataError(f"unexpected level of '{self.group}' in a partition", self.group)
        return Chunk(X, y - off, w, codes.astype(np.intp), off, rows, int(len(part) - len(rows)))

    def response_range(self, rows: pd.DataFrame) -> tuple[float, float]:
        """(lowest, highest) response on rows (before the offset)."""
        raw = numeric(self.response, rows, Transforms(fitting=False))
        return (float(raw.min()), float(raw.max())) if raw.size else (np.inf, -np.inf)


def _names_in(nodes: list[Any], columns: list[str]) -> list[str]:
    out = []
    for tree in nodes:
        for node in walk(tree):
            if isinstance(node, Name) and node.id in columns:
                out.append(node.id)
    return list(dict.fromkeys(out))


def _factor_columns(
    fixed_rhs: Any, columns: list[str], dtypes: Mapping[str, Any], group: str
) -> list[str]:
    """Fixed-part columns that become factors: non-numeric dtypes, or inside factor() etc."""
    if fixed_rhs is None:
        return []
    out = []
    for node in walk(fixed_rhs):
        if isinstance(node, Call) and node.fn in _FACTOR_CALLS:
            out += [n.id for n in walk(node) if isinstance(n, Name) and n.id in columns]
        elif isinstance(node, Name) and node.id in columns:
            dtype = dtypes[node.id]
            is_num = pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
            if not is_num:
                out.append(node.id)
    return [c for c in dict.fromkeys(out) if c != group]


def _level_order(group: str, values: pd.Series) -> tuple[np.ndarray, list[str]]:
    """The raw values of g in lme4's level order, and their labels (as the in-memory path)."""
    raw = pd.Series(values.to_numpy(), name=group)
    if isinstance(values.dtype, pd.CategoricalDtype):  # keep the dtype's category order
        raw = raw.astype(pd.CategoricalDtype(values.cat.categories, values.cat.ordered))
    f = as_grouping_factor(read_column(raw.to_frame(), group)).drop_unused()
    order = np.argsort(f.codes, kind="stable")
    return np.asarray(raw.to_numpy(), dtype=object)[order], list(f.levels)


def _template(formula: str, head: pd.DataFrame, factor_uniques: dict[str, pd.Series]) -> MixedTerms:
    """Model terms on a few real rows plus one row per level of each fixed-effect factor."""
    base = head.iloc[[0]]
    rows = [head]
    for col, vals in factor_uniques.items():
        rep = base.loc[base.index.repeat(len(vals))].copy()
        rep[col] = vals.to_numpy()
        if isinstance(head[col].dtype, pd.CategoricalDtype):
            rep[col] = rep[col].astype(head[col].dtype)
        rows.append(rep)
    frame = pd.concat(rows, ignore_index=True)
    for col, vals in factor_uniques.items():  # categories: exactly the levels used anywhere
        if isinstance(head[col].dtype, pd.CategoricalDtype):
            used = set(vals.dropna().tolist())
            cats = [c for c in head[col].cat.categories if c in used]
            frame[col] = frame[col].cat.set_categories(cats)
    return build_mixed_terms(formula, frame)
