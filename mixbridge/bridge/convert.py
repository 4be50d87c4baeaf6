"""pandas -> R column encoding shared by both transports.

Each column becomes one flat numpy vector plus a kind (and levels for factors), so the embedded
transport can hand it to R with a single memory copy and the subprocess transport can write it
as raw bytes. R rebuilds the data frame in `mb_make_df` (r_scripts/mixbridge.R):

    float            -> double   (NaN -> NA_real_)
    int (fits int32) -> integer  (larger ints -> double)
    nullable Int     -> integer  (NA -> NA_integer_)
    bool / boolean   -> logical  (NA -> NA)
    Categorical      -> factor   (same level order; ordered -> ordered factor)
    str / object     -> factor   (levels sorted by R, as factor() would)

This is deliberately not pandas2ri, which takes seconds per million rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mixbridge.errors import DataError

NA_INTEGER = np.iinfo(np.int32).min  # R's NA_integer_
# R's NA_real_ is a NaN whose low word is 1954 (R_NaReal); plain NaN would read as NaN in R.
NA_REAL = np.array([0x7FF00000000007A2], dtype=np.uint64).view(np.float64)[0]

WEIGHTS_COLUMN = ".mb_weights"
OFFSET_COLUMN = ".mb_offset"


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # double, integer, logical, factor, ordered, string
    values: np.ndarray  # float64 for double, int32 otherwise (codes are 1-based)
    levels: tuple[str, ...] = ()


def _float(values: np.ndarray) -> np.ndarray:
    arr = np.array(values, dtype=np.float64, copy=True)
    mask = np.isnan(arr)
    if mask.any():
        arr[mask] = NA_REAL
    return arr


def _codes(codes: np.ndarray) -> np.ndarray:
    out = codes.astype(np.int32) + 1
    out[codes < 0] = NA_INTEGER
    return out


def _r_labels(name: str, labels: tuple[str, ...]) -> tuple[str, ...]:
    """Labels R can hold as they are: R's strings end at a NUL (so "g\\x00a" and "g\\x00b"
    would be one level) and must be valid UTF-8."""
    text = "".join(labels)
    if "\x00" in text:
        bad = next(lv for lv in labels if "\x00" in lv)
        raise DataError(f"column {name!r} has the level {bad!r} with a NUL character", name)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        bad = next(lv for lv in labels if not _utf8(lv))
        raise DataError(
            f"column {name!r} has the level {bad!r}, which is not valid text", name
        ) from None
    return labels


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def encode_series(name: str, s: pd.Series) -> Column:
    """One pandas column as an R-ready vector. Raises DataError for unsupported types."""
    dtype = s.dtype
    if "\x00" in name:
        raise DataError(f"column name {name!r} has a NUL character, where R cuts it", name)
    if isinstance(dtype, pd.CategoricalDtype):
        cat = s.cat
        kind = "ordered" if dtype.ordered else "factor"
        levels = tuple(str(c) for c in cat.categories)
        if len(set(levels)) != len(levels):
            raise DataError(f"column {name!r}: category labels are not distinct as strings", name)
        return Column(name, kind, _codes(np.asarray(cat.codes)), _r_labels(name, levels))
    if pd.api.types.is_bool_dtype(dtype):
        if isinstance(dtype, pd.BooleanDtype):
            vals = s.to_numpy(dtype=np.float64, na_value=np.nan)
            out = np.where(np.isnan(vals), NA_INTEGER, vals).astype(np.int32)
            return Column(name, "logical", out)
        return Column(name, "logical", np.asarray(s, dtype=np.int32))
    if pd.api.types.is_integer_dtype(dtype):
        if isinstance(dtype, pd.api.extensions.ExtensionDtype):
            vals = s.to_numpy(dtype=np.float64, na_value=np.nan)
            finite = vals[~np.isnan(vals)]
        else:
            vals = np.asarray(s)
            finite = vals
        lo, hi = np.iinfo(np.int32).min + 1, np.iinfo(np.int32).max
        if finite.size and (finite.min() < lo or finite.max() > hi):
            return Column(name, "double", _float(vals.astype(np.float64)))
        if vals.dtype.kind == "f":
            out = np.where(np.isnan(vals), NA_INTEGER, vals).astype(np.int32)
        else:
            out = vals.astype(np.int32)
        return Column(name, "integer", out)
    if pd.api.types.is_float_dtype(dtype):
        return Column(name, "double", _float(s.to_numpy(dtype=np.float64, na_value=np.nan)))
    if pd.api.types.is_string_dtype(dtype) or pd.api.types.is_object_dtype(dtype):
        codes, uniques = pd.factorize(s, use_na_sentinel=True)
        if all(isinstance(u, str) for u in uniques):
            return Column(name, "string", _codes(codes), _r_labels(name, tuple(uniques)))
        if all(isinstance(u, (bool, np.bool_)) for u in uniques):
            vals = np.full(len(s), NA_INTEGER, dtype=np.int32)
            ok = codes >= 0
            vals[ok] = np.asarray([bool(u) for u in uniques], dtype=np.int32)[codes[ok]]
            return Column(name, "logical", vals)
        try:
            return Column(name, "double", _float(pd.to_numeric(s).to_numpy(dtype=np.float64)))
        except (TypeError, ValueError):
            bad = next(type(u).__name__ for u in uniques if not isinstance(u, str))
            raise DataError(
                f"column {name!r} mixes strings with {bad} values; R needs one type per column",
                name,
            ) from None
    raise DataError(f"column {name!r} has dtype {dtype} which cannot be sent to R", name)


def _vector_arg(arg: object, data: pd.DataFrame, what: str) -> np.ndarray:
    if isinstance(arg, str):
        if arg not in data.columns:
            raise DataError(f"{what} column {arg!r} is not in the data", what)
        vals = data[arg]
        if isinstance(vals, pd.DataFrame):
            raise DataError(f"{what} column {arg!r} appears more than once in the data", what)
    else:
        vals = arg
    try:
        arr = np.asarray(vals, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{what} must be numeric", what) from None
    if arr.ndim != 1:
        raise DataError(
            f"{what} must be a one-dimensional vector (one value per row), got an array of "
            f"shape {arr.shape}",
            what,
        )
    if arr.shape[0] != len(data):
        raise DataError(f"{what} has {arr.size} values but the data have {len(data)} rows", what)
    return arr


def formula_names(formula: str) -> set[str]:
    """Every name the formula mentions (variables; function names are not names)."""
    from mixbridge.formula.parse import Name, parse_formula, walk

    tree = parse_formula(formula)
    nodes = [n for part in (tree.lhs, tree.rhs) if part is not None for n in walk(part)]
    return {n.id for n in nodes if isinstance(n, Name)}


def free_name(base: str, taken: set[str]) -> str:
    """`base`, or `base_1`, `base_2`, ...: a column name none of `taken` uses."""
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    return name


def _column(data: pd.DataFrame, name: object) -> pd.Series:
    if not isinstance(name, str):
        raise DataError(f"column names must be strings, got {name!r}", str(name))
    col = data[name]
    if isinstance(col, pd.DataFrame):
        raise DataError(
            f"column name {name!r} appears {col.shape[1]} times in the data; R needs unique names",
            name,
        )
    return col


def encode_frame(
    data: pd.DataFrame,
    formula: str,
    weights: object = None,
    offset: object = None,
    *,
    all_columns: bool = False,
) -> tuple[list[Column], int, str | None, str | None]:
    """The columns the formula uses, plus weights/offset under names no formula variable has.

    Only the columns the model uses travel to R: any other column (a NUL in its name, a
    duplicated or empty name, a type R cannot take) cannot change what R fits. `all_columns`:
    every column R can take (a diagnostic, `describe_data`). Returns (columns, nrow,
    weights column name or None, offset column name or None).
    """
    if not isinstance(data, pd.DataFrame):
        raise DataError(f"data must be a pandas DataFrame, got {type(data).__name__}", "data")
    cols: list[Column] = []
    if all_columns:
        for name in data.columns:
            try:
                cols.append(encode_series(name, _column(data, name)))
            except DataError:
                continue
        taken = {c.name for c in cols}
    else:
        taken = formula_names(formula)
        for name in data.columns:
            if isinstance(name, str) and name in taken:
                cols.append(encode_series(name, _column(data, name)))
    weights_name = offset_name = None
    if weights is not None:
        weights_name = free_name(WEIGHTS_COLUMN, taken)
        values = _float(_vector_arg(weights, data, "weights"))
        cols.append(Column(weights_name, "double", values))
    if offset is not None:
        offset_name = free_name(OFFSET_COLUMN, taken)
        cols.append(Column(offset_name, "double", _float(_vector_arg(offset, data, "offset"))))
    return cols, len(data), weights_name, offset_name
