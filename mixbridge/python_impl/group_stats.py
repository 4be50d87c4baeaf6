"""Sufficient statistics of `y ~ X + (1|g)` in one data pass (lme4_spec.md §2.1): the input of
lmer's O(G) criterion (`lmm_scalar`), from rows in memory (`group_stats`, or X's columns with
`group_stats_columns`) or from a Dask DataFrame's partitions (`distributed`), which add up.

Numerical safety: when X has an intercept column, y and the other columns are shifted by a
provisional mean before accumulating (the criterion is invariant; β̂ and A⁻¹ are mapped back).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

_CHUNK_ROWS = 1 << 17  # rows per block in the data pass: keeps temporaries small and in cache


@dataclass
class PooledStats:
    """Groups pooled by their weight s_j: ω_j = θ²/(1+θ²s_j) depends on s_j only, so
    Σ_j ω_j a_j a_j' = Σ_k ω(s_k) M_k with M_k = Σ_{j: s_j = s_k} a_j a_j', a_j = [SX_j, Sy_j]."""

    s: np.ndarray  # (K,) distinct group weights
    count: np.ndarray  # (K,) groups per weight
    M: np.ndarray  # (T, K): upper triangles (T entries, row-major) of the M_k, as columns
    aug_upper: np.ndarray  # (T,) upper triangle of [X y]'W[X y]
    iu: np.ndarray
    ju: np.ndarray


@dataclass
class GroupStats:
    """Sufficient statistics of `y ~ X + (1|g)` (spec §2.1), on shifted y and X.

    `x_shift` (p,) and `y_shift` are the provisional means subtracted before accumulating (zeros
    when X has no intercept column). Two GroupStats with the same G, p and shifts add up to the
    statistics of the concatenated rows.
    """

    s: np.ndarray  # (G,) Σ w per group
    Sy: np.ndarray  # (G,) Σ w ỹ per group
    SX: np.ndarray  # (G, p) Σ w x per group
    XtX: np.ndarray  # (p, p) X'WX
    Xty: np.ndarray  # (p,) X'Wỹ
    yty: float  # ỹ'Wỹ
    ldW: float  # Σ log w
    n: int  # number of rows
    x_shift: np.ndarray = field(default_factory=lambda: np.zeros(0))
    y_shift: float = 0.0
    intercept: int | None = None  # index of the all-ones column of X, if any
    _pooled: PooledStats | None = field(default=None, repr=False, compare=False)

    @property
    def n_groups(self) -> int:
        return int(self.s.shape[0])

    @property
    def p(self) -> int:
        return int(self.XtX.shape[0])

    def select(self, keep: np.ndarray | list[int]) -> GroupStats:
        """The statistics of X[:, keep] (e.g. after dropping rank-deficient columns)."""
        keep = [int(k) for k in keep]
        icol = keep.index(self.intercept) if self.intercept in keep else None
        return GroupStats(
            s=self.s,
            Sy=self.Sy,
            SX=self.SX[:, keep],
            XtX=self.XtX[np.ix_(keep, keep)],
            Xty=self.Xty[keep],
            yty=self.yty,
            ldW=self.ldW,
            n=self.n,
            x_shift=self.x_shift[keep],
            y_shift=self.y_shift,
            intercept=icol,
        )

    def gram_unshifted(self) -> np.ndarray:
        """X'WX of the original (unshifted) columns: S⁻ᵀ·XtX·S⁻¹ with S⁻¹ = I + e_int·x_shift'."""
        if self.intercept is None:
            return self.XtX.copy()
        S_inv = np.eye(self.p)
        S_inv[self.intercept, :] += self.x_shift
        return S_inv.T @ self.XtX @ S_inv

    def pooled(self) -> PooledStats:
        """The cross-products pooled by distinct group weight (computed once, then kept)."""
        if self._pooled is not None:
            return self._pooled
        s_vals, inv, count = _distinct(self.s)
        a = np.column_stack([self.SX, self.Sy])
        m = a.shape[1]
        K = s_vals.shape[0]
        iu, ju = np.triu_indices(m)
        # Only the upper triangle, one row per entry: the per-θ update is one contiguous GEMV.
        M = np.empty((iu.shape[0], K))
        if K <= 32:  # few distinct group sizes (unit weights): one small Gram product per size
            for k in range(K):
                ak = a[inv == k] if K > 1 else a
                M[:, k] = (ak.T @ ak)[iu, ju]
        else:
            for r, (i, j) in enumerate(zip(iu, ju, strict=True)):
                prod = a[:, i] * a[:, j]
                if K == self.n_groups:  # all weights distinct: inv is a permutation
                    M[r, inv] = prod
                else:
                    M[r] = np.bincount(inv, weights=prod, minlength=K)
        aug = np.empty((m, m))
        aug[: m - 1, : m - 1] = self.XtX
        aug[: m - 1, m - 1] = self.Xty
        aug[m - 1, : m - 1] = self.Xty
        aug[m - 1, m - 1] = self.yty
        self._pooled = PooledStats(
            s=s_vals, count=count.astype(float), M=M, aug_upper=aug[iu, ju], iu=iu, ju=ju
        )
        return self._pooled

    def __add__(self, other: GroupStats) -> GroupStats:
        if self.s.shape != other.s.shape or self.XtX.shape != other.XtX.shape:
            raise ValueError("GroupStats differ in number of groups or columns")
        if (
            self.intercept != other.intercept
            or self.y_shift != other.y_shift
            or not np.array_equal(self.x_shift, other.x_shift)
        ):
            raise ValueError("GroupStats were accumulated with different shifts")
        return GroupStats(
            s=self.s + other.s,
            Sy=self.Sy + other.Sy,
            SX=self.SX + other.SX,
            XtX=self.XtX + other.XtX,
            Xty=self.Xty + other.Xty,
            yty=self.yty + other.yty,
            ldW=self.ldW + other.ldW,
            n=self.n + other.n,
            x_shift=self.x_shift,
            y_shift=self.y_shift,
            intercept=self.intercept,
        )


# ---------------------------------------------------------------------------------------------
# One data pass


def find_intercept(X: np.ndarray) -> int | None:
    """Index of a column of X that is identically 1 (checked on the first rows, then fully)."""
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] == 0:
        return None
    head = X[: min(64, X.shape[0])]
    for k in np.flatnonzero(np.all(head == 1.0, axis=0)):
        if np.all(X[:, k] == 1.0):
            return int(k)
    return None


def default_shift(
    X: np.ndarray, y: np.ndarray, intercept: int | None, rows: int = 100_000
) -> tuple[np.ndarray, float]:
    """Provisional means (of the first `rows` rows) to centre on; zeros without an intercept."""
    p = X.shape[1]
    if intercept is None or X.shape[0] == 0:
        return np.zeros(p), 0.0
    x_shift = np.asarray(X[:rows].mean(axis=0), dtype=float)
    x_shift[intercept] = 0.0
    return x_shift, float(np.mean(y[:rows]))


def group_stats(
    X: np.ndarray,
    y: np.ndarray,
    w: np.ndarray | None,
    codes: np.ndarray,
    n_groups: int,
    *,
    shift: tuple[np.ndarray, float] | None = None,
    intercept: int | None | bool = True,
) -> GroupStats:
    """Accumulate the §2.1 statistics in one pass over the rows (y already minus the offset).

    `codes` are integer group codes in [0, n_groups). `w` None means unit weights.
    `intercept=True` detects an all-ones column; pass its index (or None) to skip detection, e.g.
    per chunk of a larger data set. `shift` (x_shift, y_shift) fixes the centring, which must be
    the same for chunks that will be added together; by default it comes from these rows.
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    n, p = X.shape
    if intercept is True:
        icol = find_intercept(X)
    else:
        icol = None if intercept is False else intercept
    if w is None and shift is None and icol == 0 and X.flags.f_contiguous:
        # column-major [1, x...] (the formula module's layout): the column path, whose group
        # sums are plain bincounts of the contiguous columns
        return group_stats_columns([X[:, k] for k in range(1, p)], y, None, codes, n_groups)
    x_shift, y_shift = shift if shift is not None else default_shift(X, y, icol)
    x_shift = np.asarray(x_shift, dtype=float)

    def fill(a: int, b: int, out: np.ndarray) -> None:
        np.subtract(X[a:b].T, x_shift[:, None], out=out)

    return _accumulate(fill, n, p, y, w, codes, n_groups, x_shift, y_shift, icol)


def group_stats_columns(
    columns: list[np.ndarray],
    y: np.ndarray,
    w: np.ndarray | None,
    codes: np.ndarray,
    n_groups: int,
    *,
    shift: tuple[np.ndarray, float] | None = None,
    x_gram: np.ndarray | None = None,
    counts: np.ndarray | None = None,
) -> GroupStats:
    """group_stats for X = [1, columns...] without ever building X: each block of rows is
    assembled from the 1-D columns in a small buffer, so memory stays at the inputs + O(G).
    `x_gram`: X'X (unshifted, X = [1, columns...]) when already computed, e.g. by the formula
    layer's rank check; only the products with y are then computed. `counts`: the rows per
    group, when the id coding already counted them (one bincount fewer)."""
    cols = [np.asarray(c, dtype=float) for c in columns]
    y = np.asarray(y, dtype=float)
    n, p = y.shape[0], len(cols) + 1
    if shift is None:
        rows = min(n, 100_000)
        x_shift = np.array([0.0] + [float(np.mean(c[:rows])) for c in cols])
        y_shift = float(np.mean(y[:rows])) if n else 0.0
    else:
        x_shift, y_shift = np.asarray(shift[0], dtype=float), float(shift[1])

    def fill(a: int, b: int, out: np.ndarray) -> None:
        out[0] = 1.0
        for k, c in enumerate(cols, start=1):
            np.subtract(c[a:b], x_shift[k], out=out[k])

    if w is not None:
        return _accumulate(fill, n, p, y, w, codes, n_groups, x_shift, y_shift, 0)
    # Unit weights: the group sums straight from the contiguous columns (exactly the numpy
    # floor's bincounts) and the Gram from dot products, both shifted afterwards:
    # Σ_j(x − c) = Σ_j x − n_j·c. That costs O(eps·|c|/sd) relative digits, negligible while
    # mean²/variance ≤ _MAX_SHIFT_LOSS; beyond it, the blocked pass shifts before summing.
    gi = np.asarray(codes).astype(np.intp, copy=False)
    if gi.dtype.kind not in "iu":
        raise TypeError("codes must be integers")
    if counts is not None and len(counts) == n_groups:
        s = np.asarray(counts, dtype=float)
    else:
        s = np.bincount(gi, minlength=n_groups).astype(float)
    raw = [np.bincount(gi, weights=c, minlength=n_groups) for c in [*cols, y]]
    shifts = np.append(x_shift[1:], y_shift)
    known = None if x_gram is None else np.asarray(x_gram, dtype=float)[1:, 1:]
    aug = _shifted_gram([*cols, y], shifts, np.array([r.sum() for r in raw]), n, known)
    if aug is None:
        # large means against the spread: shifting after summing would cancel digits in the
        # group sums too, so everything is accumulated from blocks shifted before summing
        return _accumulate(fill, n, p, y, None, gi, n_groups, x_shift, y_shift, 0)
    SX = np.empty((n_groups, p))
    SX[:, 0] = s
    for k in range(1, p):
        SX[:, k] = raw[k - 1] - s * x_shift[k]
    return GroupStats(
        s=s,
        Sy=raw[-1] - s * y_shift,
        SX=SX,
        XtX=aug[:p, :p].copy(),
        Xty=aug[:p, p].copy(),
        yty=float(aug[p, p]),
        ldW=0.0,
        n=int(n),
        x_shift=x_shift,
        y_shift=float(y_shift),
        intercept=0,
    )


# Cancellation allowed when a cross-product is shifted after the multiplication: with
# mean²/variance ≤ 1e4 a column loses at most ~4 of its 16 digits (relative error ≤ ~1e-12 in the
# centred Gram, as in lme4's own unshifted crossprod(X)); beyond it the blocked, shifted pass runs.
_MAX_SHIFT_LOSS = 1e4


def _shifted_gram(
    cols: list[np.ndarray],
    shifts: np.ndarray,
    totals: np.ndarray,
    n: int,
    known: np.ndarray | None = None,
) -> np.ndarray | None:
    """[1, cols]'[1, cols] on the shifted scale (cols − shifts) from plain dot products (one BLAS
    call per pair, no temporaries), or None when the shift would cancel too many digits.
    `known`: the unshifted products of the leading columns, already computed."""
    k = len(cols)
    m = 0 if known is None else known.shape[0]
    raw = np.empty((k, k))
    if m:
        raw[:m, :m] = known
    for i in range(k):
        for j in range(max(i, m), k):
            raw[i, j] = raw[j, i] = float(np.dot(cols[i], cols[j]))
    # Σ(a − c_a)(b − c_b) = Σab − c_b Σa − c_a Σb + n c_a c_b
    shifted = (
        raw - np.outer(shifts, totals) - np.outer(totals, shifts) + n * np.outer(shifts, shifts)
    )
    means = totals / max(n, 1)
    spread = np.diag(raw) / max(n, 1) - means**2
    if n < 2 or np.any(spread <= 0) or np.any(means**2 > _MAX_SHIFT_LOSS * spread):
        return None
    aug = np.empty((k + 1, k + 1))
    aug[0, 0] = n
    aug[0, 1:] = aug[1:, 0] = totals - n * shifts
    aug[1:, 1:] = shifted
    return aug


def _accumulate(
    fill: Callable[[int, int, np.ndarray], None],
    n: int,
    p: int,
    y: np.ndarray,
    w: np.ndarray | None,
    codes: np.ndarray,
    n_groups: int,
    x_shift: np.ndarray,
    y_shift: float,
    icol: int | None,
    sums: bool = True,
) -> GroupStats:
    """The one pass: blocks of shifted [X y] (built by `fill`) -> bincounts and a Gram product.
    `sums=False` skips the group sums (the caller computes them)."""
    codes = np.asarray(codes)
    if codes.dtype.kind not in "iu":
        raise TypeError("codes must be integers")
    s = np.zeros(n_groups)
    Sy = np.zeros(n_groups)
    SX = np.zeros((n_groups, p))
    aug = np.zeros((p + 1, p + 1))  # [X y]'W[X y] on the shifted scale
    ldW = 0.0
    others = [k for k in range(p) if k != icol]
    # Chunks large enough that the O(G) cost per bincount call stays small against the rows.
    chunk = max(_CHUNK_ROWS, 4 * n_groups) if sums else _CHUNK_ROWS
    buf = np.empty((p + 1, min(chunk, max(n, 1))))
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        c = codes[a:b].astype(np.intp, copy=False)  # once, not in every bincount
        # Shifted [X y] columns as contiguous rows: fast bincounts and one BLAS Gram product.
        Zt = buf[:, : b - a]
        fill(a, b, Zt[:p])
        np.subtract(y[a:b], y_shift, out=Zt[p])
        if w is None:
            aug += Zt @ Zt.T
            if not sums:
                continue
            s += np.bincount(c, minlength=n_groups)
            Sy += np.bincount(c, weights=Zt[p], minlength=n_groups)
            for k in others:
                SX[:, k] += np.bincount(c, weights=Zt[k], minlength=n_groups)
        else:
            wc = np.asarray(w[a:b], dtype=float)
            s += np.bincount(c, weights=wc, minlength=n_groups)
            Wz = Zt * wc
            aug += Wz @ Zt.T
            Sy += np.bincount(c, weights=Wz[p], minlength=n_groups)
            for k in others:
                SX[:, k] += np.bincount(c, weights=Wz[k], minlength=n_groups)
            ldW += float(np.sum(np.log(wc)))
    if icol is not None:
        SX[:, icol] = s
    aug = (aug + aug.T) / 2.0
    return GroupStats(
        s=s,
        Sy=Sy,
        SX=SX,
        XtX=aug[:p, :p].copy(),
        Xty=aug[:p, p].copy(),
        yty=float(aug[p, p]),
        ldW=ldW,
        n=int(n),
        x_shift=x_shift,
        y_shift=float(y_shift),
        intercept=icol,
    )


def _column_totals(stats: GroupStats) -> np.ndarray:
    """Σ_j SX_j (shifted X's column sums) as one vector-matrix product: numpy's axis-0 sum
    over a (G, p) array with a handful of columns is ~15x slower (0.9 ms at G = 5e4)."""
    return np.ones(stats.n_groups) @ stats.SX


def column_variances(stats: GroupStats) -> np.ndarray:
    """Sample variances of X's columns (unit weights) from the shifted sums, no data pass."""
    n = stats.n
    if n < 2:
        return np.full(stats.XtX.shape[0], np.nan)
    totals = _column_totals(stats)
    return np.maximum(np.diag(stats.XtX) - totals**2 / n, 0.0) / (n - 1)


def column_means(stats: GroupStats) -> np.ndarray:
    """Means of X's columns (unit weights) from the shifted sums, no data pass."""
    if stats.n < 1:
        return np.full(stats.XtX.shape[0], np.nan)
    return _column_totals(stats) / stats.n + stats.x_shift


def _distinct(s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """np.unique(s, return_inverse, return_counts), by counting when s holds small integers
    (unit weights: s_j = n_j), which avoids a sort over G."""
    if s.size and s.min() >= 0 and s.max() < 1e7 and np.all(s == np.floor(s)):
        si = s.astype(np.int64)
        present = np.bincount(si)
        vals = np.flatnonzero(present)
        lookup = np.zeros(present.shape[0], dtype=np.int64)
        lookup[vals] = np.arange(vals.shape[0])
        return vals.astype(float), lookup[si], present[vals]
    return np.unique(s, return_inverse=True, return_counts=True)
