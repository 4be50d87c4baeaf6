"""Evaluating formula variables (`x`, `log(x)`, `factor(g)`, `poly(x, 2)`, ...) on a DataFrame.

Like R's model.frame, data-dependent transforms (`scale`, `poly`) are evaluated on all rows of the
data before NA rows are dropped, and their coefficients are kept in a `Transforms` state (R's
`predvars`) so that new data is transformed with the original centre, scale and polynomial
coefficients.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mixbridge.errors import DataError, FormulaError
from mixbridge.formula.levels import IntegerLevels, r_number_labels, r_sorted_strings
from mixbridge.formula.parse import (
    COMPARISONS,
    LOGICAL_OPS,
    BinOp,
    Call,
    Name,
    Node,
    Num,
    Paren,
    UnaryOp,
    deparse,
    left_spine,
)


@dataclass
class Numeric:
    """A numeric variable: (n,) vector, or an (n, k) matrix with column suffixes (poly)."""

    values: np.ndarray
    colnames: list[str] | None = None  # suffixes for matrix columns, e.g. ["1", "2"]
    # an integer column that R receives as an integer vector (the bridge: ints within int32);
    # factor() labels it "100000" where a double gets "1e+05"
    integer: bool = False
    # whether every value is finite (no NaN, no Inf), known after the first all_finite()
    finite: bool | None = field(default=None, compare=False, repr=False)
    # the column's sum from that same pass (a 1-D float vector only): X'X's intercept row
    # reuses it instead of reading the column again
    total: float | None = field(default=None, compare=False, repr=False)

    def na_mask(self) -> np.ndarray:
        v = self.values
        return np.isnan(v) if v.ndim == 1 else np.isnan(v).any(axis=1)

    def all_finite(self) -> bool:
        """No NaN and no Inf: one read pass (a finite sum), remembered, so that na.omit and
        the finiteness check share it and the usual clean column costs no mask."""
        if self.finite is None:
            v = self.values
            if v.dtype.kind in "iub":
                self.finite = True
            else:
                with np.errstate(over="ignore", invalid="ignore"):
                    total = float(np.sum(v))
                self.finite = bool(np.isfinite(total)) or bool(np.isfinite(v).all())
                if v.ndim == 1 and v.dtype == np.float64:
                    self.total = total
        return self.finite

    def take(self, rows: np.ndarray) -> Numeric:
        return Numeric(self.values[rows], self.colnames, self.integer)


@dataclass
class Factor:
    """A factor: 0-based codes (-1 = NA) into `levels` (R labels).

    kind: "factor" (pandas Categorical or factor()), "character" or "logical". Character and
    logical variables become factors in R's model.matrix, from the rows actually used, so their
    unused levels always go; a real factor keeps unused levels unless drop.unused.levels.
    """

    codes: np.ndarray
    levels: Sequence[str]  # a list, or IntegerLevels for integer ids
    ordered: bool = False
    kind: str = "factor"
    all_used: bool = False  # known to use every level (factor() of numbers): nothing to drop
    # rows per level, when the coding counted them anyway (integer ids): the group sizes
    counts: np.ndarray | None = field(default=None, compare=False, repr=False)

    def na_mask(self) -> np.ndarray:
        return self.codes < 0

    def take(self, rows: np.ndarray) -> Factor:  # a subset may lose levels: all_used resets
        return Factor(self.codes[rows], self.levels, self.ordered, self.kind)

    def drop_unused(self) -> Factor:
        if self.all_used:
            return self
        used = np.zeros(len(self.levels), dtype=bool)
        used[self.codes[self.codes >= 0]] = True
        if used.all():
            return self
        new_index = np.cumsum(used) - 1
        codes = np.where(self.codes >= 0, new_index[np.maximum(self.codes, 0)], -1)
        levels = [lv for lv, u in zip(self.levels, used, strict=True) if u]
        return Factor(codes.astype(np.int32), levels, self.ordered, self.kind, all_used=True)

    def recode(self, levels: list[str], what: str) -> Factor:
        """Codes against fixed `levels` (new data); unseen labels raise DataError."""
        index = {lv: i for i, lv in enumerate(levels)}
        mine = np.array([index.get(lv, -2) for lv in self.levels] + [-1], dtype=np.int64)
        codes = mine[np.where(self.codes >= 0, self.codes, len(self.levels))]
        if (codes == -2).any():
            new = sorted({self.levels[c] for c in self.codes[codes == -2]})
            raise DataError(
                f"factor {what!r} has new level(s) {', '.join(map(repr, new))} not seen when "
                f"fitting (levels: {', '.join(levels)})",
                column=what,
            )
        return Factor(codes.astype(np.int32), list(levels), self.ordered, self.kind)


Value = Numeric | Factor


@dataclass
class Transforms:
    """Coefficients of data-dependent transforms, keyed by the call's text (R's predvars)."""

    params: dict[str, tuple] = field(default_factory=dict)
    fitting: bool = True


# ---------------------------------------------------------------------------------------------
# Columns


def read_column(data: pd.DataFrame, name: str) -> Value:
    """A data column as R would see it: numeric, factor, character or logical."""
    if name not in data.columns:
        raise DataError(f"column {name!r} not found in data", column=name)
    col = data[name]
    if isinstance(col, pd.DataFrame):
        raise DataError(f"column name {name!r} is duplicated in data", column=name)
    dtype = col.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        # category labels are str(c), exactly as the bridge hands them to R as factor levels
        categories = dtype.categories
        if categories.dtype.kind in "iu":  # integer ids: labels made only when read
            cats: Sequence[str] = IntegerLevels(categories.to_numpy())
        else:  # (tolist first: iterating an Arrow-backed Index is ~20x slower)
            cats = [str(c) for c in categories.tolist()]
        codes = col.cat.codes.to_numpy().astype(np.int32, copy=False)
        return Factor(codes, cats, bool(dtype.ordered), "factor")
    if pd.api.types.is_bool_dtype(dtype):
        mask = col.isna().to_numpy()
        vals = col.fillna(False).to_numpy().astype(bool)
        return _logical(vals, mask)
    if pd.api.types.is_numeric_dtype(dtype):
        values = col.astype("float64").to_numpy(dtype=float, na_value=np.nan)
        if not pd.api.types.is_integer_dtype(dtype):
            return Numeric(values)
        # R's integer range (the bridge sends wider integers as doubles); NA_integer_ excluded
        ok = values[~np.isnan(values)]
        lo, hi = -(2.0**31) + 1, 2.0**31 - 1
        return Numeric(values, integer=not ok.size or bool(ok.min() >= lo and ok.max() <= hi))
    if pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype):
        mask = col.isna().to_numpy()
        # hash once (pd.factorize), then look at the distinct values only
        raw_codes, uniques = pd.factorize(col, use_na_sentinel=True)
        uniq = uniques.tolist()  # (iterating an arrow-backed Index is 20x slower)
        if all(isinstance(v, str) for v in uniq):
            levels = r_sorted_strings(uniq)
            rank = {lv: i for i, lv in enumerate(levels)}
            remap = np.array([rank[v] for v in uniq] + [-1], dtype=np.int32)
            codes = remap[np.where(raw_codes >= 0, raw_codes, len(uniq))]
            return Factor(codes, levels, False, "character")
        present = col[~mask]
        if all(isinstance(v, (bool, np.bool_)) for v in uniq):
            vals = np.zeros(len(col), dtype=bool)
            vals[~mask] = np.asarray(present.tolist(), dtype=bool)
            return _logical(vals, mask)
        try:
            return Numeric(pd.to_numeric(col).astype("float64").to_numpy())
        except (TypeError, ValueError):
            pass
        kinds = sorted({type(v).__name__ for v in present})
        raise DataError(
            f"column {name!r} mixes value types ({', '.join(kinds)}); use one type per column",
            column=name,
        )
    raise DataError(
        f"column {name!r} has unsupported type {dtype}; use numbers, strings, bool or categorical",
        column=name,
    )


def _logical(vals: np.ndarray, mask: np.ndarray) -> Factor:
    codes = np.where(mask, -1, vals.astype(np.int32)).astype(np.int32)
    return Factor(codes, ["FALSE", "TRUE"], False, "logical")


# ---------------------------------------------------------------------------------------------
# Expressions


def evaluate(node: Node, data: pd.DataFrame, state: Transforms) -> Value:
    """Value of one formula variable on the rows of `data`."""
    if isinstance(node, Paren):
        return evaluate(node.expr, data, state)
    if isinstance(node, Name):
        return read_column(data, node.id)
    if isinstance(node, Call):
        if node.fn == "factor":
            return _as_factor(evaluate(node.args[0], data, state))
        if node.fn == "poly":
            return _poly(node, data, state)
        if node.fn == "offset":
            return Numeric(numeric(node.args[0], data, state))
        if node.fn == "I":
            # I() keeps a logical a logical (I(b), I(week > 2)): model.matrix codes it like a
            # factor with levels FALSE, TRUE, column "I(week > 2)TRUE", as R
            if is_logical_expression(node.args[0]):
                return _logical(*logical(node.args[0], data, state))
            inner = evaluate(node.args[0], data, state)
            if isinstance(inner, Factor) and inner.kind == "logical":
                return inner
    return Numeric(numeric(node, data, state))


def is_logical_expression(node: Node) -> bool:
    """A comparison, `&` or `!`: R gives a logical vector."""
    while isinstance(node, Paren):
        node = node.expr
    return (isinstance(node, BinOp) and node.op in LOGICAL_OPS) or (
        isinstance(node, UnaryOp) and node.op == "!"
    )


_COMPARE = {
    "<": np.less,
    ">": np.greater,
    "<=": np.less_equal,
    ">=": np.greater_equal,
    "==": np.equal,
    "!=": np.not_equal,
}


def logical(node: Node, data: pd.DataFrame, state: Transforms) -> tuple[np.ndarray, np.ndarray]:
    """(value, missing) of an expression as an R logical: comparisons (NA when a side is NaN),
    `&` and `!` with R's three-valued logic (FALSE & NA is FALSE), logical columns, and numbers
    (nonzero is TRUE, NaN is NA)."""
    while isinstance(node, Paren):
        node = node.expr
    if isinstance(node, BinOp) and node.op in COMPARISONS:
        a, b = numeric(node.left, data, state), numeric(node.right, data, state)
        missing = np.isnan(a) | np.isnan(b)
        with np.errstate(invalid="ignore"):
            return _COMPARE[node.op](a, b) & ~missing, missing
    if isinstance(node, BinOp) and node.op == "&":
        leftmost, chain = left_spine(node, {"&"})
        value, missing = logical(leftmost, data, state)
        for _, right in chain:
            v2, m2 = logical(right, data, state)
            false = (~value & ~missing) | (~v2 & ~m2)  # a FALSE on either side decides
            missing = ~false & (missing | m2)
            value = ~false & ~missing
        return value, missing
    if isinstance(node, UnaryOp) and node.op == "!":
        value, missing = logical(node.operand, data, state)
        return ~value & ~missing, missing
    if isinstance(node, (Name, Call)):
        val = evaluate(node, data, state)
        if isinstance(val, Factor) and val.kind == "logical":
            is_true = np.asarray(list(val.levels) + ["NA"], dtype=object)[val.codes] == "TRUE"
            return is_true & (val.codes >= 0), val.codes < 0
    x = numeric(node, data, state)
    missing = np.isnan(x)
    return (x != 0) & ~missing, missing


def numeric(node: Node, data: pd.DataFrame, state: Transforms) -> np.ndarray:
    """Evaluate an arithmetic expression to a float vector (R's arithmetic, NaN for NA)."""
    n = len(data)
    if isinstance(node, Num):
        return np.full(n, node.value)
    if isinstance(node, Paren):
        return numeric(node.expr, data, state)
    if isinstance(node, Name):
        val = read_column(data, node.id)
        if isinstance(val, Factor):
            if val.kind == "logical":  # R coerces logicals to 0/1 in arithmetic
                return np.where(val.codes < 0, np.nan, val.codes.astype(float))
            raise DataError(
                f"column {node.id!r} is not numeric ({val.kind}); it cannot be used in "
                "arithmetic or as a numeric variable here",
                column=node.id,
            )
        if val.values.ndim != 1:  # pragma: no cover - columns are vectors
            raise DataError(f"column {node.id!r} is not a vector", column=node.id)
        return val.values
    if is_logical_expression(node):  # R's arithmetic takes TRUE as 1, FALSE as 0
        value, missing = logical(node, data, state)
        return np.where(missing, np.nan, value.astype(float))
    with np.errstate(all="ignore"):  # R returns NaN/Inf here (with a warning), never raises
        if isinstance(node, UnaryOp):
            v = numeric(node.operand, data, state)
            return -v if node.op == "-" else v
        if isinstance(node, BinOp) and node.op in _ARITH:
            # a chain x1 + x2 - x3 * ..., left to right by a loop
            leftmost, chain = left_spine(node, _ARITH_OPS)
            acc = numeric(leftmost, data, state)
            for op, right in chain:
                acc = _ARITH[op](acc, numeric(right, data, state))
            return acc
        if isinstance(node, BinOp) and node.op == "^":
            return np.power(numeric(node.left, data, state), numeric(node.right, data, state))
        if isinstance(node, Call):
            if node.fn == "I":
                return numeric(node.args[0], data, state)
            if node.fn == "log":
                return np.log(numeric(node.args[0], data, state))
            if node.fn == "exp":
                return np.exp(numeric(node.args[0], data, state))
            if node.fn == "sqrt":
                return np.sqrt(numeric(node.args[0], data, state))
            if node.fn == "scale":
                return _scale(node, data, state)
    raise FormulaError(f"cannot evaluate {deparse(node)!r} as a number", token=deparse(node))


_ARITH = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide}
_ARITH_OPS = frozenset(_ARITH)


def _require_fitting(state: Transforms, key: str) -> None:
    # new data must reuse the fit's coefficients; recomputing them would silently differ
    if not state.fitting:
        raise FormulaError(f"no coefficients from the fit for {key!r}", token=key)


def _scale(node: Call, data: pd.DataFrame, state: Transforms) -> np.ndarray:
    x = numeric(node.args[0], data, state)
    key = deparse(node)
    if key not in state.params:
        _require_fitting(state, key)
        ok = x[~np.isnan(x)]
        center = float(ok.mean()) if len(ok) else np.nan
        dev = ok - center
        scale = float(np.sqrt(np.sum(dev * dev) / max(1, len(ok) - 1)))
        state.params[key] = (center, scale)
    center, scale = state.params[key]
    return (x - center) / scale


def _poly(node: Call, data: pd.DataFrame, state: Transforms) -> Numeric:
    """R's poly(x, degree): orthogonal polynomials; coefficients (alpha, norm2) kept in state."""
    x = numeric(node.args[0], data, state)
    degree = int(node.args[1].value)  # validated: positive integer
    key = deparse(node)
    if key not in state.params:
        _require_fitting(state, key)
        if np.isnan(x).any():
            raise DataError(
                f"missing values are not allowed in poly() ('{key}'; R: poly() stops on NA)",
                column=deparse(node.args[0]),
            )
        if degree >= len(np.unique(x)):
            raise DataError(
                f"'degree' must be less than number of unique points in '{key}'",
                column=deparse(node.args[0]),
            )
        rank = _power_rank(x, degree)
        if rank <= degree:
            # R's poly() stops when rank < degree ("'degree' must be less than number of
            # unique points"); at rank == degree it goes on with a last column built from a
            # rank-deficient QR, which no other implementation reproduces: refused as well
            raise DataError(
                f"'degree' must be less than number of unique points in '{key}': the powers of "
                f"{deparse(node.args[0])} up to {degree} are numerically dependent (rank {rank} "
                f"of {degree + 1} by R's qr(), tol 1e-7); use a lower degree",
                column=deparse(node.args[0]),
            )
        # Stieltjes three-term recurrence: monic orthogonal polynomials on the data points,
        # which is what R's QR construction yields (alpha, norm2 as in attr(, "coefs"))
        alpha = np.zeros(degree)
        norm2 = np.zeros(degree + 2)
        norm2[0] = 1.0
        prev = np.zeros_like(x)
        cur = np.ones_like(x)
        for j in range(degree + 1):
            norm2[j + 1] = float(np.dot(cur, cur))
            if j == degree:
                break
            alpha[j] = float(np.dot(x * cur, cur)) / norm2[j + 1]
            nxt = (x - alpha[j]) * cur - (norm2[j + 1] / norm2[j]) * prev
            prev, cur = cur, nxt
        state.params[key] = (alpha, norm2)
    alpha, norm2 = state.params[key]
    z = np.empty((len(x), degree + 1))
    z[:, 0] = 1.0
    z[:, 1] = x - alpha[0]
    for i in range(1, degree):
        z[:, i + 1] = (x - alpha[i]) * z[:, i] - (norm2[i + 1] / norm2[i]) * z[:, i - 1]
    z = z / np.sqrt(norm2[1:])
    return Numeric(z[:, 1:], [str(k) for k in range(1, degree + 1)])


def _power_rank(x: np.ndarray, degree: int) -> int:
    """Rank R's poly() finds for outer(x - mean(x), 0:degree, "^"): qr() with tol 1e-7."""
    from mixbridge.formula.model_matrix import rank_keep

    xc = x - x.mean()
    return len(rank_keep(np.power.outer(xc, np.arange(degree + 1, dtype=float)), 1e-7))


def _as_factor(val: Value) -> Factor:
    """R's factor(): factors lose unused levels; numbers get their sorted unique values."""
    if isinstance(val, Factor):
        f = Factor(val.codes, val.levels, val.ordered, "factor").drop_unused()
        return f
    v = val.values
    if v.ndim != 1:
        raise FormulaError("factor() of a matrix is not supported")
    # numeric order, as R's factor() of a number; -0.0 and 0.0 are one level ("0"), NaN missing
    codes, sorted_uniq = _factorize_numbers(v, whole=val.integer)
    if val.integer:  # as.character() of an R integer: always plain digits
        labels = [str(k) for k in sorted_uniq.astype(np.int64).tolist()]
    else:
        labels = r_number_labels(sorted_uniq)
    return Factor(codes, labels, False, "factor", all_used=True)


def _factorize_numbers(v: np.ndarray, whole: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Codes (int32, -1 for NaN) into the sorted distinct values of a float vector, O(n).

    Whole numbers in a range not much wider than n (ids, counts, years) are coded by direct
    lookup: a few vectorized passes, several times faster than hashing. Anything else is hashed
    by pandas and only the distinct values are sorted. `whole=True` promises whole numbers (an
    integer column), which skips that check.
    """
    n = len(v)
    lo, hi = (float(v.min()), float(v.max())) if n else (np.nan, np.nan)
    ok = None
    if np.isnan(lo) or np.isnan(hi):  # NaN present (min/max propagate it)
        ok = ~np.isnan(v)
        lo, hi = (float(v[ok].min()), float(v[ok].max())) if ok.any() else (np.nan, np.nan)
    # finite, exact offsets, and a lookup table no larger than ~2n
    if np.isfinite(lo) and np.isfinite(hi) and max(-lo, hi) < 2.0**52 and hi - lo <= 2 * n + 1024:
        span = int(hi - lo) + 1
        shifted = v - lo if ok is None else np.where(ok, v - lo, span)  # NaN -> extra bin
        offs = shifted.astype(np.intp)
        if whole or np.array_equal(offs, shifted):
            present = np.bincount(offs, minlength=span + 1)[:span] > 0
            lookup = np.cumsum(present, dtype=np.int32) - 1
            lookup = np.append(lookup, np.int32(-1))  # the NaN bin
            return lookup[offs], np.flatnonzero(present) + lo
    raw_codes, uniq = pd.factorize(v + 0.0, use_na_sentinel=True)  # + 0.0: -0.0 == 0.0
    order = np.argsort(uniq, kind="stable")
    rank = np.empty(len(uniq) + 1, dtype=np.int32)
    rank[order] = np.arange(len(uniq), dtype=np.int32)
    rank[-1] = -1
    return rank[raw_codes], uniq[order]  # raw code -1 (NaN) picks rank[-1] = -1


def interaction_factor(factors: list[Factor]) -> Factor:
    """lme4's grouping factor for a:b: observed combinations, first factor varying slowest."""
    n = len(factors[0].codes)
    na = np.zeros(n, dtype=bool)
    for f in factors:
        na |= f.codes < 0
    combo = np.zeros(n, dtype=np.int64)
    for f in factors:
        combo = combo * len(f.levels) + np.maximum(f.codes, 0)
    uniq, inverse = np.unique(combo[~na], return_inverse=True)
    # decode each observed combination into its per-factor level index (vectorized)
    parts: list[np.ndarray] = []
    rest = uniq.copy()
    for f in reversed(factors):
        parts.append(np.asarray(f.levels, dtype=str)[rest % len(f.levels)])
        rest //= len(f.levels)
    joined = parts[-1]
    for part in reversed(parts[:-1]):
        joined = np.char.add(np.char.add(joined, ":"), part)
    labels = joined.tolist()
    codes = np.full(n, -1, dtype=np.int32)
    codes[~na] = inverse
    return Factor(codes, labels, False, "factor")


def as_grouping_factor(val: Value) -> Factor:
    """A grouping variable as a factor (numbers: sorted unique values, like factor()); a logical
    becomes a factor of the values present, as factor() in lme4's mkReTrms."""
    if isinstance(val, Factor):
        kind = "factor" if val.kind == "logical" else val.kind
        return Factor(val.codes, val.levels, False, kind, val.all_used, val.counts)
    return _as_factor(val)


def evaluate_grouping(node: Node, data: pd.DataFrame, state: Transforms) -> Value:
    """A grouping variable of a random-effects term (`g` in `(1 | g)`).

    A plain integer column (ids) becomes its factor straight from the integers: the same levels
    and codes as `as_grouping_factor(evaluate(...))`, without a float copy of the column or a
    hash; when the ids are 0..G-1 the codes are the column itself.
    """
    while isinstance(node, Paren):
        node = node.expr
    if isinstance(node, Name) and node.id in data.columns:
        col = data[node.id]
        if (
            isinstance(col, pd.Series)
            and isinstance(col.dtype, np.dtype)
            and col.dtype.kind in "iu"
            and len(col)
        ):
            ids = col.to_numpy()
            lo, hi = int(ids.min()), int(ids.max())
            if -(2**31) < lo and hi < 2**31 and hi - lo <= 2 * len(ids) + 1024:
                return _integer_factor(ids, lo, hi)
    return evaluate(node, data, state)


def _integer_factor(ids: np.ndarray, lo: int, hi: int) -> Factor:
    offs = ids if lo == 0 else ids - lo
    counts = np.bincount(offs, minlength=hi - lo + 1)
    present = counts > 0
    n_used = int(np.count_nonzero(present))
    if n_used == hi - lo + 1:  # every id in [lo, hi] occurs: the codes are the offsets
        codes = offs.astype(np.int32, copy=False)
        values = np.arange(lo, hi + 1)
    else:
        lookup = np.cumsum(present, dtype=np.int32) - 1
        codes = lookup[offs]
        values = np.flatnonzero(present) + lo
        counts = counts[present]
    # labels as.character() gives R integers (plain digits), made only when read
    return Factor(codes, IntegerLevels(values), False, "factor", all_used=True, counts=counts)
