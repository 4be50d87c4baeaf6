"""lmer's profiled criterion from one augmented factorization, for the blocked core (the
optimizer loop of lmer; MixedModels.jl's [Z X y] scheme). A mixin of `BlockedCore`, on its
structure (A11, A21, A22, Λ's layout) at the prior weights.

    core.profile(theta, y)        (log|L|², log|R_X|², PWRSS) alone: one Cholesky of the
                                  augmented dense block, PWRSS as its last pivot²; no solve
    core.profile_gradient_sums()  after profile: per-term inverse-diagonal sums for the analytic
                                  gradient (all terms scalar), else None

The first term's contribution to the dense block, L21 L21', is one sparse matrix-vector product
on the fixed pattern of A21 W1 A21' (`pair_map`), enumerated once per model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from mixbridge.python_impl.pls import blas_for_order

# `profile` enumerates the pairs of non-zeros of A21 within each first-term level once; beyond
# this many (memory: ~40 bytes each) it forms A21 W1 A21' by sparse products per θ instead.
PAIRS_MAX = 50_000_000


def _dpotrf(*args: Any, **kwargs: Any) -> Any:
    from scipy.linalg import lapack

    return lapack.dpotrf(*args, **kwargs)


def _dtrtri(*args: Any, **kwargs: Any) -> Any:
    from scipy.linalg import lapack

    return lapack.dtrtri(*args, **kwargs)


def _dlauum(*args: Any, **kwargs: Any) -> Any:
    from scipy.linalg import lapack

    return lapack.dlauum(*args, **kwargs)


# Dense blocks of at least this order take the gradient's first-term sums from sparse
# products with R = U⁻¹ (`_a21_r_sqnorms`, nnz(A21)·q2 multiply-adds at sparse speed) instead
# of the inverse R R' (lauum, q2³/3 flops at BLAS speed). Measured here, 1e6 rows with 1e5
# levels in the first term: 3.7 s against lauum's 1 s at q2 = 5e3 (so ~15 s against ~67 s at
# 2e4; they cross near 1e4).
SPARSE_GRADIENT_ORDER = 10_000
SPARSE_PANEL = 64  # columns of R per sparse product (a q2 × 64 panel stays in cache)


def _column_sqnorms(buf: np.ndarray, ncol: int, rows: int = 512) -> np.ndarray:
    """Σ_r buf[r, c]² for c < ncol, by row blocks (no temporary the size of buf)."""
    acc = np.zeros(ncol)
    for r0 in range(0, buf.shape[0], rows):
        blk = buf[r0 : r0 + rows, :ncol]
        acc += np.einsum("ij,ij->j", blk, blk)
    return acc


def _pair_map(
    a21: sp.csr_matrix, l1: int, p1: int, stride: int
) -> tuple[sp.csr_matrix, np.ndarray] | None:
    """The linear map vec(W1) -> lower triangle of A21 W1 A21', as (M, positions): row r of the
    sparse M is the entry at position positions[r] = i·stride + k of a row-major buffer with
    row length `stride` (only positions with pairs have rows).

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
    # rows: only the buffer positions that have pairs (an indptr over every position would be
    # (q2+p+1)² int64s: 3.2 GB at q2 = 2e4)
    pos = pos[o]
    new = np.empty(pos.size, dtype=bool)
    new[:1] = True
    np.not_equal(pos[1:], pos[:-1], out=new[1:])
    upos = pos[new]
    indptr = np.append(np.flatnonzero(new), pos.size).astype(np.int64)
    del pos, new
    e, f = e[o], f[o]
    wcol = lev[e] if p1 == 1 else lev[e] * p1 * p1 + (col[e] % p1) * p1 + col[f] % p1
    m = sp.csr_matrix((a.data[e] * a.data[f], wcol, indptr), shape=(upos.size, l1 * p1 * p1))
    return m, upos


class AugmentedProfile:
    """lmer's profiled criterion for `BlockedCore` (see the module docstring)."""

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
        self._prof_diag = False
        if q2 > 0 and self._diagonal_s22(pairs, theta, w1):
            return self._profile_diagonal(pairs, ps, theta, ld, w1, b33)
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
        with blas_for_order(m):
            u, info = _dpotrf(h.T, lower=0, clean=0, overwrite_a=1)
        if info != 0:
            raise np.linalg.LinAlgError("augmented PLS matrix is not positive definite")
        d = np.diagonal(u)
        ld += 2.0 * float(np.log(d[:q2]).sum())
        ldrx = 2.0 * float(np.log(np.abs(d[q2 : q2 + p])).sum()) if p > 0 else 0.0
        self._prof_ld = (ld, ldrx)
        return ld, ldrx, float(d[m - 1] ** 2)

    def _diagonal_s22(
        self, pairs: dict[str, Any], theta: np.ndarray, w1: np.ndarray | None
    ) -> bool:
        """S22 is diagonal at θ: every dense-block θ is 0 (S22 = I), or the first term's θ is 0
        (W1 = 0) and A22 is diagonal (one more scalar term) — e.g. the boundary probes."""
        lam = pairs["lam2_diag"]
        if lam is None:
            return False
        if not np.any(theta[lam]):
            return True
        return pairs["a22_diag"] is not None and (w1 is None or not np.any(w1))

    def _profile_diagonal(
        self,
        pairs: dict[str, Any],
        ps: dict[str, Any],
        theta: np.ndarray,
        ld: float,
        w1: np.ndarray | None,
        b33: np.ndarray,
    ) -> tuple[float, float, float]:
        """`profile` when S22 = D is diagonal: the augmented Cholesky is √D, C'/√D and the
        Cholesky of the (p+1)² Schur complement b33 − C'D⁻¹C; no dense q2² work."""
        self._prof_diag = True
        q1, p = self.q1, self.p
        lam = theta[pairs["lam2_diag"]]
        a22 = pairs["a22_diag"] if pairs["a22_diag"] is not None else 0.0
        d = lam**2 * a22 + 1.0
        c2 = ps["zx2"]
        if q1 > 0 and w1 is not None and np.any(w1):
            c2 = c2 - self.A21 @ np.einsum("jab,jbm->jam", w1, ps["zx1"]).reshape(q1, p + 1)
        c2 = lam[:, None] * c2
        schur = b33 - c2.T @ (c2 / d[:, None])
        u = np.linalg.cholesky(schur)
        dg = np.diagonal(u)
        ld += float(np.log(d).sum())
        ldrx = 2.0 * float(np.log(np.abs(dg[:p])).sum()) if p > 0 else 0.0
        return ld, ldrx, float(dg[p] ** 2)

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
        if any(pk != 1 for pk in self.pk) or getattr(self, "_prof_diag", False):
            return None
        ps, pairs = self._ps, self._pairs
        q1, q2, p = self.q1, self.q2, self.p
        if q1 > 0 and pairs["pairs"] is None:
            return None
        theta = self._prof_theta
        buf = ps["buf"]
        rx = np.triu(buf.T[q2 : q2 + p, q2 : q2 + p])  # R_X, before U is inverted in place
        with blas_for_order(buf.shape[0]):
            rinv, info = _dtrtri(buf.T, lower=0, overwrite_c=1)
        if info != 0:
            raise np.linalg.LinAlgError("singular augmented factor")
        rc = np.array(rinv[:, q2:])  # R's [X y] columns (R is upper triangular)
        r = rc[:, -1]  # U⁻¹ e_last: H⁻¹ − blockdiag(H2⁻¹, 0) = r r'
        # the first term's quadratic forms over Z: from H⁻¹ at the pair map's positions (one
        # more LAPACK call, lauum: q2³/3 flops), or, for big blocks, from P = A21'Λ2 R_ZZ
        # by sparse products (nnz(A21)·q2: at q2 = 2e4 a quarter of lauum's time)
        sparse_route = q1 > 0 and q2 >= SPARSE_GRADIENT_ORDER
        if sparse_route:
            hdiag = _column_sqnorms(buf, q2)  # Σ_c R[i, c]²: buf's row c is R's column c
            rxy = np.triu(rc[q2:])  # R[[X y], [X y]] (below its diagonal: b33's old values)
            hxz = rxy @ rc[:q2].T  # H⁻¹[[X y], Z] = R[[X y], [X y]] R[Z, [X y]]'
            hxx = rxy @ rxy.T
        else:
            with blas_for_order(buf.shape[0]):
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
            ar = np.asarray(self.A21.T @ (lamz[:, None] * rc[:q2]))  # Σ_i a_ij λ_i R[i, c]
            if sparse_route:
                # K_j = a_j' (Λ2 H⁻¹ Λ2) a_j over Z = ‖P_j‖² + ‖ar_j‖²
                kk = self._a21_r_sqnorms(buf, lamz) + (ar**2).sum(axis=1)
            else:
                hxz = np.array(buf[q2:, :q2])  # H⁻¹[[X y], Z] (row-major lower triangle)
                hxx = np.tril(buf[q2:, q2:])
                hxx = hxx + np.tril(hxx, -1).T
                # K_j = a_j' (Λ2 H⁻¹ Λ2) a_j over Z: scale the buffer in place, halve the
                # diagonal
                s22 = buf[:q2, :q2]
                for a, (ia, lo_a, hi_a) in enumerate(pairs["lam2_blocks"]):
                    for ib, lo_b, hi_b in pairs["lam2_blocks"][: a + 1]:
                        s22[lo_a:hi_a, lo_b:hi_b] *= theta[ia] * theta[ib]
                s22[np.diag_indices(q2)] *= 0.5
                kk = 2.0 * np.asarray(pairs["pairs"].T @ buf.reshape(-1)[pairs["positions"]])
            zx = ps["zx1"][:, 0, :]  # Z1'W[X y], (ℓ1, p+1)
            cx = np.asarray(self.A21.T @ (lamz[:, None] * hxz.T))  # Σ_i a_ij λ_i H⁻¹[i, x]
            c2 = (cx[:, :p] * zx[:, :p]).sum(axis=1)
            qx2 = np.einsum("jx,xy,jy->j", zx[:, :p], hxx[:p, :p], zx[:, :p])
            rho2 = ar[:, -1] + zx[:, :p] @ r[q2 : q2 + p]
            rho3 = rho2 + zx[:, p] * r[-1]
            th2 = theta[0] ** 2
            v = th2 * self.A11[:, 0, 0] + 1.0
            first = 1.0 / v + th2 * (kk - (ar**2).sum(axis=1)) / v**2
            out[0, 1] = np.sum(first)
            out[0, 2] = np.sum(1.0 / v + th2 * (kk + 2.0 * c2 + qx2 - rho2**2) / v**2)
            out[0, 3] = np.sum(th2 * rho3**2 / v**2)
        # the PLS solution at θ from R's last column: (u2, β) = −R[:-1, -1] / R[-1, -1]
        z = -r[:-1] / r[-1]
        u2, beta = z[:q2], z[q2 : q2 + p]
        if q1 > 0:  # the first term's u from its rows of the normal equations (V11 diagonal)
            zx1 = ps["zx1"][:, 0, :]
            rhs = zx1[:, p] - zx1[:, :p] @ beta - np.asarray(self.A21.T @ (lamz * u2))
            u1 = theta[0] * rhs / v
        else:
            u1 = np.zeros(0)
        ld, ldrx = self._prof_ld
        self._keep(
            theta,
            {
                "vinv_diag": np.concatenate([first if q1 > 0 else np.zeros(0), s1]),
                "beta": beta,
                "u": np.concatenate([u1, u2]),
                "ld": ld,
                "ldrx": ldrx,
                "rx": rx,
            },
        )
        return out

    def _a21_r_sqnorms(self, buf: np.ndarray, lamz: np.ndarray) -> np.ndarray:
        """‖P_j‖² per first-term level j for P = A21'Λ2 R_ZZ (ℓ1 × q2; R = U⁻¹ in `buf`,
        whose row c holds R's column c), by column panels of R: sparse times dense, the
        panel (q2 × SPARSE_PANEL) in cache, never P whole (8 GB at 1e5 × 1e4)."""
        q2 = self.q2
        at = self._pairs.get("a21t")
        if at is None:
            at = self._pairs["a21t"] = self.A21.T.tocsr()
        acc = np.zeros(self.l1)
        for c0 in range(0, q2, SPARSE_PANEL):
            c1 = min(c0 + SPARSE_PANEL, q2)
            panel = np.ascontiguousarray(buf[c0:c1, :q2].T)  # R[:, c0:c1] over Z (0 below c1)
            panel *= lamz[:, None]
            prod = at @ panel
            acc += np.einsum("ij,ij->i", prod, prod)
        return acc

    # `profile_gradient_sums` keeps, for its last KEEP θ, the diagonal of V⁻¹ (V = Λ'Z'ZΛ + I,
    # per random effect) and the PLS solution: at the optimum these are the conditional
    # variances (lme4's condVar) and the fit's state, which then need neither an inverse nor a
    # factorization of the dense block (`vinv_diag_at`, `kept_state`).
    KEEP = 8

    def _keep(self, theta: np.ndarray, record: dict[str, Any]) -> None:
        kept = getattr(self, "_kept", None)
        if kept is None:
            kept = self._kept = {}
        kept.pop(theta.tobytes(), None)
        kept[theta.tobytes()] = record
        while len(kept) > self.KEEP:
            kept.pop(next(iter(kept)))

    def _kept_at(self, theta: np.ndarray) -> dict[str, Any] | None:
        kept = getattr(self, "_kept", None)
        return kept.get(np.asarray(theta, dtype=float).tobytes()) if kept else None

    def vinv_diag_at(self, theta: np.ndarray) -> np.ndarray | None:
        """diag(V⁻¹) at θ (prior weights, every term scalar) when `profile_gradient_sums` was
        evaluated at exactly this θ recently, else None."""
        rec = self._kept_at(theta)
        return None if rec is None else rec["vinv_diag"]

    def kept_state(self, theta: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(β̂, ũ) at θ for response y when `profile_gradient_sums` ran at exactly this θ for
        this y, with the core's state set as `update(θ)` sets it (θ, Λ, R_X, log|L|²,
        log|R_X|²) but for the dense factor, which a solve refactors (`_ensure_factor`); else
        None. The solution comes from the inverted augmented factor (R's last column), which
        the gradient computed anyway: the fit's final state then costs no factorization."""
        rec = self._kept_at(theta)
        ps = getattr(self, "_ps", None)
        if rec is None or ps is None or self.q2 == 0 or not np.array_equal(ps["y"], y):
            return None
        self._set_weights(None)
        theta = np.asarray(theta, dtype=float)
        self.theta = theta.copy()
        self.Lam = self.lambda_matrix(theta)
        self.L21 = None
        self.L11 = self.L11inv = None  # not at this θ
        self.L22 = None  # `_ensure_factor` refactors before any solve
        self._l22_inplace = False
        self.RX = rec["rx"].copy()
        self.RZX = None
        self.ldL2, self.ldRX2 = float(rec["ld"]), float(rec["ldrx"])
        return rec["beta"].copy(), rec["u"].copy()

    def _fill_s22(
        self, pairs: dict[str, Any], buf: np.ndarray, theta: np.ndarray, w1: np.ndarray | None
    ) -> None:
        """Write the lower triangle of S22 = Λ2'(A22 − A21 W1 A21')Λ2 + I into buf[:q2, :q2]
        (buf: the row-major (q2+p+1)² buffer the pair map's positions refer to)."""
        q1, q2 = self.q1, self.q2
        s22 = buf[:q2, :q2]
        pmap = pairs["pairs"]
        if pmap is not None:
            s22.fill(0.0)
            flat = buf.reshape(-1)
            flat[pairs["positions"]] = pmap @ -w1.ravel()
            pos22, val22 = pairs["a22_low"]
            flat[pos22] += val22
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

    def _release_profile_buffer(self) -> np.ndarray | None:
        """Hand `profile`'s (q2+p+1)² buffer to the caller (`update`, which reuses the memory):
        after it the next `profile` allocates a new one. One dense block in memory, not two."""
        ps = getattr(self, "_ps", None)
        if ps is None or "buf" not in ps:
            return None
        buf = ps.pop("buf")
        return buf

    def _pair_setup(self) -> dict[str, Any] | None:
        """θ-independent pieces for assembling S22 with the prior weights (built once)."""
        self._set_weights(None)
        pairs = getattr(self, "_pairs", None)
        if pairs is not None:
            return pairs
        q1, q2, p = self.q1, self.q2, self.p
        stride = q2 + p + 1
        pmap = _pair_map(self.A21, self.l1, self.p1, stride) if q1 > 0 else None
        # dense A22 only without the pair map (which carries A22's lower triangle itself)
        a22 = (
            (self.A22.toarray() if sp.issparse(self.A22) else np.asarray(self.A22))
            if pmap is None
            else None
        )
        pairs: dict[str, Any] = {"a22": a22, "pairs": None, "positions": None}
        if pmap is not None:
            low = sp.tril(sp.coo_matrix(self.A22)).tocoo()
            pos22 = low.row.astype(np.int64) * stride + low.col
            pairs.update(pairs=pmap[0], positions=pmap[1], a22_low=(pos22, low.data))
        if sp.issparse(self.A22):
            a22_diag = self.A22.diagonal()
            off = self.A22.nnz - np.count_nonzero(a22_diag)
        else:
            a22_diag = np.diagonal(self.A22)
            off = np.count_nonzero(self.A22) - np.count_nonzero(a22_diag)
        pairs["a22_diag"] = np.array(a22_diag, dtype=float) if off == 0 else None
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
            if "buf" not in ps:  # handed to `update` (see `_release_profile_buffer`)
                ps["buf"] = np.zeros((self.q2 + self.p + 1, self.q2 + self.p + 1))
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
