"""The dense solver: a Householder QR of the augmented least-squares problem, as arm's lm.fit."""

from __future__ import annotations

import numpy as np
import scipy.linalg.lapack as lapack

from mixbridge.errors import ConvergenceError
from mixbridge.python_impl.bayesglm.design import Design, Solution, column_scale

LINPACK_TOL = 1e-7  # lm.fit's rank tolerance


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
        return np.array([column_scale(self.X[:, j]) for j in range(self.p)])

    def set_leverage_rows(self, rows: np.ndarray) -> None:
        if not rows.all():
            Xr = self.X[rows]
            self._cross = Xr.T @ Xr
            self._lev_n = int(rows.sum())

    def solve(
        self,
        good: np.ndarray,
        w: np.ndarray,
        z: np.ndarray,
        a: np.ndarray,
        m: np.ndarray,
        prior_row0: np.ndarray | None,
    ) -> Solution:
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
        if np.any(np.abs(np.diag(Rp)) <= LINPACK_TOL * np.where(col_norms > 0, col_norms, 1.0)):
            raise ConvergenceError(
                "the augmented design is rank deficient (collinear columns with infinite prior "
                "scales): arm stops with 'non-finite coefficients'; give those columns a finite "
                "prior_scale"
            )
        Rp = np.asfortranarray(Rp)
        b, _ = lapack.dtrtrs(Rp, np.ascontiguousarray(R[:p, p]))
        Rinv, _ = lapack.dtrtri(Rp)
        Rinv = np.triu(Rinv)
        V = Rinv @ Rinv.T  # chol2inv(R), as summary.glm
        lev = float(np.sum(V * self._cross)) / self._lev_n
        return Solution(b, np.diag(V).copy(), lev, lambda scale=1.0: V * scale)
