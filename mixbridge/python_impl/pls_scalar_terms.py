"""The PLS core for several scalar random-effects terms (crossed or nested `(1|a) + (1|b)`),
re-weighted cheaply at every PIRLS iteration (glmer; see `pls.select_core`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from mixbridge.formula.frames import ReTerm


class ScalarTermsCore:
    """PLS for several scalar terms (crossed or nested `(1|a) + (1|b)`), q up to a few thousand.

    Blocked like MixedModels.jl: with the first (largest) term's q1 columns first,

        V = Λ'Z'WZΛ + I = [[D, B'], [B, C]],   D diagonal (one level of term 1 per row)
        L = [[√D, 0], [B√D⁻¹, L22]],            L22 L22' = C − B D⁻¹ B'   (dense, q2 × q2)

    Z'WZ blocks come from one np.bincount per pair of terms (each row has one non-zero per term),
    so an update costs O(n K² + q1 q2 + q2³) — VerbAgg has q2 = 24. A `pls.PlsCore`.
    """

    MAX_Q2 = 2500  # columns outside the first term (the dense Schur complement)

    def __init__(self, X: np.ndarray, reterms: list[ReTerm]):
        self.X = np.asarray(X, dtype=float)
        self.n, self.p = self.X.shape
        self.reterms = list(reterms)
        self.n_theta = len(self.reterms)
        sizes = [int(t.n_levels) for t in self.reterms]
        self.gp = np.concatenate([[0], np.cumsum(sizes)]).astype(np.intp)
        self.q, self.q1 = int(self.gp[-1]), sizes[0]
        self.q2 = self.q - self.q1
        self.codes = [np.asarray(t.codes, dtype=np.intp) for t in self.reterms]
        # columns of the terms after the first, numbered within the q2 block
        self.cols2 = [c + self.gp[k] - self.q1 for k, c in enumerate(self.codes) if k > 0]
        zs = [np.asarray(t.Z, dtype=float)[:, 0] for t in self.reterms]
        self.zs = [None if np.all(z == 1.0) else z for z in zs]
        self.term_of_col = np.repeat(np.arange(len(sizes)), sizes)
        self.theta = np.ones(len(sizes))
        self._lam = np.ones(self.q)
        self._rx: np.ndarray | None = None

    def _zw(self, k: int, v: np.ndarray) -> np.ndarray:
        return v if self.zs[k] is None else v * self.zs[k]

    def _ztv(self, v: np.ndarray) -> np.ndarray:
        """Z'v (q,) for a row vector v."""
        out = np.empty(self.q)
        for k, c in enumerate(self.codes):
            lo, hi = self.gp[k], self.gp[k + 1]
            out[lo:hi] = np.bincount(c, weights=self._zw(k, v), minlength=hi - lo)
        return out

    def update(self, theta: np.ndarray, sqrt_w: np.ndarray) -> None:
        from scipy.linalg import cholesky

        self.theta = np.asarray(theta, dtype=float).reshape(-1)
        lam = self.theta[self.term_of_col]
        lam1, lam2 = lam[: self.q1], lam[self.q1 :]
        w = sqrt_w * sqrt_w
        q1, q2 = self.q1, self.q2
        w0 = self._zw(0, w)
        d = 1.0 + lam1**2 * np.bincount(self.codes[0], weights=self._zw(0, w0), minlength=q1)
        bmat = np.zeros((q2, q1))  # Z_rest'WZ_1, then scaled by Λ
        cmat = np.zeros((q2, q2))
        for k2, ck in enumerate(self.cols2, start=1):
            wk = self._zw(k2, w)
            bmat += np.bincount(
                ck * q1 + self.codes[0], weights=self._zw(0, wk), minlength=q2 * q1
            ).reshape(q2, q1)
            cmat[np.diag_indices(q2)] += np.bincount(ck, weights=self._zw(k2, wk), minlength=q2)
            for l2 in range(k2 + 1, len(self.codes)):
                cl = self.cols2[l2 - 1]
                blk = np.bincount(
                    ck * q2 + cl, weights=self._zw(l2, wk), minlength=q2 * q2
                ).reshape(q2, q2)
                cmat += blk + blk.T
        self._l11 = np.sqrt(d)
        self._l21 = (lam2[:, None] * bmat * lam1[None, :]) / self._l11[None, :]
        schur = lam2[:, None] * cmat * lam2[None, :] - self._l21 @ self._l21.T
        schur[np.diag_indices(q2)] += 1.0
        self._l22 = cholesky(schur, lower=True, check_finite=False)
        self._lam, self._w = lam, w
        self._rx = None

    @property
    def ldL2(self) -> float:
        return float(2.0 * (np.sum(np.log(self._l11)) + np.sum(np.log(np.diag(self._l22)))))

    def _lsolve(self, r: np.ndarray) -> np.ndarray:
        """L⁻¹ r for r of shape (q,) or (q, m)."""
        from scipy.linalg import solve_triangular

        r1, r2 = r[: self.q1], r[self.q1 :]
        x1 = r1 / (self._l11 if r.ndim == 1 else self._l11[:, None])
        x2 = solve_triangular(self._l22, r2 - self._l21 @ x1, lower=True, check_finite=False)
        return np.concatenate([x1, x2])

    def _ltsolve(self, x: np.ndarray) -> np.ndarray:
        """L'⁻¹ x for x of shape (q,)."""
        from scipy.linalg import solve_triangular

        y2 = solve_triangular(self._l22, x[self.q1 :], lower=True, trans="T", check_finite=False)
        y1 = (x[: self.q1] - self._l21.T @ y2) / self._l11
        return np.concatenate([y1, y2])

    def _decomp(self) -> tuple[np.ndarray, np.ndarray]:
        """R_ZX = L⁻¹Λ'Z'WX and R_X'R_X = X'WX − R_ZX'R_ZX (built when first needed)."""
        if self._rx is None:
            wx = self.X * self._w[:, None]
            ztwx = np.column_stack([self._ztv(wx[:, j]) for j in range(self.X.shape[1])])
            self._rzx = self._lsolve(self._lam[:, None] * ztwx)
            self._rx = self.X.T @ wx - self._rzx.T @ self._rzx
        return self._rzx, self._rx

    def solve_u(self, z: np.ndarray) -> np.ndarray:
        return self._ltsolve(self._lsolve(self._lam * self._ztv(self._w * z)))

    def solve(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rzx, rx = self._decomp()
        cu = self._lsolve(self._lam * self._ztv(self._w * z))
        beta = np.linalg.solve(rx, self.X.T @ (self._w * z) - rzx.T @ cu)
        return beta, self._ltsolve(cu - rzx @ beta)

    def rx_inverse(self) -> np.ndarray:
        return np.linalg.inv(self._decomp()[1])

    def b(self, u: np.ndarray) -> np.ndarray:
        return self._lam * u

    def Zb(self, u: np.ndarray) -> np.ndarray:
        b = self._lam * u
        out = np.zeros(self.X.shape[0])
        for k, c in enumerate(self.codes):
            out += self._zw(k, b[self.gp[k] + c])
        return out

    def Xb(self, beta: np.ndarray) -> np.ndarray:
        return self.X @ beta

    def lambda_blocks(self, theta: np.ndarray) -> list[np.ndarray]:
        return [np.array([[float(t)]]) for t in np.asarray(theta, dtype=float).reshape(-1)]

    def cond_var_by_factor(self, sigma: float) -> dict[str, np.ndarray]:
        """diag of σ²Λ(LL')⁻¹Λ' per term (terms on one factor side by side, block diagonal as
        lme4's condVar). diag((LL')⁻¹) = column sums of (L⁻¹)², L⁻¹ from the blocks."""
        from scipy.linalg import solve_triangular

        l22inv = solve_triangular(self._l22, np.eye(self.q2), lower=True, check_finite=False)
        m21 = -(l22inv @ self._l21) / self._l11[None, :]  # block (2,1) of L⁻¹
        d1 = 1.0 / self._l11**2 + np.sum(m21 * m21, axis=0)
        d2 = np.sum(l22inv * l22inv, axis=0)
        dv = sigma**2 * self._lam**2 * np.concatenate([d1, d2])
        out: dict[str, np.ndarray] = {}
        for g in dict.fromkeys(t.group for t in self.reterms):
            idx = [k for k, t in enumerate(self.reterms) if t.group == g]
            arr = np.zeros((self.reterms[idx[0]].n_levels, len(idx), len(idx)))
            for pos, k in enumerate(idx):
                arr[:, pos, pos] = dv[self.gp[k] : self.gp[k + 1]]
            out[g] = arr
        return out


# ---------------------------------------------------------------------------------------------
# PIRLS
