"""arm's bayesglm (arm 1.13-1) in numpy/scipy: the engine="python" implementation.

Pipeline (each step a function below):

    formula, data --build_glm_terms--> GLMTerms (y, weights, offset, X, names)
    --make_priors / scale_priors--> prior mean, scale, df per coefficient
    --make_design--> DenseDesign or BlockedDesign (one-hot factor block + dense columns)
    --fit_bayesglm_core--> IRLS on the augmented least-squares problem (one solve per iteration)
    --> BayesGLMFit

The iteration reproduces `arm::bayesglm.fit` step by step (see /work/shared/docs/bayesglm_spec.md):
p pseudo-observations (row e_j, or colMeans(X) for a centred intercept) with weight
sqrt(dispersion)/prior_sd_j, arm's *approximate-EM* t-prior update (not the exact MAP), the EM
dispersion update started at var(y)/1e4, and arm's stopping rule on the unpenalised deviance and
the dispersion with iter > 1. Matching R to 1e-8 requires this exact path.

Deliberate differences from arm (documented, not bugs):
- aic: glm's definition (per-observation binomial trials); arm passes the scalar n.ok as the
  trials and is wrong for cbind/proportion responses and binomial prior weights != 1.
- `subset` is not supported (it is broken in arm); missing values are always dropped (arm ignores
  `na.action` and uses na.omit).
- Rows with zero prior weight are left out of the dispersion EM step (arm recycles vectors of
  different lengths there and returns a meaningless dispersion); they still count in colMeans(X),
  the centred-intercept prior row, as in arm.
- With an offset and an intercept, the null deviance is refitted with the intercept priors only
  (arm errors there when prior_mean/scale/df are vectors).
- `dispersion=` (extension) holds the dispersion phi fixed: no EM step; the prior rows keep
  weight sqrt(phi)/prior_sd; se = se_display = sqrt(diag(V) * phi), vcov = V * phi,
  dispersion = dispersion_pearson = phi; the stopping rule uses the scaled deviance dev/phi (what
  arm sees when phi is passed as prior weights w/phi); `deviance`/`null_deviance` stay unscaled.
- More than VCOV_MAX_COEFS coefficients: `vcov` is None (a note in `messages`); se are exact.

Known limit: fits that hit arm's step halving (eta/mu out of bounds, e.g. poisson with the
identity link at the boundary) repeat R's path only until rounding differences (1e-16, growing
to ~1e-11 over ~25 halvings) flip the number of halvings in some iteration; from then on the two
paths differ and arm's deviance-based stopping rule can stop them at different points.
`extra["deviance_path"]` holds the per-iteration deviances (as R's trace=TRUE prints them).

Speed: a one-hot factor block (e.g. `y ~ 0 + factor(id)` or `y ~ x + factor(id)`) is never
expanded into a dense n x G matrix or a G x G system. The augmented normal equations are solved by
block elimination (diagonal block for the factor, a small dense Schur complement for the other
columns, Sherman-Morrison for the centred-intercept prior row), with one step of iterative
refinement whose residual is computed from the data, so it agrees with arm's QR to ~1e-12.
The data parts of X'W^2X are reused while the working weights repeat (gaussian identity: every
iteration), and the reported p x p vcov (p <= VCOV_MAX_COEFS) is one rank-(q+1) product plus the
factor block's diagonal (q = number of other columns): O(p^2) to fill, never an O(G^3) inverse.
When the model uses a factor with >= SPARSE_MIN_LEVELS levels, the model matrix itself is
assembled sparsely (the formula module's `build_glm_terms(..., sparse="auto")`), so
`y ~ x + factor(id)` with 1e5 levels never allocates n x G. Not covered: a large factor
interacted with a numeric variable (x:id gives G non-0/1 columns, which fall back to the dense
solver).
"""

from __future__ import annotations

import functools
import importlib.metadata
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy
import scipy.linalg.lapack as _lapack
import scipy.sparse as sp

from mixbridge.errors import ArgumentError, ConvergenceError, DataError
from mixbridge.python_impl.families import Family, get_family
from mixbridge.results import BayesGLMFit, Message, emit_warnings

# The blocked solver is used when a one-hot block has at least this many columns.
BLOCKED_MIN_LEVELS = 30
# Above this many coefficients the full p x p vcov is not formed (se/se_display still are).
VCOV_MAX_COEFS = 2000
_LINPACK_TOL = 1e-7  # lm.fit's rank tolerance


# ---------------------------------------------------------------------------------------------
# Priors (spec §2, §3)


@dataclass
class Priors:
    """Prior vectors over all p coefficients (intercept first when there is one).

    `scale` is the x-scaled scale used from the start; `scale_after_first` is what arm switches
    to after the first solve (the gaussian+scaled quirk: s0 = scale * 2 sd(y)); equal otherwise.
    """

    mean: np.ndarray
    scale: np.ndarray
    df: np.ndarray
    scale_after_first: np.ndarray
    messages: list[Message] = field(default_factory=list)


def _prior_vector(name: str, value: Any, nv: int, has_intercept: bool) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(value, dtype=float)).ravel()
    if arr.size == 1:
        return np.repeat(arr, nv)
    if arr.size != nv:
        what = "non-intercept coefficients" if has_intercept else "coefficients"
        raise ArgumentError(
            f"invalid length for {name}: got {arr.size}, expected {nv} (number of {what})", name
        )
    return arr


def make_priors(
    p: int,
    has_intercept: bool,
    family: Family,
    *,
    prior_mean: Any = 0.0,
    prior_scale: Any = None,
    prior_df: Any = 1.0,
    prior_mean_for_intercept: float = 0.0,
    prior_scale_for_intercept: float | None = None,
    prior_df_for_intercept: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """arm's defaults (2.5 and 10, x1.6 for probit), recycling and length checks."""
    probit = family.link == "probit"
    if prior_scale is None:
        prior_scale = 2.5 * (1.6 if probit else 1.0)
    if prior_scale_for_intercept is None:
        prior_scale_for_intercept = 10.0 * (1.6 if probit else 1.0)
    nv = p - int(has_intercept)
    mean = _prior_vector("prior_mean", prior_mean, nv, has_intercept)
    scale = _prior_vector("prior_scale", prior_scale, nv, has_intercept)
    df = _prior_vector("prior_df", prior_df, nv, has_intercept)
    if has_intercept:
        mean = np.concatenate([[float(prior_mean_for_intercept)], mean])
        scale = np.concatenate([[float(prior_scale_for_intercept)], scale])
        df = np.concatenate([[float(prior_df_for_intercept)], df])
    for name, arr in (("prior_mean", mean), ("prior_scale", scale), ("prior_df", df)):
        if np.any(np.isnan(arr)):
            raise ArgumentError(f"{name} must not contain NaN", name)
    if np.any(~np.isfinite(mean)):
        raise ArgumentError("prior_mean must be finite", "prior_mean")
    if np.any(scale <= 0):
        raise ArgumentError(
            f"prior_scale must be positive (Inf for a flat prior), got {scale[scale <= 0][0]:g}",
            "prior_scale",
        )
    if np.any(df <= 0):
        raise ArgumentError(f"prior_df must be positive, got {df[df <= 0][0]:g}", "prior_df")
    return mean, scale, df


def scale_priors(
    mean: np.ndarray,
    scale: np.ndarray,
    df: np.ndarray,
    *,
    design: Design,
    y_raw: np.ndarray,
    family: Family,
    scaled: bool,
    min_prior_scale: float,
    response: str = "y",
) -> Priors:
    """arm's `scaled=TRUE` rules (spec §3): gaussian y-scaling, per-column x-scaling, floor."""
    if not scaled:
        return Priors(mean, scale.copy(), df, scale.copy())
    scale = scale.copy()
    if family.family == "gaussian":
        sd_y = float(np.std(y_raw, ddof=1)) if len(y_raw) > 1 else float("nan")
        if not np.isfinite(sd_y) or sd_y == 0:
            raise DataError(
                f"the response {response!r} is constant (sd = 0): bayesglm's scaled gaussian prior "
                "(scale x 2 sd(y)) is degenerate; use scaled=False",
                response,
            )
        scale = scale * 2.0 * sd_y
    scale0 = scale.copy()
    scale = scale / design.x_scales()
    messages = []
    for j in np.flatnonzero(scale < min_prior_scale):
        scale[j] = min_prior_scale
        messages.append(
            Message(
                "warning",
                f"prior scale for varible {j + 1} set to min.prior.scale = {min_prior_scale:g}",
                "python",
                code="min_prior_scale",
            )
        )
    after = scale0 if family.family == "gaussian" else scale.copy()
    return Priors(mean, scale, df, after, messages)


# ---------------------------------------------------------------------------------------------
# Designs: the model matrix, dense or with a one-hot factor block


@dataclass
class Solution:
    """One augmented least-squares solve: coefficients, diag(V), mean_i x_i'Vx_i, V on demand
    (`full_v(scale)` = scale * V, p x p)."""

    b: np.ndarray
    diag_v: np.ndarray
    mean_leverage: float
    full_v: Callable[[float], np.ndarray]  # scale * V (p x p), formed only on demand


# Raw LAPACK: scipy's high-level wrappers cost ~0.2 ms per call, more than these tiny solves.
def _chol(S: np.ndarray) -> np.ndarray:
    U, info = _lapack.dpotrf(S, lower=0, clean=1)
    if info != 0:
        raise np.linalg.LinAlgError("matrix not positive definite")
    return U


def _chol_solve(U: np.ndarray, r: np.ndarray) -> np.ndarray:
    x, _ = _lapack.dpotrs(U, r, lower=0)
    return x


def _chol_inv(U: np.ndarray) -> np.ndarray:
    inv, _ = _lapack.dpotri(U, lower=0)  # upper triangle only
    lower = _strict_lower(inv.shape[0])
    inv[lower] = inv.T[lower]
    return inv


@functools.cache
def _strict_lower(q: int) -> tuple[np.ndarray, np.ndarray]:
    return np.tril_indices(q, -1)


def _column_scale(x: np.ndarray) -> float:
    """arm's x.scale: 1 for a constant column, max - min for two distinct values, else 2 sd.

    The number of distinct values is found from min/max (no sort): same answer as unique().
    """
    nan = np.isnan(x)
    if nan.any():
        x = x[~nan]
    if x.size == 0:
        return 1.0
    lo, hi = x.min(), x.max()
    if lo == hi:
        return 1.0
    if np.all((x == lo) | (x == hi)):
        return float(hi - lo)
    return float(2.0 * np.std(x, ddof=1))


class Design:
    """A model matrix X (n x p) with the operations the IRLS loop needs."""

    n: int
    p: int

    def matvec(self, b: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def colmeans(self) -> np.ndarray:
        raise NotImplementedError

    def x_scales(self) -> np.ndarray:
        raise NotImplementedError

    def set_leverage_rows(self, rows: np.ndarray) -> None:
        """Rows over which mean_i x_i'Vx_i is taken (arm: all rows; we drop zero weights)."""
        raise NotImplementedError

    def solve(
        self,
        good: np.ndarray,
        w: np.ndarray,
        z: np.ndarray,
        a: np.ndarray,
        m: np.ndarray,
        prior_row0: np.ndarray | None,
    ) -> Solution:
        """Minimise sum_good w^2 (z - x'b)^2 + sum_j a_j^2 (r_j'b - m_j)^2, r_j = e_j except
        r_0 = prior_row0 when given (the centred intercept)."""
        raise NotImplementedError


class DenseDesign(Design):
    """Dense X; each solve is a Householder QR of the augmented matrix, like lm.fit."""

    def __init__(self, X: np.ndarray) -> None:
        self.X = np.ascontiguousarray(X, dtype=float)
        self.n, self.p = self.X.shape
        self._cross = self.X.T @ self.X
        self._lev_n = self.n

    def matvec(self, b: np.ndarray) -> np.ndarray:
        return self.X @ b

    def colmeans(self) -> np.ndarray:
        return self.X.mean(axis=0)

    def x_scales(self) -> np.ndarray:
        return np.array([_column_scale(self.X[:, j]) for j in range(self.p)])

    def set_leverage_rows(self, rows: np.ndarray) -> None:
        if not rows.all():
            Xr = self.X[rows]
            self._cross = Xr.T @ Xr
            self._lev_n = int(rows.sum())

    def solve(self, good, w, z, a, m, prior_row0) -> Solution:
        p = self.p
        prior_rows = np.eye(p)
        if prior_row0 is not None:
            prior_rows[0] = prior_row0
        Xg = self.X[good] if not good.all() else self.X
        A = np.empty((Xg.shape[0] + p, p + 1))
        A[: Xg.shape[0], :p] = Xg * w[:, None]
        A[: Xg.shape[0], p] = z * w
        A[Xg.shape[0] :, :p] = prior_rows * a[:, None]
        A[Xg.shape[0] :, p] = m * a
        R = np.linalg.qr(A, mode="r")
        Rp = R[:p, :p]
        col_norms = np.linalg.norm(A[:, :p], axis=0)
        if np.any(np.abs(np.diag(Rp)) <= _LINPACK_TOL * np.where(col_norms > 0, col_norms, 1.0)):
            raise ConvergenceError(
                "the augmented design is rank deficient (collinear columns with infinite prior "
                "scales): arm stops with 'non-finite coefficients'; give those columns a finite "
                "prior_scale"
            )
        Rp = np.asfortranarray(Rp)
        b, _ = _lapack.dtrtrs(Rp, np.ascontiguousarray(R[:p, p]))
        Rinv, _ = _lapack.dtrtri(Rp)
        Rinv = np.triu(Rinv)
        V = Rinv @ Rinv.T  # chol2inv(R), as summary.glm
        lev = float(np.sum(V * self._cross)) / self._lev_n
        return Solution(b, np.diag(V).copy(), lev, lambda scale=1.0: V * scale)


class BlockedDesign(Design):
    """X = one-hot block (column `block_cols[codes[i]]` is 1 in row i; code -1: none) plus dense
    columns. Solves by block elimination without any n x G or G x G array."""

    def __init__(
        self,
        n: int,
        p: int,
        block_cols: np.ndarray,
        codes: np.ndarray,
        dense_cols: np.ndarray,
        XD: np.ndarray,
    ) -> None:
        self.n, self.p = n, p
        self.block_cols = np.asarray(block_cols, dtype=np.intp)
        self.dense_cols = np.asarray(dense_cols, dtype=np.intp)
        self.G = len(self.block_cols)
        self.q = len(self.dense_cols)
        self.codes = np.asarray(codes, dtype=np.intp)
        # Rows outside the block (code -1) go to a spare bin G, so sums by code and gathers need
        # no row mask: the spare bin is dropped from sums and holds 0 in gathers.
        self._bins = np.where(self.codes >= 0, self.codes, self.G)
        self.XD = np.ascontiguousarray(XD, dtype=float).reshape(n, self.q)
        self._XD_cols = [np.ascontiguousarray(self.XD[:, k]) for k in range(self.q)]
        self._lev_rows: np.ndarray | None = None  # rows of mean_i x_i'Vx_i; None: all rows
        # X'W^2X's pieces depend only on the working weights, which often repeat between
        # iterations (gaussian identity: always): cached with the w^2 they came from.
        self._data_w2: np.ndarray | None = None
        self._data_unit = False  # the cached w^2 is all ones (unit weights, gaussian identity)
        self._w_src: np.ndarray | None = None  # the w, good (and w^2) of the last solve
        self._good_src: np.ndarray | None = None
        self._w2: np.ndarray | None = None
        self._data: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._set_cross(np.ones(n))

    # sums over rows, per block column: bincount of `values` by code
    def _by_code(self, values: np.ndarray) -> np.ndarray:
        return np.bincount(self._bins, weights=values, minlength=self.G + 1)[: self.G]

    def _by_code_cols(self, weights_rows: np.ndarray) -> np.ndarray:
        """G x q: sum over rows of code g of weights_rows[i] * XD[i, k]."""
        out = np.empty((self.G, self.q))
        for k, col in enumerate(self._XD_cols):
            out[:, k] = self._by_code(weights_rows * col)
        return out

    def _set_cross(self, r: np.ndarray) -> None:
        """X'X's blocks over the rows with r = 1 (r is 0/1, as floats)."""
        self._counts = self._by_code(r)
        self._cross_bd = self._by_code_cols(r)
        self._cross_dd = (self.XD * r[:, None]).T @ self.XD
        self._lev_n = int(r.sum())

    def set_leverage_rows(self, rows: np.ndarray) -> None:
        if rows.all():
            if self._lev_rows is not None:
                self._set_cross(np.ones(self.n))
            self._lev_rows = None
        else:
            self._lev_rows = rows
            self._set_cross(rows.astype(float))

    def _data_terms(self, w2: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """X'W^2X's blocks: diagonal of the factor block, factor x dense (G x q), dense x dense."""
        if self._data is None or not (w2 is self._data_w2 or np.array_equal(w2, self._data_w2)):
            XWX = (self.XD * w2[:, None]).T @ self.XD
            self._data = (self._by_code(w2), self._by_code_cols(w2), XWX)
            self._data_w2 = w2
            self._data_unit = bool((w2 == 1.0).all())
        return self._data

    def matvec(self, b: np.ndarray) -> np.ndarray:
        ext = np.empty(self.G + 1)
        ext[: self.G] = b[self.block_cols]
        ext[self.G] = 0.0  # the spare bin: rows outside the block
        gathered = ext.take(self._bins)
        if not self.q:
            return gathered
        out = self.XD @ b[self.dense_cols]
        out += gathered
        return out

    def colmeans(self) -> np.ndarray:
        cm = np.empty(self.p)
        cm[self.block_cols] = self._by_code(np.ones(self.n)) / self.n
        cm[self.dense_cols] = self.XD.mean(axis=0)
        return cm

    def x_scales(self) -> np.ndarray:
        scales = np.ones(self.p)  # a 0/1 dummy (or a constant column) has x.scale 1
        for j, col in zip(self.dense_cols, self._XD_cols, strict=True):
            scales[j] = _column_scale(col)
        return scales

    def _rmatvec(self, w2: np.ndarray | None, e: np.ndarray) -> np.ndarray:
        """X' (w2 * e) over all rows (w2 is zero outside the used rows; None: all ones)."""
        out = np.empty(self.p)
        we = e if w2 is None else w2 * e
        out[self.block_cols] = self._by_code(we)
        out[self.dense_cols] = self.XD.T @ we
        return out

    def solve(self, good, w, z, a, m, prior_row0) -> Solution:
        n, q = self.n, self.q
        bc, dc = self.block_cols, self.dense_cols
        all_good = good.all()
        if w is self._w_src and good is self._good_src:  # as last time (gaussian identity)
            w2 = self._w2
        elif all_good:
            w2 = w * w
        else:
            w2 = np.zeros(n)
            w2[good] = w * w
        self._w_src, self._good_src, self._w2 = w, good, w2
        if all_good:
            zz = z
        else:
            zz = np.zeros(n)
            zz[good] = z
        d_data, E, XWX = self._data_terms(w2)
        w2r = None if self._data_unit else w2  # (1 * e is e)
        a2 = a * a
        diag_prior = a2.copy()
        if prior_row0 is not None:
            diag_prior[0] = 0.0  # the intercept's prior row is the rank-one term below
        # M = X'W^2X + diag(diag_prior); A = M + a0^2 c c' (centred intercept)
        d = d_data + diag_prior[bc]
        if (d <= 0).any():
            raise ConvergenceError(
                "a factor level has no observations and an infinite prior scale: its "
                "coefficient is not identified; give it a finite prior_scale"
            )
        F = E / d[:, None]
        S = XWX + np.diag(diag_prior[dc]) - E.T @ F
        try:
            chol = _chol(S) if q else None
        except np.linalg.LinAlgError as exc:
            raise ConvergenceError(
                "the augmented design is rank deficient (collinear columns with infinite "
                "prior scales); give those columns a finite prior_scale"
            ) from exc

        def m_solve(r: np.ndarray) -> np.ndarray:
            x = np.empty(self.p)
            rb, rd = r[bc], r[dc]
            if q:
                xd = _chol_solve(chol, rd - F.T @ rb)
                x[dc] = xd
                x[bc] = rb / d - F @ xd
            else:
                x[bc] = rb / d
            return x

        if prior_row0 is not None:
            c = prior_row0
            v = m_solve(c)
            beta = a2[0] / (1.0 + a2[0] * float(c @ v))

            def a_solve(r: np.ndarray) -> np.ndarray:
                u = m_solve(r)
                return u - beta * v * float(c @ u)

        else:
            a_solve = m_solve

        def prior_rows_times(b: np.ndarray) -> np.ndarray:
            rb = b.copy()
            if prior_row0 is not None:
                rb[0] = float(prior_row0 @ b)
            return rb

        def prior_rows_transpose(t: np.ndarray) -> np.ndarray:
            out = t.copy()
            if prior_row0 is not None:
                out[0] = 0.0
                out += t[0] * prior_row0
            return out

        def gradient(b: np.ndarray) -> np.ndarray:
            # X'W^2(z - Xb) + sum_j a_j^2 r_j (m_j - r_j'b), residuals taken from the data
            e = zz - self.matvec(b)
            return self._rmatvec(w2r, e) + prior_rows_transpose(a2 * (m - prior_rows_times(b)))

        # the gradient at b = 0 is X'W^2 z + sum_j a_j^2 r_j m_j
        b = a_solve(self._rmatvec(w2r, zz) + prior_rows_transpose(a2 * m))
        b = b + a_solve(gradient(b))  # one refinement step (semi-normal equations)

        # diag(V) and tr(V X'X) from the blocks, V = M^-1 - beta v v'
        if q:
            Sinv = _chol_inv(chol)
            FS = F @ Sinv
            diag_b = 1.0 / d + np.einsum("ij,ij->i", FS, F)
            diag_d = Sinv.diagonal().copy()
            tr = (
                float(diag_b @ self._counts)
                - 2.0 * float((FS * self._cross_bd).sum())
                + float((Sinv * self._cross_dd).sum())
            )
        else:
            Sinv = np.zeros((0, 0))
            diag_b = 1.0 / d
            diag_d = np.zeros(0)
            tr = float(diag_b @ self._counts)
        diag_v = np.empty(self.p)
        diag_v[bc] = diag_b
        diag_v[dc] = diag_d
        if prior_row0 is not None:
            diag_v -= beta * v * v
            xv = self.matvec(v)
            rows_sq = xv * xv
            if self._lev_rows is not None:
                rows_sq = rows_sq[self._lev_rows]
            tr -= beta * float(rows_sq.sum())

        def full_v(scale: float = 1.0) -> np.ndarray:
            # M^-1 = blockdiag(D^-1, 0) + L Sinv L' with L = [F; -I] (block rows; dense rows), so
            # scale * V = K C K' + scale * blockdiag(D^-1, 0) with K = [L, v],
            # C = scale * blockdiag(Sinv, -beta): one rank-(q+1) product in X's column order,
            # no G x G temporaries.
            k = q + int(prior_row0 is not None)
            K = np.zeros((self.p, k))
            C = np.zeros((k, k))
            if q:
                K[bc, :q] = F
                K[dc, np.arange(q)] = -1.0
                C[:q, :q] = Sinv
            if prior_row0 is not None:
                K[:, q] = v
                C[q, q] = -beta
            V = (K @ (C * scale)) @ K.T
            V.flat[bc * (self.p + 1)] += (1.0 / d) * scale
            return V

        return Solution(b, diag_v, tr / self._lev_n, full_v)


def _find_one_hot(X: Any, exclude: set[int]) -> tuple[list[int], np.ndarray]:
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


# Largest dense model matrix (entries) the dense path will build from a sparse X (~1.6 GB).
DENSE_MAX_ENTRIES = 200_000_000
MAX_SCHUR_COLUMNS = 500  # beyond this the blocked path's dense Schur complement gains nothing


def _densify(X: Any) -> np.ndarray:
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


def _dense_columns(X: Any, cols: np.ndarray) -> np.ndarray:
    """X[:, cols] as a dense array (scipy's column slicing costs ~0.1 ms even for 2 columns)."""
    csc = X.tocsc()
    if not csc.has_canonical_format:  # duplicate entries: let scipy sum them
        return csc[:, cols].toarray()
    out = np.zeros((csc.shape[0], len(cols)))
    for k, j in enumerate(cols):
        s, e = csc.indptr[j], csc.indptr[j + 1]
        out[csc.indices[s:e], k] = csc.data[s:e]
    return out


def make_design(X: Any, has_intercept: bool, solver: str = "auto") -> Design:
    """Pick the dense QR path or the blocked one-hot path (`solver`: auto, dense, blocked)."""
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


# ---------------------------------------------------------------------------------------------
# The IRLS loop (spec §4-§6)


@dataclass
class CoreFit:
    """Everything bayesglm.fit returns that the result needs."""

    coef: np.ndarray
    v: Solution
    dispersion: float
    deviance: float
    iterations: int
    converged: bool
    boundary: bool
    mu: np.ndarray
    eta: np.ndarray
    working_weights: np.ndarray  # w^2 (0 where not used), from the start of the last iteration
    working_residuals: np.ndarray  # NaN where not used
    prior_weights: np.ndarray
    y: np.ndarray
    n_trials: np.ndarray
    priors: Priors
    prior_sd: np.ndarray
    prior_scale_final: np.ndarray
    messages: list[Message]
    design: Design
    path: list[tuple[float, float]] = field(default_factory=list)


def _warn(text: str, code: str = "") -> Message:
    return Message("warning", text, "python", code=code)


def _irls_step(
    family: Family,
    design: Design,
    y: np.ndarray,
    eta: np.ndarray,
    mu: np.ndarray,
    offset: np.ndarray,
    weights: np.ndarray,
    pos: np.ndarray,
    all_pos: bool,
    phi: float,
    prior_sd: np.ndarray,
    prior_mean: np.ndarray,
    prior_row0: np.ndarray | None,
    it: int,
) -> tuple[Solution, np.ndarray, bool, np.ndarray, np.ndarray]:
    """One weighted least-squares step of glm.fit's loop: (solution, good, all good, w, z)."""
    var_mu = family.variance(mu)
    mu_eta = family.mu_eta(eta)
    # (the row subsets are skipped when every row is used: same values, no copies)
    varmu = var_mu if all_pos else var_mu[pos]
    if not varmu.min() > 0:  # one pass when all is well; NaN fails the comparison
        if np.any(np.isnan(varmu)):
            raise ConvergenceError("NAs in V(mu)")
        if np.any(varmu == 0):
            raise ConvergenceError("0s in V(mu)")
    if np.isnan(np.sum(mu_eta if all_pos else mu_eta[pos])):
        if np.any(np.isnan(mu_eta[pos])):
            raise ConvergenceError("NAs in d(mu)/d(eta)")
    nonzero = mu_eta != 0
    all_good = all_pos and bool(nonzero.all())
    good = pos if all_good else pos & nonzero
    if all_good:
        z = (eta - offset) + (y - mu) / mu_eta
        w = np.sqrt(weights * mu_eta**2 / var_mu)
    else:
        if not good.any():
            raise ConvergenceError(f"no observations informative at iteration {it}")
        z = (eta - offset)[good] + (y - mu)[good] / mu_eta[good]
        w = np.sqrt(weights[good] * mu_eta[good] ** 2 / var_mu[good])
    a = np.sqrt(phi) / prior_sd
    sol = design.solve(good, w, z, a, prior_mean, prior_row0)
    return sol, good, all_good, w, z


def fit_bayesglm_core(
    X: Any,
    y: np.ndarray,
    *,
    family: Family,
    has_intercept: bool,
    weights: np.ndarray | None = None,
    offset: np.ndarray | None = None,
    n_trials: np.ndarray | None = None,
    prior_mean: Any = 0.0,
    prior_scale: Any = None,
    prior_df: Any = 1.0,
    prior_mean_for_intercept: float = 0.0,
    prior_scale_for_intercept: float | None = None,
    prior_df_for_intercept: float = 1.0,
    min_prior_scale: float = 1e-12,
    scaled: bool = True,
    maxit: int = 100,
    epsilon: float = 1e-8,
    dispersion: float | None = None,
    solver: str = "auto",
    response: str = "y",
    design: Design | None = None,
) -> CoreFit:
    """arm::bayesglm.fit on a model matrix X (intercept, if any, in column 0).

    `y` is the response as glm sees it after the model frame (for a cbind(s, f) binomial response:
    the proportion s/(s+f), with `weights` already multiplied by the trials and `n_trials` = s+f).
    `dispersion` (extension) holds the dispersion fixed.
    """
    y = np.asarray(y, dtype=float)
    n = len(y)
    if design is None:
        design = make_design(X, has_intercept, solver)
    p = design.p
    if p == 0:
        raise ArgumentError("the model has no coefficients; bayesglm needs at least one", "formula")
    weights = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
    offset = np.zeros(n) if offset is None else np.asarray(offset, dtype=float)
    if np.any(~np.isfinite(weights)):
        raise DataError("weights must be finite", "weights")
    if np.any(weights < 0):
        i = int(np.flatnonzero(weights < 0)[0])
        raise DataError(
            f"negative weights not allowed ({int((weights < 0).sum())} rows; first: row {i}, "
            f"value {weights[i]:g})",
            "weights",
        )
    if np.any(~np.isfinite(offset)):
        raise DataError("offset must be finite", "offset")
    if not np.any(weights > 0):
        raise DataError("all weights are zero: no observations to fit", "weights")

    mean, scale, df = make_priors(
        p,
        has_intercept,
        family,
        prior_mean=prior_mean,
        prior_scale=prior_scale,
        prior_df=prior_df,
        prior_mean_for_intercept=prior_mean_for_intercept,
        prior_scale_for_intercept=prior_scale_for_intercept,
        prior_df_for_intercept=prior_df_for_intercept,
    )
    if not scaled and np.any(scale == 0):
        raise ArgumentError("prior_scale must be positive", "prior_scale")
    priors = scale_priors(
        mean,
        scale,
        df,
        design=design,
        y_raw=y,
        family=family,
        scaled=scaled,
        min_prior_scale=min_prior_scale,
        response=response,
    )
    messages = list(priors.messages)

    init = family.initialize(y, weights, n_trials, response=response)
    messages += [_warn(t, "non_integer") for t in init.warnings]
    y, weights = init.y, init.weights
    design.set_leverage_rows(weights > 0)

    eta = family.linkfun(init.mustart)
    mu = family.linkinv(eta)
    if not (family.validmu(mu) and family.valideta(eta)):
        raise DataError("cannot find valid starting values for the response", response)
    devold = float(np.sum(family.dev_resids(y, mu, weights)))
    prior_row0 = design.colmeans() if (has_intercept and scaled) else None

    scale_now = priors.scale.copy()
    prior_sd = priors.scale.copy()
    fixed = dispersion is not None
    if fixed:
        phi = float(dispersion)
    elif family.has_dispersion:
        phi = float(np.var(y, ddof=1)) / 10000.0
    else:
        phi = 1.0
    phi_old = phi
    coefold: np.ndarray | None = None
    start = np.zeros(p)
    conv = boundary = False
    sol: Solution | None = None
    z = w = good = None
    it = 0
    path: list[tuple[float, float]] = []  # (deviance, dispersion) per iteration, like trace=TRUE
    pos = weights > 0
    all_pos = bool(pos.all())
    # gaussian with the identity link: V(mu) = 1 and dmu/deta = 1, so w = sqrt(prior weights)
    # throughout and z = (eta - offset) + (y - mu); the general formulas give exactly these
    # values (x * 1 and x / 1 are exact), so this only skips work.
    plain = family.family == "gaussian" and family.link == "identity"
    w_plain = np.sqrt(weights if all_pos else weights[pos])
    unit_w = plain and bool(np.all(weights == 1.0))
    df_inf = np.isinf(priors.df)
    for it in range(1, maxit + 1):
        if plain:
            good, all_good, w = pos, all_pos, w_plain
            z = (eta - offset) + (y - mu) if all_pos else (eta - offset)[pos] + (y - mu)[pos]
            a = np.sqrt(phi) / prior_sd
            sol = design.solve(good, w, z, a, priors.mean, prior_row0)
        else:
            sol, good, all_good, w, z = _irls_step(
                family,
                design,
                y,
                eta,
                mu,
                offset,
                weights,
                pos,
                all_pos,
                phi,
                prior_sd,
                priors.mean,
                prior_row0,
                it,
            )
        b = sol.b
        if not np.isfinite(b).all():
            raise ConvergenceError(f"non-finite coefficients at iteration {it}")
        scale_now = priors.scale_after_first  # arm: gaussian & scaled -> s0 (else unchanged)
        with np.errstate(invalid="ignore"):
            t_sd = np.sqrt(
                ((b - priors.mean) ** 2 + sol.diag_v * phi + priors.df * scale_now**2)
                / (1.0 + priors.df)
            )
        prior_sd = np.where(df_inf, scale_now, t_sd)
        start = b.copy()
        xb = design.matvec(b)
        eta = xb + offset
        mu = family.linkinv(eta)
        dev = float(family.dev_resids(y, mu, weights).sum())
        if family.has_dispersion and not fixed:
            r = z - (xb if all_good else xb[good])
            rw = r if unit_w else w * r
            mse_resid = float((rw * rw).sum()) / rw.size  # = np.mean(rw**2), without its overhead
            phi = mse_resid + sol.mean_leverage * phi
        boundary = False
        if not np.isfinite(dev):
            if coefold is None:
                raise ConvergenceError(
                    "no valid set of coefficients has been found: please supply starting values"
                )
            messages.append(_warn("step size truncated due to divergence", "step_halving"))
            ii = 1
            while not np.isfinite(dev):
                if ii > maxit:
                    raise ConvergenceError("inner loop 1; cannot correct step size")
                ii += 1
                start = (start + coefold) / 2.0
                eta = design.matvec(start) + offset
                mu = family.linkinv(eta)
                dev = float(np.sum(family.dev_resids(y, mu, weights)))
            boundary = True
        if not (family.valideta(eta) and family.validmu(mu)):
            if coefold is None:
                raise ConvergenceError(
                    "no valid set of coefficients has been found: please supply starting values"
                )
            messages.append(_warn("step size truncated: out of bounds", "step_halving"))
            ii = 1
            while not (family.valideta(eta) and family.validmu(mu)):
                if ii > maxit:
                    raise ConvergenceError("inner loop 2; cannot correct step size")
                ii += 1
                start = (start + coefold) / 2.0
                eta = design.matvec(start) + offset
                mu = family.linkinv(eta)
            boundary = True
            dev = float(np.sum(family.dev_resids(y, mu, weights)))
        path.append((dev, phi))
        # With a fixed dispersion the criterion is on the scaled deviance dev/phi, which is what
        # arm computes when the fixed phi is passed as prior weights w/phi (the R engine's way).
        crit, crit_old = (dev / phi, devold / phi) if fixed else (dev, devold)
        if (
            it > 1
            and abs(crit - crit_old) / (0.1 + abs(crit)) < epsilon
            and abs(phi - phi_old) / (0.1 + abs(phi)) < epsilon
        ):
            conv = True
            break
        devold, phi_old = dev, phi
        coefold = start.copy()

    if not conv:
        messages.append(_warn("algorithm did not converge", "convergence"))
    if boundary:
        messages.append(_warn("algorithm stopped at boundary value", "boundary"))
    tiny = 10 * np.finfo(float).eps
    if family.family == "binomial" and (np.any(mu > 1 - tiny) or np.any(mu < tiny)):
        messages.append(_warn("fitted probabilities numerically 0 or 1 occurred", "separation"))
    if family.family == "poisson" and np.any(mu < tiny):
        messages.append(_warn("fitted rates numerically 0 occurred", "boundary"))

    assert sol is not None and good is not None and z is not None and w is not None
    resid = np.full(n, np.nan)
    resid[good] = z - (eta - offset)[good]
    wt = np.zeros(n)
    wt[good] = w * w
    return CoreFit(
        coef=start,
        v=sol,
        dispersion=phi,
        deviance=dev,
        iterations=it,
        converged=conv,
        boundary=boundary,
        mu=mu,
        eta=eta,
        working_weights=wt,
        working_residuals=resid,
        prior_weights=weights,
        y=y,
        n_trials=init.n,
        priors=priors,
        prior_sd=prior_sd,
        prior_scale_final=scale_now if it >= 1 else priors.scale,
        messages=messages,
        design=design,
        path=path,
    )


# ---------------------------------------------------------------------------------------------
# Summaries (spec §6-§7)


@dataclass
class CoreSummary:
    coef: np.ndarray
    se: np.ndarray
    se_display: np.ndarray
    vcov: np.ndarray | None  # V * dispersion_pearson (summary.glm's cov.scaled)
    dispersion: float
    dispersion_pearson: float
    deviance: float
    null_deviance: float
    aic: float
    df_residual: int
    n_ok: int
    messages: list[Message]


def summarize_core(
    core: CoreFit,
    *,
    family: Family,
    has_intercept: bool,
    offset: np.ndarray | None,
    fixed_dispersion: bool,
    null_fit_args: dict[str, Any] | None,
) -> CoreSummary:
    """summary.glm / display() quantities, the null deviance and glm's aic."""
    p = len(core.coef)
    rank = p  # the augmented fit always has full rank here (rank deficiency raises earlier)
    weights = core.prior_weights
    n_ok = int(np.sum(weights != 0))
    df_res = n_ok - rank
    messages: list[Message] = []
    pearson_default = 1.0 if not family.has_dispersion else float("nan")
    used = core.working_weights > 0
    if fixed_dispersion:
        pearson = core.dispersion  # summary() at the fixed phi, like display()
    elif family.has_dispersion and df_res > 0:
        pearson = float(
            np.sum(core.working_weights[used] * core.working_residuals[used] ** 2) / df_res
        )
    else:
        pearson = pearson_default
    diag_v = core.v.diag_v
    if fixed_dispersion:
        se = se_display = np.sqrt(diag_v * core.dispersion)
    else:
        se = np.sqrt(diag_v * pearson)
        se_display = np.sqrt(diag_v * core.dispersion)
    vcov = core.v.full_v(pearson) if p <= VCOV_MAX_COEFS else None

    offset_arr = np.zeros(len(core.y)) if offset is None else np.asarray(offset, dtype=float)
    if has_intercept:
        wtdmu = float(np.sum(weights * core.y) / np.sum(weights))
    else:
        wtdmu = family.linkinv(offset_arr)
    null_dev = float(np.sum(family.dev_resids(core.y, wtdmu, weights)))
    if offset is not None and has_intercept and null_fit_args is not None:
        null_core = fit_bayesglm_core(np.ones((len(core.y), 1)), **null_fit_args)
        if not null_core.converged:
            messages.append(
                _warn(
                    "fitting to calculate the null deviance did not converge -- increase 'maxit'?",
                    "convergence",
                )
            )
        null_dev = null_core.deviance
    aic = family.aic(core.y, core.n_trials, core.mu, weights, core.deviance) + 2 * rank
    return CoreSummary(
        coef=core.coef,
        se=se,
        se_display=se_display,
        vcov=vcov,
        dispersion=core.dispersion,
        dispersion_pearson=pearson,
        deviance=core.deviance,
        null_deviance=null_dev,
        aic=aic,
        df_residual=df_res,
        n_ok=n_ok,
        messages=messages,
    )


@functools.cache
def _versions() -> dict[str, str]:
    try:
        mine = importlib.metadata.version("mixbridge")
    except importlib.metadata.PackageNotFoundError:
        mine = "unknown"
    return {
        "mixbridge": mine,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
    }


def _as_array(value: Any, n: int, name: str) -> np.ndarray | None:
    if value is None:
        return None
    arr = np.asarray(value, dtype=float).ravel()
    if arr.size != n:
        raise DataError(f"{name} has {arr.size} values but the model uses {n} rows", name)
    return arr


def fit_from_matrix(
    X: Any,
    y: np.ndarray,
    x_names: Sequence[str],
    *,
    family: str | Family = "gaussian",
    link: str | None = None,
    has_intercept: bool,
    weights: np.ndarray | None = None,
    offset: np.ndarray | None = None,
    n_trials: np.ndarray | None = None,
    formula: str = "",
    response: str = "y",
    solver: str = "auto",
    extra_messages: Sequence[Message] = (),
    **settings: Any,
) -> BayesGLMFit:
    """bayesglm on an already-built model matrix (column 0 = intercept when `has_intercept`).

    `settings` are bayesglm's prior/fit arguments (prior_mean, ..., maxit, epsilon, dispersion).
    """
    fam = family if isinstance(family, Family) else get_family(family, link)
    y = np.asarray(y, dtype=float)
    n = len(y)
    weights = _as_array(weights, n, "weights")
    offset = _as_array(offset, n, "offset")
    n_trials = _as_array(n_trials, n, "n_trials")
    core = fit_bayesglm_core(
        X,
        y,
        family=fam,
        has_intercept=has_intercept,
        weights=weights,
        offset=offset,
        n_trials=n_trials,
        solver=solver,
        response=response,
        **settings,
    )
    null_args = None
    if offset is not None and has_intercept:
        null_settings = {
            k: v
            for k, v in settings.items()
            if k not in ("prior_mean", "prior_scale", "prior_df", "dispersion")
        }
        null_args = dict(
            y=y,
            family=fam,
            has_intercept=True,
            weights=weights,
            offset=offset,
            n_trials=n_trials,
            dispersion=settings.get("dispersion"),
            **null_settings,
        )
    summ = summarize_core(
        core,
        family=fam,
        has_intercept=has_intercept,
        offset=offset,
        fixed_dispersion=settings.get("dispersion") is not None,
        null_fit_args=null_args,
    )
    names = [str(s) for s in x_names]
    if len(names) != len(core.coef):
        raise DataError(f"{len(names)} coefficient names for {len(core.coef)} columns", "x_names")
    index = pd.Index(names)  # built once: with many levels, string Index construction is costly
    messages = list(extra_messages) + core.messages + summ.messages
    if summ.vcov is None:
        vcov = None
        messages.append(
            Message(
                "note",
                f"vcov not formed for {len(names)} coefficients (more than {VCOV_MAX_COEFS}); "
                "se and se_display are exact",
                "python",
                code="vcov_omitted",
            )
        )
    else:
        vcov = pd.DataFrame(summ.vcov, index=index, columns=index, copy=False)
    emit_warnings(messages)
    return BayesGLMFit(
        formula=formula,
        family=fam.family,
        link=fam.link,
        coef=pd.Series(core.coef, index=index),
        se=pd.Series(summ.se, index=index),
        se_display=pd.Series(summ.se_display, index=index),
        vcov=vcov,  # type: ignore[arg-type]
        dispersion=float(summ.dispersion),
        dispersion_pearson=float(summ.dispersion_pearson),
        deviance=float(summ.deviance),
        null_deviance=float(summ.null_deviance),
        aic=float(summ.aic),
        df_residual=int(summ.df_residual),
        iterations=int(core.iterations),
        converged=bool(core.converged),
        prior_mean=core.priors.mean,
        prior_scale=core.prior_scale_final,
        prior_df=core.priors.df,
        prior_sd=core.prior_sd,
        fitted=core.mu,
        nobs=summ.n_ok,
        messages=messages,
        engine="python",
        versions=dict(_versions()),
        extra={
            "linear_predictors": core.eta,
            "working_weights": core.working_weights,
            "working_residuals": core.working_residuals,
            "prior_weights": core.prior_weights,
            "y": core.y,  # response as fitted (binomial: proportions), for conformance checks
            "n_trials": core.n_trials,
            "vcov_unscaled_diag": core.v.diag_v,
            "solver": type(core.design).__name__,
            "boundary": core.boundary,
            "deviance_path": [d for d, _ in core.path],
            "dispersion_path": [ph for _, ph in core.path],
        },
    )


# ---------------------------------------------------------------------------------------------
# Model terms: the formula module's GLMTerms, with a sparse X when a factor is large

# A factor with at least this many levels gets a sparse one-hot X (never a dense n x G array).
SPARSE_MIN_LEVELS = 500


def _glm_terms(
    formula: str,
    data: pd.DataFrame,
    *,
    family: str,
    weights: Any,
    offset: Any,
    drop_baseline: bool,
    frame: Any = None,
) -> Any:
    """build_glm_terms, with a sparse X when the model uses a factor with many levels.

    `frame`: the model frame the input checks already evaluated (None: evaluate here)."""
    from mixbridge.formula import build_glm_terms

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


# ---------------------------------------------------------------------------------------------
# Engine entry point


def bayesglm(
    formula: str,
    data: pd.DataFrame,
    *,
    family: str = "gaussian",
    link: str | None = None,
    weights: Any = None,
    offset: Any = None,
    prior_mean: float | Sequence[float] = 0.0,
    prior_scale: float | Sequence[float] | None = None,
    prior_df: float | Sequence[float] = 1.0,
    prior_mean_for_intercept: float = 0.0,
    prior_scale_for_intercept: float | None = None,
    prior_df_for_intercept: float = 1.0,
    min_prior_scale: float = 1e-12,
    scaled: bool = True,
    drop_baseline: bool = True,
    maxit: int = 100,
    epsilon: float = 1e-8,
    dispersion: float | None = None,
    **engine_options: Any,
) -> BayesGLMFit:
    """arm::bayesglm(formula, family, data, ...) in Python (protocol: mixbridge.engines)."""
    fam = get_family(family, link)
    terms = _glm_terms(
        formula,
        data,
        family=fam.family,
        weights=weights,
        offset=offset,
        drop_baseline=drop_baseline,
        frame=engine_options.get("frame"),
    )
    offset_arr = None if terms.offset is None else np.asarray(terms.offset, dtype=float)
    if offset_arr is not None and not np.any(offset_arr):
        offset_arr = None  # no offset given (the frame reports zeros); matters for null_deviance
    return fit_from_matrix(
        terms.X,
        terms.y,
        terms.x_names,
        family=fam,
        has_intercept=bool(terms.has_intercept),
        weights=terms.weights,
        offset=offset_arr,
        n_trials=_cbind_trials(terms),
        formula=formula,
        response=str(terms.response_name),
        solver=engine_options.get("solver", "auto"),
        extra_messages=list(getattr(terms, "messages", []) or []),
        prior_mean=prior_mean,
        prior_scale=prior_scale,
        prior_df=prior_df,
        prior_mean_for_intercept=prior_mean_for_intercept,
        prior_scale_for_intercept=prior_scale_for_intercept,
        prior_df_for_intercept=prior_df_for_intercept,
        min_prior_scale=min_prior_scale,
        scaled=bool(scaled),
        maxit=int(maxit),
        epsilon=float(epsilon),
        dispersion=None if dispersion is None else float(dispersion),
    )


def _cbind_trials(terms: Any) -> np.ndarray | None:
    """The trials of a cbind(s, f) response (None for any other response)."""
    n_trials = getattr(terms, "n_trials", None)
    if n_trials is None:
        return None
    if not getattr(terms, "is_cbind", True):
        return None
    return np.asarray(n_trials, dtype=float)
