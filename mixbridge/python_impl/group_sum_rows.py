"""The rows of glmer's group-sum fit and the ONE pass over them (`row_pass`): everything the
fit (`group_sum_kernel`) reads from the rows is the per-group sums of one pass, so the pass runs
where the rows are. In a Dask map-reduce (`distributed_glmer.DaskRows`) each partition's `Rows`
gives its sums and `add` combines them; in memory, `MemoryRows` is one block and
`SortedColumns` reads columns ordered by group in chunks of whole groups.

A pass computes at η = o + Xβ + b[g] (or η from mustart), μ = g⁻¹(η), W = w·μ' (canonical
link): the deviance's μ-dependent part and, as a `Request` asks, the group sums of the u-only
and joint PIRLS steps and of the gradient (see `group_sum_kernel`'s table).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
from scipy import special

EDGE = 1e-10  # fitted values this close to the edge count as separation (glmer's warning)


# ---------------------------------------------------------------------------------------------
# The rows and the one pass over them (runs where the rows are: a worker, or in memory)


@dataclass
class Rows:
    """One block of model rows: X (n×p), group codes (global), response y, prior weights w
    (None: unit), offset, and η from mustart (lme4's start)."""

    X: np.ndarray
    codes: np.ndarray
    y: np.ndarray
    w: np.ndarray | None
    off: np.ndarray
    eta_init: np.ndarray
    logit: bool
    n_groups: int
    # rows ordered by group: (the groups present, their first rows, their row counts); group
    # sums are then segment sums and b[g] a repeat (no scattered memory access)
    segments: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def gsum(self, v: np.ndarray) -> np.ndarray:
        if self.segments is not None and v.size:
            groups, starts, _ = self.segments
            out = np.zeros(self.n_groups)
            out[groups] = np.add.reduceat(v, starts)
            return out
        return np.bincount(self.codes, weights=v, minlength=self.n_groups)

    def expand(self, b: np.ndarray) -> np.ndarray:
        """b[g] for every row."""
        if self.segments is not None:
            groups, _, counts = self.segments
            return np.repeat(b[groups], counts)
        return b[self.codes]

    def order_by_group(self) -> Rows:
        """These rows ordered by group (stable), with their segments."""
        order = np.argsort(self.codes, kind="stable")
        codes = self.codes[order]
        counts = np.bincount(codes, minlength=self.n_groups)
        groups = np.flatnonzero(counts)
        starts = np.concatenate([[0], np.cumsum(counts[groups])[:-1]]).astype(np.intp)
        w = None if self.w is None else self.w[order]
        return Rows(self.X[order], codes, self.y[order], w, self.off[order],
                    self.eta_init[order], self.logit, self.n_groups,
                    (groups, starts, counts[groups]))  # fmt: skip


@dataclass(frozen=True)
class Request:
    """What one pass computes. η = eta_init (`beta` None) or o + Xβ + b[g]; `dbeta` (u-only
    start from another linear predictor): Σ_j W·(X dbeta + b[g]); `joint`: the joint step's
    sums; `xsums`: Σ_j W x and X'WX (R_X); `grad`: the gradient's sums; `edge`: rows at the
    edge. `cols`: which columns of X are not all ones (their group sums are needed)."""

    beta: np.ndarray | None
    b: np.ndarray | None
    cols: tuple[int, ...]
    dbeta: np.ndarray | None = None
    joint: bool = False
    xsums: bool = False
    grad: bool = False
    edge: bool = False


def row_pass(rows: Rows, req: Request) -> dict[str, Any]:
    """The sums of one block of rows (see `Request`); add the results of blocks with `add`."""
    X, w, y = rows.X, rows.w, rows.y
    out: dict[str, Any] = {}
    if req.beta is None:
        eta = rows.eta_init.copy()
        out["etamax"] = float(np.max(np.abs(eta), initial=0.0))
    else:
        eta = X @ req.beta
        eta += rows.off
        out["offmax"] = float(np.max(np.abs(eta), initial=0.0))
        if req.b is not None:
            eta += rows.expand(req.b)
        if req.dbeta is not None:
            out["etamax"] = float(np.max(np.abs(eta), initial=0.0))
    mu = special.expit(eta) if rows.logit else np.exp(eta)
    W = mu - mu * mu if rows.logit else mu.copy()
    if w is not None:
        W *= w
    wmu = mu if w is None else w * mu
    # the deviance's μ-dependent part (its data-only constant is added by the caller)
    if rows.logit:
        lm = np.log(mu)
        s = float(lm.sum()) if w is None else float(w @ lm)
        if w is None:  # Σ (1 − y)η without a temporary
            out["dev"] = -2.0 * s + 2.0 * (float(eta.sum()) - float(y @ eta))
        else:
            out["dev"] = -2.0 * s + 2.0 * float((w * (1.0 - y)) @ eta)
    else:
        wy = y if w is None else w * y
        out["dev"] = 2.0 * float(wmu.sum()) - 2.0 * float(wy @ eta)
    out["S"] = rows.gsum(W)
    out["swmu"] = rows.gsum(wmu)
    cols = list(req.cols)
    if req.dbeta is not None:
        base = X @ req.dbeta
        if req.b is not None:
            base += rows.expand(req.b)
        out["swd"] = rows.gsum(W * base)
    if req.joint or req.xsums or req.grad:
        out["sx"] = np.column_stack([rows.gsum(W * X[:, k]) for k in cols]) if cols else None
    if req.joint or req.xsums:
        out["xwx"] = (X * W[:, None]).T @ X
    if req.joint:
        # W z = W (η − o) + w (y − μ)
        wz = eta - rows.off
        wz *= W
        wz += (y if w is None else w * y) - wmu
        out["xwz"] = X.T @ wz
        out["sz"] = rows.gsum(wz)
    if req.grad:
        dW = W * (1.0 - 2.0 * mu) if rows.logit else W
        out["sdW"] = rows.gsum(dW)
        out["sxdW"] = np.column_stack([rows.gsum(dW * X[:, k]) for k in cols]) if cols else None
        r = (y if w is None else w * y) - wmu
        out["xr"] = X.T @ r
    if req.edge:
        if rows.logit:
            out["edge"] = int(np.count_nonzero((mu <= EDGE) | (mu >= 1 - EDGE)))
        else:
            out["edge"] = int(np.count_nonzero(mu <= EDGE))
    return out


def add(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two blocks' sums as one (maxima for the |η| bounds)."""
    out = {}
    for key, va in a.items():
        vb = b[key]
        if key in ("offmax", "etamax"):
            out[key] = max(va, vb)
        elif va is None:
            out[key] = None
        else:
            out[key] = va + vb
    return out


class RowSource(Protocol):
    """Where the rows are: `run(req)` is one pass over all of them (the added sums)."""

    n_groups: int

    def run(self, req: Request) -> dict[str, Any]: ...


class MemoryRows:
    """Rows in memory, as one block."""

    def __init__(self, rows: Rows) -> None:
        self.rows, self.n_groups = rows, rows.n_groups

    def run(self, req: Request) -> dict[str, Any]:
        return row_pass(self.rows, req)


# ---------------------------------------------------------------------------------------------
# Rows in memory, ordered by group and read in chunks of whole groups

# the sums with one row per group (the rest are scalars or p-vectors / p×p matrices)
GROUP_KEYS = ("S", "swmu", "swd", "sx", "sz", "sdW", "sxdW")


class SortedColumns:
    """A `RowSource` over columns held in memory, ordered by group: each pass reads them in
    chunks of about `chunk_rows` rows made of whole groups, so every temporary of the pass is
    chunk-sized (the memory of a pass is O(chunk + G), not O(n)) and the chunk's group sums
    are segment sums written straight into their slice of the result.

    `cols`: X's columns (None: the intercept), `y`, `w` (None: unit), `off` (None: zero) in
    group order; `counts`: rows per group; `init`: (y, w) of a chunk -> η from mustart."""

    def __init__(
        self,
        cols: list[np.ndarray | None],
        y: np.ndarray,
        w: np.ndarray | None,
        off: np.ndarray | None,
        counts: np.ndarray,
        logit: bool,
        init: Callable[[np.ndarray, np.ndarray | None], np.ndarray],
        chunk_rows: int = 1 << 16,
    ) -> None:
        self.cols, self.y, self.w, self.off = cols, y, w, off
        self.counts = np.asarray(counts, dtype=np.intp)
        self.n_groups = int(self.counts.size)
        self.logit, self.init = logit, init
        self.starts = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.intp)
        self.chunks: list[tuple[int, int]] = []
        ga = 0
        while ga < self.n_groups:
            gb = int(np.searchsorted(self.starts, self.starts[ga] + chunk_rows, side="right")) - 1
            gb = min(max(gb, ga + 1), self.n_groups)
            self.chunks.append((ga, gb))
            ga = gb

    def rows(self, ga: int, gb: int, with_init: bool = False) -> Rows:
        """The rows of groups [ga, gb) as a `Rows` block (X assembled chunk-sized)."""
        a, b = int(self.starts[ga]), int(self.starts[gb])
        X = np.empty((b - a, len(self.cols)))
        for k, c in enumerate(self.cols):
            X[:, k] = 1.0 if c is None else c[a:b]
        y = self.y[a:b]
        w = None if self.w is None else self.w[a:b]
        off = np.zeros(b - a) if self.off is None else self.off[a:b]
        eta_init = self.init(y, w) + off if with_init else off
        counts = self.counts[ga:gb]
        starts = self.starts[ga:gb] - a
        segments = (np.arange(gb - ga), starts, counts)
        return Rows(X, np.zeros(0, np.intp), y, w, off, eta_init, self.logit, gb - ga, segments)

    def run(self, req: Request) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for ga, gb in self.chunks:
            sub = replace(req, b=None if req.b is None else req.b[ga:gb])
            r = row_pass(self.rows(ga, gb, with_init=req.beta is None), sub)
            if not out:
                for key, v in r.items():
                    if key in GROUP_KEYS and v is not None:
                        full = np.zeros((self.n_groups, *np.shape(v)[1:]))
                        full[ga:gb] = v
                        out[key] = full
                    else:
                        out[key] = v
                continue
            for key, v in r.items():
                if key in GROUP_KEYS:
                    if v is not None:
                        out[key][ga:gb] = v
                elif key in ("offmax", "etamax"):
                    out[key] = max(out[key], v)
                else:
                    out[key] = out[key] + v
        return out

    def group_sums(self, v: Callable[[int, int], np.ndarray]) -> np.ndarray:
        """Σ_j of a per-row quantity given chunk by chunk (`v(a, b)` for rows [a, b))."""
        out = np.zeros(self.n_groups)
        for ga, gb in self.chunks:
            a, b = int(self.starts[ga]), int(self.starts[gb])
            out[ga:gb] = np.add.reduceat(v(a, b), self.starts[ga:gb] - a)
        return out
