"""The penalized least squares (PLS) core shared by lmer and glmer (lme4's `merPredD`).

The predictor knows the model matrices (X, Z through the random-effects terms) and Λ_θ, but no
family and no response distribution: lmer calls it once per θ with the prior weights, glmer calls
it inside PIRLS with working weights.

Structure (built once from the model terms, spec §4):

* Z is n×q with level-major columns per term, terms in lme4 order (already sorted by the formula
  module); `gp` holds the column offsets of the terms.
* Λ_θ is block diagonal, I_{ℓ_k} ⊗ T_k; its structural non-zeros take the values `theta[lind]`
  (lme4's Lind), so the sparsity pattern never changes.

Factorization (MixedModels.jl's blocked scheme instead of a general sparse Cholesky): with
V = Λ'Z'WZΛ + I split after the first term's q1 = ℓ_1 p_1 columns,

    V11 is block diagonal (each row belongs to one level of the first term's factor):
        L11 = per-level Cholesky factors, O(ℓ_1 p_1³)
    L21 = V21 L11⁻ᵀ                        (sparse, same pattern as V21)
    L22 L22' = V22 − L21 L21'              (dense Schur complement of the remaining terms)

so L = [[L11, 0], [L21, L22]] is the Cholesky factor of V (with the identity permutation; lme4's
results do not depend on CHOLMOD's fill-reducing permutation). Then, as in lme4's
`updateDecomp`, R_ZX = L⁻¹Λ'Z'WX and R_X'R_X = X'WX − R_ZX'R_ZX. The dense block and X are
factored together in one Cholesky of the augmented matrix [[S22, C], [C', X'WX − R1'R1]]
(MixedModels.jl), which yields L22, the dense-block rows of R_ZX and R_X at once.

Small models (q ≤ DENSE_Q_MAX) put every term in the dense block (q1 = 0): a few LAPACK calls
beat the overhead of sparse operations there. Run fits inside `blas_single_thread()`: per θ the
work is many small factorizations, where BLAS threads only cost time.

API (used by lmm.py and by glmer's PIRLS):

    pred = Predictor(terms)             # terms: MixedTerms (X, reterms, weights)
    pred.update(theta, sqrt_w=None)     # set θ and the weights, factorize L, R_ZX, R_X
        sqrt_w=None uses the prior weights (terms.weights, or 1); otherwise sqrt_w are the full
        square-root weights √W_i (lme4's sqrtXwt: for glmer these already include the prior
        weights). X'WX, Z'WZ, Z'WX are cached per weight vector.
    beta, u = pred.solve(y)             # joint PLS solution for response y (offset removed)
    u = pred.solve_u(y)                 # u alone, β held fixed (y = response − offset − Xβ):
                                        #   u = L⁻ᵀL⁻¹Λ'Z'Wy  (glmer's u-only PIRLS stage)
    pred.ldL2, pred.ldRX2               # log|L|², log|R_X|² at the current θ and weights
    pred.pwrss(y, beta, u)              # ‖W^{1/2}(y − Xβ − ZΛu)‖² + ‖u‖²  (y offset-free)
    pred.b(u)  -> Λu (q,);  pred.Zb(u) -> ZΛu (n,);  pred.Xb(beta) -> Xβ (n,)
    pred.rx_inverse()                   # (R_X'R_X)⁻¹, p×p
    pred.profile(theta, y)              # (ldL2, ldRX2, pwrss) alone, prior weights: lmer's
                                        #   optimizer loop (one augmented Cholesky, no solve)
    pred.profile_gradient_sums()        # after profile: per-term inverse-diagonal sums for the
                                        #   analytic gradient (all terms scalar), else None
    pred.cond_var(sigma)                # list per term of (ℓ_k, p_k, p_k) arrays: diagonal blocks
                                        #   of σ²Λ(LL')⁻¹Λ' (lme4's condVar / postVar)
    pred.cond_var_by_factor(sigma)      # dict group -> (ℓ, nc, nc), terms on one factor combined
                                        #   block-diagonally, as ranef(condVar=TRUE)
    pred.lambda_blocks(theta)           # list of T_k (p_k×p_k lower triangular)
    pred.lambda_matrix(theta)           # sparse Λ_θ (q×q); pred.Lam holds the current one
    pred.n_theta, pred.q, pred.gp       # sizes and term offsets in u (lme4's Gp)

All per-level work is vectorized (batched numpy Cholesky/inverse, sparse products); no Python
loops over rows or levels. The dense Schur block is (q − q1)², which covers crossed designs of
InstEval's size (q − q1 = 1142).
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp

_BLAS_CONTROLLER: list[Any] = []  # threadpoolctl's controller, created once (see below)


def blas_single_thread() -> contextlib.AbstractContextManager:
    """Limit BLAS to one thread while fitting (uses threadpoolctl when installed).

    The per-θ work is many small or mid-sized factorizations: OpenBLAS threading gains little
    there and, on a shared or busy machine, its spinning threads make a 1000×1000 Cholesky
    5x slower (measured here: 0.33 s vs 1.78 s per InstEval evaluation). The controller is made
    once: building one scans the process's loaded libraries, ~4 ms per call otherwise.
    """
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # optional dependency: run with the library's default threading
        return contextlib.nullcontext()
    if not _BLAS_CONTROLLER:
        import scipy.linalg  # noqa: F401  (its BLAS must be loaded before the scan)

        _BLAS_CONTROLLER.append(ThreadpoolController())
    return _BLAS_CONTROLLER[0].limit(limits=1, user_api="blas")


def theta_layout(p: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of T's lower triangle in θ order (column-major)."""
    rows, cols = [], []
    for c in range(p):
        for r in range(c, p):
            rows.append(r)
            cols.append(c)
    return np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64)


def lower_bounds(reterms: list[Any]) -> np.ndarray:
    """lme4's lower bounds: 0 on diagonal θ, −∞ off the diagonal."""
    out = []
    for t in reterms:
        r, c = theta_layout(t.p)
        out.append(np.where(r == c, 0.0, -np.inf))
    return np.concatenate(out) if out else np.zeros(0)


def theta_start(reterms: list[Any]) -> np.ndarray:
    """lme4's default start: T_k = I (1 on the diagonal, 0 elsewhere)."""
    out = []
    for t in reterms:
        r, c = theta_layout(t.p)
        out.append((r == c).astype(float))
    return np.concatenate(out) if out else np.zeros(0)


# Up to this many random effects the factorization is done densely: for small q, a handful of
# LAPACK calls beats the fixed overhead of sparse operations (sleepstudy q = 36, Pastes q = 40).
DENSE_Q_MAX = 400

# `profile` enumerates the pairs of non-zeros of A21 within each first-term level once; beyond
# this many (memory: ~40 bytes each) it forms A21 W1 A21' by sparse products per θ instead.
PAIRS_MAX = 50_000_000


def _dpotrf(*args: Any, **kwargs: Any) -> Any:
    from scipy.linalg import lapack

    return lapack.dpotrf(*args, **kwargs)


def _dpotri(*args: Any, **kwargs: Any) -> Any:
    from scipy.linalg import lapack

    return lapack.dpotri(*args, **kwargs)


def _dtrtri(*args: Any, **kwargs: Any) -> Any:
    from scipy.linalg import lapack

    return lapack.dtrtri(*args, **kwargs)


def _dlauum(*args: Any, **kwargs: Any) -> Any:
    from scipy.linalg import lapack

    return lapack.dlauum(*args, **kwargs)


def _pair_map(a21: sp.csr_matrix, l1: int, p1: int, stride: int) -> sp.csr_matrix | None:
    """The linear map vec(W1) -> lower triangle of A21 W1 A21', as a sparse matrix whose rows
    are positions i·stride + k in a row-major buffer with row length `stride`.

    W1 is block diagonal with one p1×p1 block per level j of the first term, so entry (i, k)
    sums A21[i, c] W1_j[a, b] A21[k, c'] over pairs of non-zeros in the columns c = j p1 + a,
    c' = j p1 + b of one level. The pairs are enumerated once (Σ_j nnz_j² of them; InstEval:
    3.6 million, 1.8 million in the lower triangle), so each θ costs one sparse mat-vec.
    Returns None when there would be more than PAIRS_MAX pairs (use sparse products then).
    """
    a = a21.tocsc()
    a.sort_indices()
    start = a.indptr[np.arange(l1) * p1]
    size = a.indptr[(np.arange(l1) + 1) * p1] - start
    if int(np.sum(size.astype(np.int64) ** 2)) > PAIRS_MAX:
        return None
    # int32 throughout (nnz(A21) < 2³¹): the pair arrays are the memory traffic of this step
    idx = np.arange(a.nnz, dtype=np.int32)
    col = np.repeat(np.arange(a.shape[1], dtype=np.int32), np.diff(a.indptr))
    lev = col // p1
    first = start[lev].astype(np.int32)  # first non-zero of each non-zero's level
    if p1 == 1:  # rows are sorted within a column: the partners below-or-on the diagonal
        cnt = idx - first + 1
    else:  # every non-zero of the level, filtered to the lower triangle below
        cnt = size[lev]
    e = np.repeat(idx, cnt)
    # partner of the t-th pair of non-zero e: first[e] + t
    f = np.arange(e.size, dtype=np.int64)
    f += np.repeat(first - (np.cumsum(cnt) - cnt), cnt)
    f = f.astype(np.int32)
    ri, rk = a.indices[e], a.indices[f]
    if p1 > 1:
        keep = ri >= rk
        e, f, ri, rk = e[keep], f[keep], ri[keep], rk[keep]
    # row-major (CSR) order: the mat-vec then writes the buffer sequentially and gathers from
    # the small vec(W1), instead of scattering over the whole buffer. Two stable radix passes
    # on 16-bit keys (k, then i) sort by position without a comparison sort.
    pos = ri.astype(np.int64) * stride + rk
    if a.shape[0] < 1 << 16:
        o = np.argsort(rk.astype(np.uint16), kind="stable")
        o = o[np.argsort(ri[o].astype(np.uint16), kind="stable")]
    else:
        o = np.argsort(pos, kind="stable")
    nrow = a.shape[0] * stride
    indptr = np.zeros(nrow + 1, dtype=np.int64)
    np.cumsum(np.bincount(pos, minlength=nrow), out=indptr[1:])
    e, f = e[o], f[o]
    wcol = lev[e] if p1 == 1 else lev[e] * p1 * p1 + (col[e] % p1) * p1 + col[f] % p1
    return sp.csr_matrix((a.data[e] * a.data[f], wcol, indptr), shape=(nrow, l1 * p1 * p1))


def _accumulate(m: sp.csr_matrix, x: np.ndarray, out: np.ndarray) -> None:
    """out += m @ x in place (m is CSR; out a contiguous 1-D buffer)."""
    try:
        from scipy.sparse import _sparsetools

        _sparsetools.csr_matvec(m.shape[0], m.shape[1], m.indptr, m.indices, m.data, x, out)
    except (ImportError, AttributeError, TypeError, ValueError):  # private API moved: copy
        out += m @ x


class Predictor:
    """lme4's merPredD with MixedModels.jl's blocked Cholesky. See the module docstring."""

    def __init__(self, terms: Any) -> None:
        self.terms = terms
        self.reterms = list(terms.reterms)
        self.X = np.ascontiguousarray(terms.X, dtype=float)
        self.n, self.p = self.X.shape
        w = getattr(terms, "weights", None)
        self.prior_w = np.ones(self.n) if w is None else np.asarray(w, dtype=float)

        # Column offsets of the terms in u / b (lme4's Gp) and of their θ pieces.
        self.nlev = [int(t.n_levels) for t in self.reterms]
        self.pk = [int(t.p) for t in self.reterms]
        self.gp = np.concatenate(
            [[0], np.cumsum([lv * pk for lv, pk in zip(self.nlev, self.pk, strict=True)])]
        )
        self.q = int(self.gp[-1])
        self.nth = [pk * (pk + 1) // 2 for pk in self.pk]
        self.toff = np.concatenate([[0], np.cumsum(self.nth)]).astype(int)
        self.n_theta = int(self.toff[-1])

        self.Z = self._build_z()
        self._lam_rows, self._lam_cols, self.lind = self._build_lambda_pattern()

        # Blocked split: the first term's columns, then the rest. Small models put every term in
        # the dense block (q1 = 0).
        self.dense = self.q <= DENSE_Q_MAX
        self.p1 = self.pk[0]
        self.l1 = 0 if self.dense else self.nlev[0]
        self.q1 = self.l1 * self.p1
        self.q2 = self.q - self.q1
        self._k2 = 0 if self.q1 == 0 else 1  # index of the first term in the dense block

        self._weights_key: Any = None
        self.theta: np.ndarray | None = None

    # ----------------------------------------------------------------------------------------
    # Structure

    def _build_z(self) -> sp.csr_matrix:
        """Sparse n×q Z, level-major columns within each term (lme4's Zt transposed)."""
        rows, cols, vals = [], [], []
        idx = np.arange(self.n)
        for k, t in enumerate(self.reterms):
            codes = np.asarray(t.codes, dtype=np.int64)
            zk = np.asarray(t.Z, dtype=float).reshape(self.n, -1)
            for c in range(self.pk[k]):
                rows.append(idx)
                cols.append(self.gp[k] + codes * self.pk[k] + c)
                vals.append(zk[:, c])
        z = sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
            shape=(self.n, self.q),
        )
        z.sum_duplicates()
        return z

    def _build_lambda_pattern(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Row, column and θ index (Lind) of every structural non-zero of Λ."""
        rows, cols, lind = [], [], []
        for k in range(len(self.reterms)):
            r, c = theta_layout(self.pk[k])
            base = self.gp[k] + np.arange(self.nlev[k]) * self.pk[k]
            rows.append((base[:, None] + r[None, :]).ravel())
            cols.append((base[:, None] + c[None, :]).ravel())
            lind.append(np.tile(self.toff[k] + np.arange(self.nth[k]), self.nlev[k]))
        return np.concatenate(rows), np.concatenate(cols), np.concatenate(lind)

    def lambda_matrix(self, theta: np.ndarray) -> sp.csr_matrix:
        """Λ_θ (q×q, lower block triangular) with values theta[Lind]."""
        return sp.csr_matrix(
            (np.asarray(theta, dtype=float)[self.lind], (self._lam_rows, self._lam_cols)),
            shape=(self.q, self.q),
        )

    def lambda_blocks(self, theta: np.ndarray) -> list[np.ndarray]:
        """The p_k×p_k lower-triangular T_k of each term."""
        out = []
        for k in range(len(self.reterms)):
            r, c = theta_layout(self.pk[k])
            tk = np.zeros((self.pk[k], self.pk[k]))
            tk[r, c] = theta[self.toff[k] : self.toff[k + 1]]
            out.append(tk)
        return out

    # ----------------------------------------------------------------------------------------
    # Weighted cross-products (depend on the weights only, not on θ)

    def _set_weights(self, sqrt_w: np.ndarray | None) -> None:
        if sqrt_w is None:
            if isinstance(self._weights_key, str):
                return  # prior weights already in place
            self.w = self.prior_w
            self._weights_key = "prior"
        else:
            key = np.asarray(sqrt_w, dtype=float)
            if isinstance(self._weights_key, np.ndarray) and np.array_equal(self._weights_key, key):
                return
            self.w = key**2
            self._weights_key = key.copy()
        zw = self.Z.multiply(self.w[:, None]).tocsr()
        ztwz = (self.Z.T @ zw).tocsr()
        self.ZtWX = np.asarray(zw.T @ self.X)
        self.XtWX = self.X.T @ (self.X * self.w[:, None])
        q1, p1 = self.q1, self.p1
        # Blocks of Z'WZ: A11 is block diagonal (each row has one level of the first factor).
        a11 = ztwz[:q1, :q1].tocoo()
        self.A11 = np.zeros((self.l1, p1, p1))
        np.add.at(self.A11, (a11.row // p1, a11.row % p1, a11.col % p1), a11.data)
        self.A21 = ztwz[q1:, :q1].tocsr()
        # The dense block's own cross-products: dense for small models, otherwise kept sparse
        # (InstEval: d×d is diagonal, d×dept sparse) and only densified after scaling by Λ.
        self.A22 = ztwz[q1:, q1:].tocsr() if q1 > 0 else ztwz[q1:, q1:].toarray()

    # ----------------------------------------------------------------------------------------
    # Factorization

    def update(self, theta: np.ndarray, sqrt_w: np.ndarray | None = None) -> None:
        """Factorize L (blocked), R_ZX and R_X at θ with the given square-root weights.

        The dense block and X are factored together (MixedModels.jl's augmented scheme): one
        Cholesky of [[S22, C], [C', X'WX − R1'R1]] gives L22, R_ZX (dense-block rows) and R_X,
        so no triangular solves with many right-hand sides are needed per θ. L21 is never
        formed with the prior weights: products with it go through A21 (`_l21_mul`).
        """
        self._set_weights(sqrt_w)
        theta = np.asarray(theta, dtype=float)
        self.theta = theta.copy()
        lam = self.lambda_matrix(theta)
        self.Lam = lam
        self.L21 = None
        q1, q2, p = self.q1, self.q2, self.p
        ld = 0.0
        if q1 > 0:
            t1 = self.lambda_blocks(theta)[0]
            v11 = np.einsum("ba,jbc,cd->jad", t1, self.A11, t1) + np.eye(self.p1)
            self.L11 = np.linalg.cholesky(v11)
            self.L11inv = np.linalg.inv(self.L11)
            ld += 2.0 * np.log(np.diagonal(self.L11, axis1=1, axis2=2)).sum()
            # R1 = L11⁻¹ Λ1' Z1'WX, per level
            zx1 = self.ZtWX[:q1].reshape(self.l1, self.p1, p)
            r1 = np.einsum("jab,cb,jcm->jam", self.L11inv, t1, zx1).reshape(q1, p)
        else:
            self.L11 = self.L11inv = np.zeros((0, self.p1, self.p1))
            r1 = np.zeros((0, p))
        pairs = self._pair_setup() if sqrt_w is None else None
        if pairs is not None:
            # the same assembly as `profile` (lower triangle in a row-major buffer)
            buf = np.empty((q2 + p + 1, q2 + p + 1))
            h = buf[: q2 + p, : q2 + p]
            if q2 > 0:
                w1 = self._w1(theta)[1] if q1 > 0 else None
                self._fill_s22(pairs, buf, theta, w1)
                c2 = np.asarray(lam[q1:, q1:].T @ self.ZtWX[q1:])
                if q1 > 0:
                    c2 -= self._l21_mul(r1)
                h[q2:, :q2] = c2.T
        else:
            h = np.empty((q2 + p, q2 + p))
            if q2 > 0:
                lam2 = lam[q1:, q1:]
                c2 = np.asarray(lam2.T @ self.ZtWX[q1:])
                if q1 > 0:
                    self.L21 = self._l21_matrix()
                    s22 = (lam2.T @ self.A22 @ lam2 - self.L21 @ self.L21.T).toarray()
                    c2 -= self.L21 @ r1
                else:
                    s22 = np.asarray(lam2.T @ np.asarray(lam2.T @ self.A22).T)
                s22[np.diag_indices_from(s22)] += 1.0
                h[:q2, :q2] = s22
                h[q2:, :q2] = c2.T
        h[q2:, q2:] = self.XtWX - r1.T @ r1
        lh = sla.cholesky(h, lower=True, check_finite=False)  # reads the lower triangle only
        self.L22 = np.asfortranarray(lh[:q2, :q2])  # LAPACK's layout: solves without copies
        ld += 2.0 * np.log(np.diag(self.L22)).sum()
        self.ldL2 = float(ld)
        self.RZX = np.vstack([r1, lh[q2:, :q2].T])
        self.RX = np.ascontiguousarray(lh[q2:, q2:].T)
        self.ldRX2 = float(2.0 * np.log(np.abs(np.diag(self.RX))).sum()) if p > 0 else 0.0

    def _w1(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """(log|V11|, W1) at θ: V11_j = T1'A11_j T1 + I and W1_j = T1 V11_j⁻¹ T1', per level of
        the first term (prior weights)."""
        t1 = self.lambda_blocks(theta)[0]
        if self.p1 == 1:
            th2 = t1[0, 0] ** 2
            v11 = th2 * self.A11[:, 0, 0] + 1.0
            return float(np.log(v11).sum()), (th2 / v11).reshape(-1, 1, 1)
        v11 = np.einsum("ba,jbc,cd->jad", t1, self.A11, t1) + np.eye(self.p1)
        l11 = np.linalg.cholesky(v11)
        ld = 2.0 * float(np.log(np.diagonal(l11, axis1=1, axis2=2)).sum())
        return ld, np.einsum("ab,jbc,dc->jad", t1, np.linalg.inv(v11), t1)

    def _l21_matrix(self) -> sp.csr_matrix:
        """L21 = Λ2' A21 Λ1 L11⁻ᵀ explicitly, with Λ1 L11⁻ᵀ = blockdiag(T1 L11_j⁻ᵀ)."""
        t1 = self.lambda_blocks(self.theta)[0]
        w1 = np.einsum("ab,jcb->jac", t1, self.L11inv)
        lam2 = self.Lam[self.q1 :, self.q1 :]
        return (lam2.T @ (self.A21 @ self._block_diag(w1))).tocsr()

    def _l21_mul(self, x1: np.ndarray) -> np.ndarray:
        """L21 x1 (x1: q1 or q1×m) through A21: Λ2'(A21 (blockdiag(T1 L11_j⁻ᵀ) x1))."""
        if self.L21 is not None:
            return self.L21 @ x1
        t1 = self.lambda_blocks(self.theta)[0]
        r = x1.reshape(self.l1, self.p1, -1)
        y = np.einsum("ab,jcb,jcm->jam", t1, self.L11inv, r).reshape(self.q1, -1)
        out = np.asarray(self.Lam[self.q1 :, self.q1 :].T @ (self.A21 @ y))
        return out.reshape(self.q2) if x1.ndim == 1 else out

    def _l21t_mul(self, x2: np.ndarray) -> np.ndarray:
        """L21' x2 (x2: q2 or q2×m) through A21: blockdiag(L11_j⁻¹ T1') A21' Λ2 x2."""
        if self.L21 is not None:
            return self.L21.T @ x2
        t1 = self.lambda_blocks(self.theta)[0]
        z = np.asarray(self.A21.T @ (self.Lam[self.q1 :, self.q1 :] @ x2))
        z = z.reshape(self.l1, self.p1, -1)
        out = np.einsum("jab,cb,jcm->jam", self.L11inv, t1, z).reshape(self.q1, -1)
        return out.reshape(self.q1) if x2.ndim == 1 else out

    # ----------------------------------------------------------------------------------------
    # The profiled criterion's pieces alone (lmer's optimizer loop)

    def profile(self, theta: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
        """(log|L|², log|R_X|², PWRSS) at θ for response y with the prior weights.

        MixedModels.jl's scheme: y is appended to X, so one Cholesky of the augmented dense
        block [[S22, C], [C', [X y]'W[X y] − R1'R1]] yields L22, R_X and, as its last pivot²,
        the penalized residual sum of squares; no L21, no solves, no n-vectors per θ. The
        first term's contribution to S22, L21 L21' = Λ2'A21 W1 A21'Λ2 with W1 = blockdiag of
        T1 (T1'A11_j T1 + I)⁻¹ T1', is one sparse matrix-vector product on the fixed pattern
        of A21 W1 A21' (`_pair_map`). State from `update` is left untouched.

        The last pivot is a difference y'Wy − ‖projection‖², less accurate than lme4's
        residual-based PWRSS when the model explains nearly all of y: use it to locate the
        optimum, and `update`/`solve`/`pwrss` for the reported values.
        """
        pairs = self._pair_setup()
        ps = self._profile_setup(y)
        theta = np.asarray(theta, dtype=float)
        self._prof_theta = theta.copy()
        q1, q2, p = self.q1, self.q2, self.p
        m = q2 + p + 1
        h = ps["buf"]
        ld = 0.0
        w1 = None
        if q1 > 0:
            ld, w1 = self._w1(theta)
            zx1 = ps["zx1"]  # (ℓ1, p1, p+1)
            wzx1 = np.einsum("jab,jbm->jam", w1, zx1)
            b33 = ps["xtx"] - np.einsum("jam,jan->mn", zx1, wzx1)
        else:
            b33 = ps["xtx"]
        if q2 > 0:
            self._fill_s22(pairs, h, theta, w1)
            c2 = ps["zx2"]
            if q1 > 0:
                c2 = c2 - self.A21 @ wzx1.reshape(q1, p + 1)
            lam = pairs["lam2_diag"]
            if lam is not None:
                c2 = theta[lam][:, None] * c2
            else:
                c2 = np.asarray(self.lambda_matrix(theta)[q1:, q1:].T @ c2)
            h[q2:, :q2] = c2.T
        h[q2:, q2:] = b33
        # h holds the lower triangle row-major; its transpose (a free view) is column-major
        # with that triangle as the upper one: LAPACK's upper Cholesky U'U = H in place.
        u, info = _dpotrf(h.T, lower=0, clean=0, overwrite_a=1)
        if info != 0:
            raise np.linalg.LinAlgError("augmented PLS matrix is not positive definite")
        d = np.diagonal(u)
        ld += 2.0 * float(np.log(d[:q2]).sum())
        ldrx = 2.0 * float(np.log(np.abs(d[q2 : q2 + p])).sum()) if p > 0 else 0.0
        return ld, ldrx, float(d[m - 1] ** 2)

    def profile_gradient_sums(self) -> np.ndarray | None:
        """For the analytic gradient of `profile`'s criterion when every term is scalar: per
        term k, (ℓ_k, S1_k, S2_k, Sy_k) from the factor of the last `profile` call (which it
        overwrites); None for models with vector-valued terms.

        With Ω the augmented matrix [Z X y] (Λ applied, +I on Z) and Ω_s its leading blocks up
        to Z (s = 1), [Z X] (2) and [Z X y] (3), a scalar term has Λ'AΛ = Ω − I on its columns,
        so d log|Ω_s|/dθ_k = 2 (ℓ_k − S_s,k)/θ_k with S_s,k = Σ_{i∈k} (Ω_s⁻¹)_ii. Returned are
        S1, S2 and Sy = S3 − S2 (computed directly: a rank-one term). With H = U'U the dense
        block and R = U⁻¹: H⁻¹ = RR' (LAPACK trtri + lauum, about two factorizations' work),
        the leading blocks' inverses differ from H⁻¹'s by R's trailing columns, and the first
        term's diagonal is 1/v_j + ω_j' H_s⁻¹ ω_j / v_j² with ω_j its column of Ω — whose
        Z-Z part is the pair map's transpose applied to Λ2 H⁻¹ Λ2, as in `cond_var`.
        """
        if any(pk != 1 for pk in self.pk):
            return None
        ps, pairs = self._ps, self._pairs
        q1, q2, p = self.q1, self.q2, self.p
        if q1 > 0 and pairs["pairs"] is None:
            return None
        theta = self._prof_theta
        buf = ps["buf"]
        rinv, info = _dtrtri(buf.T, lower=0, overwrite_c=1)
        if info != 0:
            raise np.linalg.LinAlgError("singular augmented factor")
        rc = np.array(rinv[:, q2:])  # R's [X y] columns (R is upper triangular)
        r = rc[:, -1]  # U⁻¹ e_last: H⁻¹ − blockdiag(H2⁻¹, 0) = r r'
        hinv, info = _dlauum(rinv, lower=0, overwrite_c=1)  # H⁻¹ = R R', in place
        if info != 0:
            raise np.linalg.LinAlgError("augmented inverse failed")
        hdiag = np.diagonal(hinv)[:q2].copy()
        nterm = len(self.pk)
        out = np.zeros((nterm, 4))
        out[:, 0] = self.nlev
        # dense-block terms: diagonals of H1⁻¹, H2⁻¹ and the y part r²
        s1 = hdiag - (rc[:q2] ** 2).sum(axis=1)
        sy = r[:q2] ** 2
        for k in range(self._k2, nterm):
            lo, hi = int(self.gp[k]) - q1, int(self.gp[k + 1]) - q1
            out[k, 1:] = [s1[lo:hi].sum(), (hdiag[lo:hi] - sy[lo:hi]).sum(), sy[lo:hi].sum()]
        if q1 > 0:
            lamz = theta[pairs["lam2_diag"]]
            hxz = np.array(buf[q2:, :q2])  # H⁻¹[[X y], Z] (row-major lower triangle)
            hxx = np.tril(buf[q2:, q2:])
            hxx = hxx + np.tril(hxx, -1).T
            # K_j = a_j' (Λ2 H⁻¹ Λ2) a_j over Z: scale the buffer in place, halve the diagonal
            s22 = buf[:q2, :q2]
            for a, (ia, lo_a, hi_a) in enumerate(pairs["lam2_blocks"]):
                for ib, lo_b, hi_b in pairs["lam2_blocks"][: a + 1]:
                    s22[lo_a:hi_a, lo_b:hi_b] *= theta[ia] * theta[ib]
            s22[np.diag_indices(q2)] *= 0.5
            flat = buf.reshape(-1)[: pairs["pairs"].shape[0]]
            kk = 2.0 * np.asarray(pairs["pairs"].T @ flat)[:-1]
            zx = ps["zx1"][:, 0, :]  # Z1'W[X y], (ℓ1, p+1)
            cx = np.asarray(self.A21.T @ (lamz[:, None] * hxz.T))  # Σ_i a_ij λ_i H⁻¹[i, x]
            ar = np.asarray(self.A21.T @ (lamz[:, None] * rc[:q2]))  # Σ_i a_ij λ_i R[i, c]
            c2 = (cx[:, :p] * zx[:, :p]).sum(axis=1)
            qx2 = np.einsum("jx,xy,jy->j", zx[:, :p], hxx[:p, :p], zx[:, :p])
            rho2 = ar[:, -1] + zx[:, :p] @ r[q2 : q2 + p]
            rho3 = rho2 + zx[:, p] * r[-1]
            th2 = theta[0] ** 2
            v = th2 * self.A11[:, 0, 0] + 1.0
            out[0, 1] = np.sum(1.0 / v + th2 * (kk - (ar**2).sum(axis=1)) / v**2)
            out[0, 2] = np.sum(1.0 / v + th2 * (kk + 2.0 * c2 + qx2 - rho2**2) / v**2)
            out[0, 3] = np.sum(th2 * rho3**2 / v**2)
        return out

    def _fill_s22(
        self, pairs: dict[str, Any], buf: np.ndarray, theta: np.ndarray, w1: np.ndarray | None
    ) -> None:
        """Write the lower triangle of S22 = Λ2'(A22 − A21 W1 A21')Λ2 + I into buf[:q2, :q2]
        (buf: the row-major (q2+p+1)² buffer the pair map's positions refer to)."""
        q1, q2 = self.q1, self.q2
        s22 = buf[:q2, :q2]
        pmap = pairs["pairs"]
        if pmap is not None:  # A22's lower triangle is the map's last column (coefficient 1)
            s22.fill(0.0)
            x = np.empty(pmap.shape[1])
            x[:-1] = -w1.ravel()
            x[-1] = 1.0
            _accumulate(pmap, x, buf.reshape(-1))
        else:
            s22[...] = pairs["a22"]
            if q1 > 0:
                s22 -= (self.A21 @ self._block_diag(w1) @ self.A21.T).toarray()
        blocks = pairs["lam2_blocks"]
        if blocks is not None:  # Λ2 diagonal: scale the lower blocks by θ_k θ_l
            for a, (ia, lo_a, hi_a) in enumerate(blocks):
                for ib, lo_b, hi_b in blocks[: a + 1]:
                    s22[lo_a:hi_a, lo_b:hi_b] *= theta[ia] * theta[ib]
        else:
            lam2 = self.lambda_matrix(theta)[q1:, q1:]
            full = np.tril(s22) + np.tril(s22, -1).T
            s22[...] = np.asarray(lam2.T @ np.asarray(lam2.T @ full).T)
        s22[np.diag_indices(q2)] += 1.0

    def _pair_setup(self) -> dict[str, Any] | None:
        """θ-independent pieces for assembling S22 with the prior weights (built once)."""
        self._set_weights(None)
        pairs = getattr(self, "_pairs", None)
        if pairs is not None:
            return pairs
        q1, q2, p = self.q1, self.q2, self.p
        stride = q2 + p + 1
        a22 = self.A22.toarray() if sp.issparse(self.A22) else np.asarray(self.A22)
        pmap = _pair_map(self.A21, self.l1, self.p1, stride) if q1 > 0 else None
        if pmap is not None:
            low = sp.tril(sp.coo_matrix(self.A22)).tocoo()
            col22 = sp.csr_matrix(
                (low.data, (low.row.astype(np.int64) * stride + low.col, np.zeros(low.nnz, int))),
                shape=(pmap.shape[0], 1),
            )
            pmap = sp.hstack([pmap, col22], format="csr")
        pairs = {"a22": a22 if pmap is None else None, "pairs": pmap}
        # Λ2 diagonal (every dense-block term scalar): (θ index, first, end column) per term
        k2 = self._k2
        if all(pk == 1 for pk in self.pk[k2:]):
            pairs["lam2_blocks"] = [
                (int(self.toff[k]), int(self.gp[k]) - q1, int(self.gp[k + 1]) - q1)
                for k in range(k2, len(self.pk))
            ]
            pairs["lam2_diag"] = np.array(
                [self.toff[k] for k in range(k2, len(self.pk)) for _ in range(self.nlev[k])],
                dtype=np.int64,
            )
        else:
            pairs["lam2_blocks"] = pairs["lam2_diag"] = None
        self._pairs = pairs
        return pairs

    def _profile_setup(self, y: np.ndarray) -> dict[str, Any]:
        """[X y] cross-products for `profile` (built once per response, prior weights)."""
        y = np.asarray(y, dtype=float)
        self._set_weights(None)
        ps = getattr(self, "_ps", None)
        if ps is not None and np.array_equal(ps["y"], y):
            return ps
        q1, q2, p = self.q1, self.q2, self.p
        xy = np.column_stack([self.X, y])
        zx = np.asarray(self.Z.T @ (xy * self.w[:, None]))
        ps = {"y": y.copy(), "xtx": xy.T @ (xy * self.w[:, None])}
        ps["zx1"] = zx[:q1].reshape(self.l1, self.p1, p + 1)
        ps["zx2"] = zx[q1:]
        ps["buf"] = np.zeros((q2 + p + 1, q2 + p + 1))
        self._ps = ps
        return ps

    def _block_diag(self, blocks: np.ndarray) -> sp.csr_matrix:
        """Sparse block-diagonal matrix from a (ℓ, p, p) stack."""
        nb, pb, _ = blocks.shape
        base = np.arange(nb) * pb
        r = (base[:, None, None] + np.arange(pb)[None, :, None]) + 0 * np.arange(pb)[None, None, :]
        c = (base[:, None, None] + np.arange(pb)[None, None, :]) + 0 * np.arange(pb)[None, :, None]
        return sp.csr_matrix((blocks.ravel(), (r.ravel(), c.ravel())), shape=(nb * pb, nb * pb))

    def _forward(self, rhs: np.ndarray) -> np.ndarray:
        """Solve L x = rhs (rhs q or q×m)."""
        vec = rhs.ndim == 1
        r = rhs.reshape(self.q, -1)
        m = r.shape[1]
        q1 = self.q1
        x1 = np.einsum("jab,jbm->jam", self.L11inv, r[:q1].reshape(self.l1, self.p1, m))
        x1 = x1.reshape(q1, m)
        r2 = r[q1:] - self._l21_mul(x1) if q1 > 0 and self.q2 > 0 else r[q1:]
        x2 = self._tri(r2, trans=False)
        x = np.vstack([x1, x2])
        return x.ravel() if vec else x

    def _tri(self, r: np.ndarray, trans: bool) -> np.ndarray:
        if self.q2 == 0:
            return r
        return sla.solve_triangular(
            self.L22, r, lower=True, trans="T" if trans else "N", check_finite=False
        )

    def _backward(self, rhs: np.ndarray) -> np.ndarray:
        """Solve L' x = rhs (rhs q or q×m)."""
        vec = rhs.ndim == 1
        r = rhs.reshape(self.q, -1)
        m = r.shape[1]
        q1 = self.q1
        x2 = self._tri(r[q1:], trans=True)
        r1 = r[:q1] - self._l21t_mul(x2) if q1 > 0 and self.q2 > 0 else r[:q1]
        x1 = np.einsum("jba,jbm->jam", self.L11inv, r1.reshape(self.l1, self.p1, m))
        x = np.vstack([x1.reshape(q1, m), x2])
        return x.ravel() if vec else x

    # ----------------------------------------------------------------------------------------
    # Solutions

    def solve(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Joint PLS solution (β̂_θ, ũ) for the offset-free response y (lme4's merPredD::solve)."""
        wy = self.w * y
        cu = self._forward(np.asarray(self.Lam.T @ (self.Z.T @ wy)))
        if self.p > 0:
            cb = sla.solve_triangular(
                self.RX, self.X.T @ wy - self.RZX.T @ cu, trans="T", check_finite=False
            )
            beta = sla.solve_triangular(self.RX, cb, check_finite=False)
        else:
            beta = np.zeros(0)
        u = self._backward(cu - self.RZX @ beta)
        return beta, u

    def solve_u(self, y: np.ndarray) -> np.ndarray:
        """u alone for the response y with Xβ already removed (lme4's solveU)."""
        wy = self.w * y
        return self._backward(self._forward(np.asarray(self.Lam.T @ (self.Z.T @ wy))))

    def b(self, u: np.ndarray) -> np.ndarray:
        return np.asarray(self.Lam @ u)

    def Zb(self, u: np.ndarray) -> np.ndarray:
        return np.asarray(self.Z @ (self.Lam @ u))

    def Xb(self, beta: np.ndarray) -> np.ndarray:
        return self.X @ beta if self.p > 0 else np.zeros(self.n)

    def pwrss(self, y: np.ndarray, beta: np.ndarray, u: np.ndarray) -> float:
        """Penalized weighted residual sum of squares, computed from residuals (stable)."""
        res = y - self.Xb(beta) - self.Zb(u)
        return float(np.dot(self.w * res, res) + np.dot(u, u))

    def rx_inverse(self) -> np.ndarray:
        """(R_X'R_X)⁻¹, the unscaled covariance of β̂."""
        rinv = sla.solve_triangular(self.RX, np.eye(self.p), check_finite=False)
        return rinv @ rinv.T

    # ----------------------------------------------------------------------------------------
    # Conditional variances

    def _vinv_diag_blocks(self) -> list[np.ndarray]:
        """Per term, the (ℓ_k, p_k, p_k) diagonal blocks of (LL')⁻¹ = V⁻¹.

        With the Schur complement S22 = L22 L22', V⁻¹'s dense block is S22⁻¹ (one LAPACK
        potri), and the first term's blocks are V11_j⁻¹ + B_j' S22⁻¹ B_j with B = L21 L11⁻¹.
        When the pair map of `profile` is available, B_j'S22⁻¹B_j = V11_j⁻¹T1' K_j T1 V11_j⁻¹
        with K_j = A21_j' (Λ2 S22⁻¹ Λ2') A21_j, i.e. the pair map's transpose applied to
        Λ2 S22⁻¹ Λ2': O(pairs) instead of q2 triangular solves with ℓ1 p1 right-hand sides.
        """
        p1, l1, q1, q2 = self.p1, self.l1, self.q1, self.q2
        out = []
        sinv = None
        if q2 > 0:
            low, info = _dpotri(self.L22, lower=1)
            if info != 0:
                raise np.linalg.LinAlgError("singular L22")
            low = np.tril(low)
            sinv = low + np.tril(low, -1).T
        if q1 > 0:
            first = np.einsum("jca,jcb->jab", self.L11inv, self.L11inv)  # V11_j⁻¹
            pairs = getattr(self, "_pairs", None) if self.L21 is None else None
            if q2 > 0 and pairs is not None and pairs["pairs"] is not None:
                idx = pairs["lam2_diag"]
                if idx is not None:
                    lam = self.theta[idx]
                    g = sinv * lam[:, None] * lam[None, :]
                else:
                    lam2 = self.Lam[q1:, q1:]
                    g = np.asarray(lam2 @ np.asarray(lam2 @ sinv).T)
                g = np.tril(g)
                g[np.diag_indices(q2)] *= 0.5  # K = K̃ + K̃' counts the diagonal twice
                gbuf = np.zeros((q2, q2 + self.p + 1))
                gbuf[:, :q2] = g
                kt = np.asarray(pairs["pairs"].T @ gbuf.ravel())[:-1].reshape(l1, p1, p1)
                k = kt + kt.transpose(0, 2, 1)
                t1 = self.lambda_blocks(self.theta)[0]
                vt = np.einsum("jab,cb->jac", first, t1)  # V11_j⁻¹ T1'
                first = first + np.einsum("jab,jbc,jdc->jad", vt, k, vt)
            elif q2 > 0:
                l21 = self.L21 if self.L21 is not None else self._l21_matrix()
                # H = L22⁻¹ L21 L11⁻¹: H'H is the Schur-complement part
                h = sla.solve_triangular(
                    self.L22,
                    (l21 @ self._block_diag(self.L11inv)).toarray(),
                    lower=True,
                    check_finite=False,
                ).reshape(q2, l1, p1)
                first = first + np.einsum("ija,ijb->jab", h, h)
            out.append(first)
        if q2 > 0:
            for k in range(self._k2, len(self.reterms)):
                lo, pk, nl = self.gp[k] - q1, self.pk[k], self.nlev[k]
                base = lo + np.arange(nl) * pk
                r = base[:, None, None] + np.arange(pk)[None, :, None]
                c = base[:, None, None] + np.arange(pk)[None, None, :]
                out.append(sinv[r, c])
        return out

    def cond_var(self, sigma: float) -> list[np.ndarray]:
        """Per term, diagonal blocks of σ²Λ(LL')⁻¹Λ' as (ℓ_k, p_k, p_k) arrays."""
        tks = self.lambda_blocks(self.theta)
        out = []
        for tk, blk in zip(tks, self._vinv_diag_blocks(), strict=True):
            out.append(sigma**2 * np.einsum("ab,jbc,dc->jad", tk, blk, tk))
        return out

    def cond_var_by_factor(self, sigma: float) -> dict[str, np.ndarray]:
        """Group -> (ℓ, nc, nc): several terms on one factor combined block-diagonally."""
        per_term = self.cond_var(sigma)
        out: dict[str, np.ndarray] = {}
        for g in dict.fromkeys(t.group for t in self.reterms):
            idx = [k for k, t in enumerate(self.reterms) if t.group == g]
            nc = sum(self.pk[k] for k in idx)
            arr = np.zeros((self.nlev[idx[0]], nc, nc))
            pos = 0
            for k in idx:
                pk = self.pk[k]
                arr[:, pos : pos + pk, pos : pos + pk] = per_term[k]
                pos += pk
            out[g] = arr
        return out
