"""Data in: any DataFrame library's frame as the pandas frame the checks and engines read.

pandas DataFrames pass through untouched. polars DataFrames and LazyFrames, pyarrow Tables and
every other frame narwhals supports (modin, cuDF, DuckDB relations, ...) are converted column
by column through Arrow, only the columns the call uses (for a LazyFrame only those are
collected), and numeric columns without missing values become numpy views of the library's own
buffers: no copy. Copies happen where the memory layout differs: a column in several chunks
(concatenated), a numeric column with nulls (nulls filled), booleans (Arrow packs them in bits),
strings (pandas builds its own), a polars Categorical (cast to its strings), and whatever the
source library does when it hands out Arrow (e.g. a LazyFrame's collect).

Types map to what a pandas user would have, so both engines treat them alike (and R gets them as
`mixbridge.bridge.convert` documents):

    float / int / uint    -> numpy column; with nulls: float NaN, pandas nullable Int (NA)
    bool                  -> numpy bool; with nulls: pandas "boolean" (NA)
    string                -> pandas string column (an R factor, levels sorted as R's factor())
    Arrow dictionary      -> pandas Categorical, the dictionary's order as level order,
                             ordered when the dictionary type says so (as Table.to_pandas())
    polars Enum           -> pandas Categorical with the Enum's categories as levels, unordered
    polars Categorical    -> its strings (levels: the values present, sorted as R's factor())
    anything else         -> pyarrow's to_pandas() (dates etc.: the engines' usual errors)

Why polars Enum is not an R ordered factor: polars has one fixed-order category type for both
uses, and an R ordered factor switches to polynomial contrasts. Why polars Categorical is read
as strings: its physical order is the order in which the process first saw each string (a
global registry), not a property of the data; polars itself sorts it lexically.

Null (polars null, Arrow null) is a missing value exactly like pandas NaN/None: the row is left
out (na.omit) on both engines.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mixbridge.errors import DataError, MixbridgeError

PARQUET_HINT = 'pip install "mixbridge[arrow]"'
EXTRA_HINT = 'pip install "mixbridge[polars]" (polars) or "mixbridge[arrow]" (pyarrow and others)'
_KNOWN_LIBRARIES = ("polars", "pyarrow", "narwhals", "modin", "cudf", "duckdb", "ibis", "pyspark")


def is_dask(data: Any) -> bool:
    """Whether `data` is a Dask collection (fitted out of core by engines that accept it)."""
    return type(data).__module__.startswith("dask")


def model_data(
    data: Any, formula: Any, weights: Any = None, offset: Any = None, argument: str = "data"
) -> Any:
    """`data` of a fitting call as a pandas DataFrame holding the columns the call uses.

    pandas and Dask frames are returned as they are (Dask has its own path); anything that is
    not a frame is returned too, for the input checks to name. Only the columns the formula
    (and a weights/offset column name) use are converted; when the formula names something
    that is not a column, every column is, so the error lists them all.
    """
    if isinstance(data, pd.DataFrame) or is_dask(data) or not _may_be_frame(data):
        return data
    wanted = _used_names(formula, weights, offset)
    return as_pandas(data, columns=wanted, argument=argument)


def as_pandas(data: Any, columns: Iterable[str] | None = None, argument: str = "data") -> Any:
    """A frame of any library narwhals supports as a pandas DataFrame (see the module).

    `columns`: convert only these (those of them the frame has; every column when one is
    missing). pandas frames, and objects that are not frames, are returned unchanged.
    """
    if isinstance(data, pd.DataFrame) or not _may_be_frame(data):
        return data
    nw, pa = _libraries(data, argument)
    from narwhals.exceptions import NarwhalsError

    try:
        frame = nw.from_native(data, pass_through=True)
    except NarwhalsError as exc:  # e.g. duplicate column names
        text = " ".join(str(exc).split())
        raise DataError(f"{argument} cannot be read as a data frame: {text}", argument) from None
    if not isinstance(frame, (nw.DataFrame, nw.LazyFrame)):
        return data  # a Series or something else: the checks say what data must be
    names = (
        frame.collect_schema().names() if isinstance(frame, nw.LazyFrame) else list(frame.columns)
    )
    selected = _select(names, columns)
    if isinstance(frame, nw.LazyFrame):
        # collect only what the model reads (projection pushed into the lazy query)
        frame = frame.select(list(dict.fromkeys(selected))).collect()
    out: dict[str, Any] = {}
    for name in selected:
        if not isinstance(name, str):
            raise DataError(f"column names must be strings, got {name!r}", str(name))
        if name in out:
            raise DataError(
                f"column name {name!r} appears {names.count(name)} times in the data; "
                "R needs unique names",
                name,
            )
        out[name] = column_values(frame.get_column(name), name, nw, pa)
    return pd.DataFrame(out, index=pd.RangeIndex(len(frame)), copy=False)


def as_vector(values: Any, argument: str) -> Any:
    """A weights/offset array of another library (polars Series, Arrow array) as numpy float64
    with NaN for nulls; anything else unchanged (the checks take it from there)."""
    if values is None or isinstance(values, (str, np.ndarray, pd.Series, list, tuple)):
        return values
    if not _may_be_frame(values):
        return values
    nw, pa = _libraries(values, argument)
    series = nw.from_native(values, series_only=True, pass_through=True)
    if isinstance(series, nw.Series):
        arrow = _arrow(series, pa)
        return np.asarray(_numeric(arrow, pa, argument), dtype=np.float64)
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return np.asarray(_numeric(values, pa, argument), dtype=np.float64)
    return values


def read_file(path: str | Path, columns: Iterable[str] | None = None) -> pd.DataFrame:
    """A CSV file (pandas, on every install) or a Parquet file (pyarrow: the `arrow` extra) as
    a pandas DataFrame. Parquet columns are converted as an Arrow Table passed to a fitting call
    (`as_pandas`): dictionary columns keep their level order. ValueError for a missing file, an
    unknown suffix, or Parquet without pyarrow (naming the extra to install)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"data file not found: {p}")
    suffix = p.suffix.lower()
    if suffix == ".csv":
        return pd.read_csv(p)
    if suffix not in (".parquet", ".pq"):
        raise ValueError(f"data file must be .csv or .parquet, got {p.name}")
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(
            f"reading {p.name} needs pyarrow, which a plain install of mixbridge does not "
            f"include: {PARQUET_HINT} (CSV files need nothing more)"
        ) from None
    try:
        table = pq.read_table(p, columns=None if columns is None else list(columns))
    except (OSError, ValueError) as exc:  # ArrowInvalid is a ValueError
        raise ValueError(f"cannot read {p.name} as Parquet: {exc}") from None
    return as_pandas(table)


# ---------------------------------------------------------------------------------------------


def _may_be_frame(data: Any) -> bool:
    """A frame (or series) of a library other than pandas/numpy: one narwhals may know."""
    module = type(data).__module__.split(".")[0]
    return (
        module in _KNOWN_LIBRARIES
        or hasattr(data, "__narwhals_dataframe__")
        or (hasattr(data, "__arrow_c_stream__") and module not in ("pandas", "numpy"))
    )


def _libraries(data: Any, argument: str = "data") -> tuple[Any, Any]:
    """narwhals and pyarrow, or a DataError naming the extra that installs them."""
    try:
        import narwhals.stable.v2 as nw
        import pyarrow as pa
    except ImportError as exc:
        raise DataError(
            f"{argument} is a {type(data).__module__.split('.')[0]} {type(data).__name__}; "
            f"reading it needs narwhals and pyarrow ({exc.name} is missing): {EXTRA_HINT}",
            argument,
        ) from None
    return nw, pa


def _used_names(formula: Any, weights: Any, offset: Any) -> list[str] | None:
    """Column names the call reads, or None (every column) when the formula cannot be read."""
    from mixbridge.bridge.convert import formula_names

    if not isinstance(formula, str):
        return None
    try:
        names = sorted(formula_names(formula))
    except (MixbridgeError, RecursionError):
        return None  # the input checks raise the formula's error
    names += [a for a in (weights, offset) if isinstance(a, str)]
    return names


def _select(names: list[str], columns: Iterable[str] | None) -> list[str]:
    if columns is None:
        return names
    wanted = set(columns)
    if not wanted <= set(names):
        return names
    return [n for n in names if n in wanted]


def _arrow(series: Any, pa: Any) -> Any:
    """The series as an Arrow (chunked) array, the library's own buffers where it has them."""
    native = series.to_native()
    if isinstance(native, (pa.Array, pa.ChunkedArray)):
        return native
    return series.to_arrow()


def column_values(series: Any, name: str, nw: Any, pa: Any) -> Any:
    """One narwhals Series as a numpy array or pandas array/Series (see the module's table)."""
    polars_enum = False
    if series.implementation.is_polars():
        import polars as pl

        # (the native dtype: narwhals' own builds an Enum's category list, 9 ms for 5e4)
        native_dtype = series.to_native().dtype
        polars_enum = isinstance(native_dtype, pl.Enum)
        if isinstance(native_dtype, pl.Categorical):
            series = series.cast(nw.String)  # its physical order is not the data's
    arrow = _arrow(series, pa)
    if pa.types.is_dictionary(arrow.type):
        # a polars Enum exports as an ordered dictionary; it is not an R ordered factor
        return _categorical(arrow, arrow.type.ordered and not polars_enum, name, pa)
    if pa.types.is_integer(arrow.type) or pa.types.is_floating(arrow.type):
        return _numeric(arrow, pa, name)
    if pa.types.is_boolean(arrow.type):
        if arrow.null_count == 0:
            return _one_chunk(arrow, pa).to_numpy(zero_copy_only=False)
        mask = np.asarray(_one_chunk(arrow.is_null(), pa).to_numpy(zero_copy_only=False))
        filled = _one_chunk(arrow.fill_null(False), pa).to_numpy(zero_copy_only=False)
        return pd.arrays.BooleanArray(np.asarray(filled, dtype=bool), mask)
    if getattr(pa.types, "is_string_view", lambda t: False)(arrow.type):
        arrow = arrow.cast(pa.large_string())  # older pandas cannot read string views
    return arrow.to_pandas()


def _categorical(arrow: Any, ordered: bool, name: str, pa: Any) -> pd.Categorical:
    """An Arrow dictionary column as a pandas Categorical: the dictionary is the level order
    (chunks with different dictionaries are unified, the first chunk's order first); the
    indices are the codes, null -> -1."""
    if isinstance(arrow, pa.ChunkedArray):
        if arrow.num_chunks > 1:
            arrow = arrow.unify_dictionaries()
        chunks = arrow.chunks or [pa.array([], type=arrow.type)]
        dictionary = chunks[0].dictionary
        indices = _one_chunk(pa.chunked_array([c.indices for c in chunks]), pa)
    else:
        dictionary, indices = arrow.dictionary, arrow.indices
    if dictionary.null_count:
        raise DataError(f"column {name!r}: its dictionary has a missing value as a level", name)
    categories = pd.Index(dictionary.to_pandas())
    if categories.has_duplicates:
        raise DataError(f"column {name!r}: its dictionary holds a level more than once", name)
    codes = indices.fill_null(0).to_numpy(zero_copy_only=False)
    if indices.null_count:
        codes = np.where(indices.is_null().to_numpy(zero_copy_only=False), -1, codes)
    dtype = pd.CategoricalDtype(categories, ordered=bool(ordered))
    # Arrow guarantees every index lies within its dictionary
    return pd.Categorical.from_codes(codes, dtype=dtype, validate=False)


def _one_chunk(arrow: Any, pa: Any) -> Any:
    """A plain Arrow array (the single chunk itself, or the chunks concatenated: a copy)."""
    if isinstance(arrow, pa.ChunkedArray):
        if arrow.num_chunks == 1:
            return arrow.chunk(0)
        return arrow.combine_chunks()
    return arrow


def _numeric(arrow: Any, pa: Any, name: str) -> Any:
    """An int/float Arrow array as numpy (a view when it has one chunk and no nulls)."""
    typ = arrow.type
    if not (pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_null(typ)):
        raise DataError(f"{name} must be numeric, got Arrow type {typ}", name)
    flat = _one_chunk(arrow, pa)
    if pa.types.is_null(typ):
        return np.full(len(flat), np.nan)
    if pa.types.is_floating(typ) and typ.bit_width == 16:
        flat = flat.cast(pa.float32())
    if flat.null_count == 0:
        return flat.to_numpy(zero_copy_only=False)  # a view: no nulls, one buffer
    if pa.types.is_floating(flat.type):
        return flat.to_numpy(zero_copy_only=False)  # nulls become NaN (a copy)
    mask = np.asarray(flat.is_null().to_numpy(zero_copy_only=False))
    filled = flat.fill_null(0).to_numpy(zero_copy_only=False)
    return pd.arrays.IntegerArray(filled, mask)  # pandas' nullable Int of the same width
