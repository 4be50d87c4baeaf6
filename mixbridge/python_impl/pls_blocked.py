"""The blocked PLS core for any random-effects structure (lme4's `merPredD`; see `pls`).

The core knows the model matrices (X, Z through the random-effects terms) and Λ_θ, but no
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

API (the `ProfiledCore` of `pls`; used by lmer and by glmer's PIRLS):

    pred = BlockedCore(terms)           # terms: MixedTerms (X, reterms, weights)
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

import itertools
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp

from mixbridge.python_impl.pls import blas_for_order, lambda_blocks, theta_layout
from mixbridge.python_impl.pls_augmented import AugmentedProfile

if TYPE_CHECKING:
    from mixbridge.formula.frames import MixedTerms

# Up to this many random effects the factorization is done densely: for small q, a handful of
# LAPACK calls beats the fixed overhead of sparse operations (sleepstudy q = 36, Pastes q = 40).
DENSE_Q_MAX = 400


def _dpotrf(*args: Any, **kwargs: Any) -> Any:
    from scipy.linalg import lapack

    return lapack.dpotrf(*args, **kwargs)


def _dpotri(*args: Any, **kwargs: Any) -> Any:
    from scipy.linalg import lapack

    return lapack.dpotri(*args, **kwargs)


class BlockedCore(AugmentedProfile):
    """lme4's merPredD with MixedModels.jl's blocked Cholesky. See the module docstring."""

    def __init__(self, terms: MixedTerms) -> None:
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
        return lambda_blocks(self.pk, theta)

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
        self._l22_inplace = False
        if pairs is not None and q2 > 0:
            # the same assembly as `profile` (lower triangle in a row-major buffer)
            m = q2 + p + 1
            buf = self._release_profile_buffer()
            if buf is None or buf.shape != (m, m):
                buf = np.empty((m, m))
            h = buf[: q2 + p, : q2 + p]
            w1 = self._w1(theta)[1] if q1 > 0 else None
            self._fill_s22(pairs, buf, theta, w1)
            c2 = np.asarray(lam[q1:, q1:].T @ self.ZtWX[q1:])
            if q1 > 0:
                c2 -= self._l21_mul(r1)
            h[q2:, :q2] = c2.T
            h[q2:, q2:] = self.XtWX - r1.T @ r1
            buf[m - 1, :] = 0.0  # a unit last pivot: the leading factor is unchanged
            buf[m - 1, m - 1] = 1.0
            self._factor_in_place(buf, ld, r1)
            return
        if pairs is not None:
            h = np.empty((q2 + p, q2 + p))
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

    def _factor_in_place(self, buf: np.ndarray, ld: float, r1: np.ndarray) -> None:
        """Factor the augmented block (row-major lower triangle in buf, (m, m), its last row a
        unit pivot) in place and keep L22 in the same memory: one q2² buffer, no copies (the
        block is 3.2 GB at q2 = 2e4). LAPACK's upper factor U of buf.T is column-major with
        leading dimension m; its [X] columns are copied out, then its leading q2 columns are
        moved together (column j from j·m to j·q2; never forward over unread data) so that
        L22 = U22' is a C-contiguous view that LAPACK and solve_triangular take as is."""
        q2, p = self.q2, self.p
        m = buf.shape[0]
        with blas_for_order(m):
            u, info = _dpotrf(buf.T, lower=0, clean=0, overwrite_a=1)
        if info != 0:
            raise np.linalg.LinAlgError("PLS matrix is not positive definite")
        rzx2 = np.array(u[:q2, q2 : q2 + p])  # L's [X] rows below L22, transposed
        self.RX = np.triu(u[q2 : q2 + p, q2 : q2 + p])
        flat = buf.reshape(-1)  # U's column j is flat[j·m : j·m + m]
        for j in range(1, q2):
            flat[j * q2 : (j + 1) * q2] = flat[j * m : j * m + q2]
        self.L22 = flat[: q2 * q2].reshape(q2, q2)  # = U22' (lower; the upper part is unused)
        self._l22_inplace = True
        ld += 2.0 * np.log(np.diagonal(self.L22)).sum()
        self.ldL2 = float(ld)
        self.RZX = np.vstack([r1, rzx2])
        self.ldRX2 = float(2.0 * np.log(np.abs(np.diag(self.RX))).sum()) if p > 0 else 0.0

    def _ensure_factor(self) -> None:
        """Refactor at the current θ after `_vinv_diag_blocks` inverted L22 in place, or after
        `kept_state` set the state without a factor."""
        if self.L22 is None and self.theta is not None:
            self.update(self.theta)

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

    def _block_diag(self, blocks: np.ndarray) -> sp.csr_matrix:
        """Sparse block-diagonal matrix from a (ℓ, p, p) stack."""
        nb, pb, _ = blocks.shape
        base = np.arange(nb) * pb
        r = (base[:, None, None] + np.arange(pb)[None, :, None]) + 0 * np.arange(pb)[None, None, :]
        c = (base[:, None, None] + np.arange(pb)[None, None, :]) + 0 * np.arange(pb)[None, :, None]
        return sp.csr_matrix((blocks.ravel(), (r.ravel(), c.ravel())), shape=(nb * pb, nb * pb))

    def _forward(self, rhs: np.ndarray) -> np.ndarray:
        """Solve L x = rhs (rhs q or q×m)."""
        self._ensure_factor()
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
        self._ensure_factor()
        return sla.solve_triangular(
            self.L22, r, lower=True, trans="T" if trans else "N", check_finite=False
        )

    def _backward(self, rhs: np.ndarray) -> np.ndarray:
        """Solve L' x = rhs (rhs q or q×m)."""
        self._ensure_factor()
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
        if isinstance(self._weights_key, str) and self.theta is not None:
            # the optimizer's gradient at this θ computed them already (no inverse needed)
            kept = self.vinv_diag_at(self.theta)
            if kept is not None:
                return [kept[lo:hi].reshape(-1, 1, 1) for lo, hi in itertools.pairwise(self.gp)]
        self._ensure_factor()
        pairs = getattr(self, "_pairs", None) if self.L21 is None else None
        if (
            q1 > 0
            and q2 > 0
            and self._l22_inplace
            and pairs is not None
            and pairs["pairs"] is not None
            and pairs["lam2_diag"] is not None
        ):
            return self._vinv_diag_blocks_in_place(pairs)
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
                # the pair map's positions are in a row-major buffer of row length q2 + p + 1
                pos = pairs["positions"]
                stride = q2 + self.p + 1
                gvals = g[pos // stride, pos % stride]
                kt = np.asarray(pairs["pairs"].T @ gvals).reshape(l1, p1, p1)
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

    def _vinv_diag_blocks_in_place(self, pairs: dict[str, Any]) -> list[np.ndarray]:
        """`_vinv_diag_blocks` for Λ2 diagonal with the pair map, inverting L22's memory in
        place (LAPACK potri on U22 = L22'): S22⁻¹'s upper triangle is read at the pair map's
        positions and on the dense-block terms' diagonal blocks; no q2² copy is made. The
        factor is gone afterwards (`_ensure_factor` refactors when a solve needs it)."""
        p1, l1, q2 = self.p1, self.l1, self.q2
        with blas_for_order(q2, work=2.0):
            up, info = _dpotri(self.L22.T, lower=0, overwrite_c=1)
        self.L22 = None
        self._l22_inplace = False
        if info != 0:
            raise np.linalg.LinAlgError("singular L22")
        lam = self.theta[pairs["lam2_diag"]]
        pos = pairs["positions"]
        stride = q2 + self.p + 1
        i, k = pos // stride, pos % stride  # lower-triangle positions: i ≥ k
        gvals = up[k, i] * lam[i] * lam[k]
        gvals[i == k] *= 0.5  # K = K̃ + K̃' counts the diagonal twice
        kt = np.asarray(pairs["pairs"].T @ gvals).reshape(l1, p1, p1)
        k_ = kt + kt.transpose(0, 2, 1)
        first = np.einsum("jca,jcb->jab", self.L11inv, self.L11inv)  # V11_j⁻¹
        t1 = self.lambda_blocks(self.theta)[0]
        vt = np.einsum("jab,cb->jac", first, t1)  # V11_j⁻¹ T1'
        out = [first + np.einsum("jab,jbc,jdc->jad", vt, k_, vt)]
        for kk in range(self._k2, len(self.reterms)):
            lo, pk, nl = self.gp[kk] - self.q1, self.pk[kk], self.nlev[kk]
            base = lo + np.arange(nl) * pk
            r = base[:, None, None] + np.arange(pk)[None, :, None]
            c = base[:, None, None] + np.arange(pk)[None, None, :]
            out.append(up[np.minimum(r, c), np.maximum(r, c)])
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
