"""Choosing the solver for a model matrix: `make_design` returns a `DenseDesign` (augmented QR)
or, when X has a one-hot factor block with many columns, a `BlockedDesign`.

The model matrix may be dense or scipy.sparse (the formula module builds it sparse when a factor
has many levels); the one-hot block is found on either without densifying. Not covered: a large
factor interacted with a numeric variable (x:id gives G non-0/1 columns), which falls back to
the dense solver.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from mixbridge.errors import ArgumentError, DataError
from mixbridge.python_impl.bayesglm.blocked import BlockedDesign
from mixbridge.python_impl.bayesglm.dense import DenseDesign
from mixbridge.python_impl.bayesglm.design import Design

# X as bayesglm takes it: dense, scipy.sparse (the formula module's CSC), or a DataFrame
ModelMatrix = np.ndarray | sp.spmatrix | pd.DataFrame
Solver = Literal["auto", "dense", "blocked"]
SOLVERS: tuple[Solver, ...] = ("auto", "dense", "blocked")

# The blocked solver is used when a one-hot block has at least this many columns.
BLOCKED_MIN_LEVELS = 30
# Largest dense model matrix (entries) the dense path will build from a sparse X (~1.6 GB).
DENSE_MAX_ENTRIES = 200_000_000
MAX_SCHUR_COLUMNS = 500  # beyond this the blocked path's dense Schur complement gains nothing


def _find_one_hot(X: np.ndarray | sp.spmatrix, exclude: set[int]) -> tuple[list[int], np.ndarray]:
    """The 0/1 columns (not in `exclude`) whose ones fall in disjoint rows.

    Returns (columns, codes) with codes[i] the position in `columns` of row i's one, or -1.
    Vectorised when all 0/1 columns are disjoint (one factor); greedy in column order otherwise.
    """
    n, p = X.shape
    if sp.issparse(X):
        csc = X.tocsc()
        if (csc.data == 0).any():  # explicit zeros are not entries (copy: X stays as given)
            csc = csc.copy()
            csc.eliminate_zeros()
        entry_col = np.repeat(np.arange(p), np.diff(csc.indptr))
        cand = np.ones(p, dtype=bool)
        cand[entry_col[csc.data != 1]] = False
    else:
        csc = entry_col = None
        cand = np.all((X == 0) | (X == 1), axis=0)
    for j in exclude:
        cand[j] = False
    cols = np.flatnonzero(cand)
    codes = np.full(n, -1, dtype=np.intp)
    if csc is not None and cols.size and cols[-1] - cols[0] + 1 == cols.size:
        # contiguous candidates (one factor's dummies, the usual case): a slice of the entries
        s, e = csc.indptr[cols[0]], csc.indptr[cols[-1] + 1]
        rows, pos = csc.indices[s:e], entry_col[s:e] - cols[0]
    elif csc is not None:
        in_cand = cand[entry_col]
        rows, pos = csc.indices[in_cand], np.cumsum(cand)[entry_col[in_cand]] - 1
    else:
        rows, pos = np.nonzero(X[:, cols])
    if np.bincount(rows, minlength=n).max(initial=0) <= 1:
        codes[rows] = pos
        return cols.tolist(), codes
    chosen: list[int] = []
    order = np.argsort(pos, kind="stable")
    bounds = np.searchsorted(pos[order], np.arange(len(cols) + 1))
    for k, j in enumerate(cols):  # overlapping 0/1 columns (several factors): first come first
        r = rows[order[bounds[k] : bounds[k + 1]]]
        if np.any(codes[r] >= 0):
            continue
        codes[r] = len(chosen)
        chosen.append(int(j))
    return chosen, codes


def _densify(X: np.ndarray | sp.spmatrix) -> np.ndarray:
    if not sp.issparse(X):
        return X
    n, p = X.shape
    if n * p > DENSE_MAX_ENTRIES:
        raise DataError(
            f"the model matrix ({n} rows x {p} columns) has no single one-hot factor block the "
            f"blocked solver can use (or more than {MAX_SCHUR_COLUMNS} other columns, e.g. a "
            "large factor interacted with a numeric variable), and is too large to solve "
            "densely; simplify the formula",
            "formula",
        )
    return X.toarray()


def _dense_columns(X: sp.spmatrix, cols: np.ndarray) -> np.ndarray:
    """X[:, cols] as a dense array (scipy's column slicing costs ~0.1 ms even for 2 columns)."""
    csc = X.tocsc()
    if not csc.has_canonical_format:  # duplicate entries: let scipy sum them
        return csc[:, cols].toarray()
    out = np.zeros((csc.shape[0], len(cols)))
    for k, j in enumerate(cols):
        s, e = csc.indptr[j], csc.indptr[j + 1]
        out[csc.indices[s:e], k] = csc.data[s:e]
    return out


def make_design(X: ModelMatrix, has_intercept: bool, solver: Solver = "auto") -> Design:
    """Pick the dense QR path or the blocked one-hot path (`solver`: auto, dense, blocked)."""
    if solver not in SOLVERS:
        raise ArgumentError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}", "solver")
    if isinstance(X, pd.DataFrame):
        X = X.to_numpy(dtype=float)
    if not sp.issparse(X):
        X = np.asarray(X, dtype=float)
        if X.ndim == 1:
            X = X[:, None]
    n, p = X.shape
    if solver == "dense" or (solver == "auto" and p < BLOCKED_MIN_LEVELS):
        return DenseDesign(_densify(X))
    block, codes = _find_one_hot(X, {0} if has_intercept else set())
    few = len(block) < BLOCKED_MIN_LEVELS if solver == "auto" else not block
    if few or p - len(block) > MAX_SCHUR_COLUMNS:
        return DenseDesign(_densify(X))
    in_block = np.zeros(p, dtype=bool)
    in_block[block] = True
    dense = np.flatnonzero(~in_block)
    XD = _dense_columns(X, dense) if sp.issparse(X) else X[:, dense]
    return BlockedDesign(n, p, np.array(block), codes, dense, XD)
