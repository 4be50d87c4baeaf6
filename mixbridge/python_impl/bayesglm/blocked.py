"""The blocked solver: X = a one-hot factor block plus a few dense columns.

A one-hot factor block (e.g. `y ~ 0 + factor(id)` or `y ~ x + factor(id)`) is never expanded
into a dense n x G matrix or a G x G system. The augmented normal equations are solved by block
elimination (diagonal block for the factor, a small dense Schur complement for the other
columns, Sherman-Morrison for the centred-intercept prior row), with one step of iterative
refinement whose residual is computed from the data, so it agrees with arm's QR to ~1e-12.
The data parts of X'W^2X are reused while the working weights repeat (gaussian identity: every
iteration), and the reported p x p vcov is one rank-(q+1) product plus the factor block's
diagonal (q = number of other columns): O(p^2) to fill, never an O(G^3) inverse.
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.linalg.lapack as lapack

from mixbridge.errors import ConvergenceError
from mixbridge.python_impl.bayesglm.design import Design, Solution, column_scale


# Raw LAPACK: scipy's high-level wrappers cost ~0.2 ms per call, more than these tiny solves.
def _chol(S: np.ndarray) -> np.ndarray:
    U, info = lapack.dpotrf(S, lower=0, clean=1)
    if info != 0:
        raise np.linalg.LinAlgError("matrix not positive definite")
    return U


def _chol_solve(U: np.ndarray, r: np.ndarray) -> np.ndarray:
    x, _ = lapack.dpotrs(U, r, lower=0)
    return x


def _chol_inv(U: np.ndarray) -> np.ndarray:
    inv, _ = lapack.dpotri(U, lower=0)  # upper triangle only
    lower = _strict_lower(inv.shape[0])
    inv[lower] = inv.T[lower]
    return inv


@functools.cache
def _strict_lower(q: int) -> tuple[np.ndarray, np.ndarray]:
    return np.tril_indices(q, -1)


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
            scales[j] = column_scale(col)
        return scales

    def _rmatvec(self, w2: np.ndarray | None, e: np.ndarray) -> np.ndarray:
        """X' (w2 * e) over all rows (w2 is zero outside the used rows; None: all ones)."""
        out = np.empty(self.p)
        we = e if w2 is None else w2 * e
        out[self.block_cols] = self._by_code(we)
        out[self.dense_cols] = self.XD.T @ we
        return out

    def solve(
        self,
        good: np.ndarray,
        w: np.ndarray,
        z: np.ndarray,
        a: np.ndarray,
        m: np.ndarray,
        prior_row0: np.ndarray | None,
    ) -> Solution:
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
