"""Kenward–Roger: pbkrtest's adjusted covariance of β̂ and its df (lmerTest's ddf="Kenward-Roger").

pbkrtest (`vcovAdj`, `Lb_ddf`, `KRmodcomp`) writes the marginal covariance as a linear
combination Σ = Σ_r γ_r G_r of the random-effect covariance elements (G_r = Z (I_ℓ ⊗ E_r) Z',
E_r the element's indicator, symmetric for covariances) and σ² I, and builds every piece
from dense n × n matrices. The pieces are all of the form X'M G_r M G_s M X and tr(M G_r M G_s)
with M = Σ⁻¹ = N/σ², N = (I + ZΛΛ'Z')⁻¹; with A = Z'Z, C = Z'X, S = (I + Λ'AΛ)⁻¹ and
F = I − AΛSΛ' (so Z'N = F Z'):

    Z'N Z = F A,   Z'N X = F C,   Z'N² Z = F² A,   Z'N² X = F² C,
    X'N^k X = X'N^(k−1) X − C'ΛSΛ' F^(k−1) C,     tr N² = n − 2 tr(SK) + tr(SKSK), K = Λ'AΛ.

Nothing is n × n: the general path is dense in q (the random effects; limited to
`MAX_DENSE_Q`), the `(1|g)` path has F, A, S diagonal and works on group sums in O(G p²).

The adjustment itself (P_r, Q_rs, the expected information, W = 2 IE⁻¹, Φ_A = Φ + 2ΦUΦ) and
the df / F scaling follow Kenward & Roger (1997) as pbkrtest implements them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mixbridge.errors import ArgumentError

MAX_DENSE_Q = 4000  # q×q dense algebra beyond: memory (q² doubles, several copies) and O(q³) time


@dataclass(frozen=True)
class KRPieces:
    """P_r (p×p), Q_rs (r ≤ s) and tr(M G_r M G_s) for the parameters (residual last)."""

    P: list[np.ndarray]
    Q: dict[tuple[int, int], np.ndarray]
    Ktrace: np.ndarray


@dataclass(frozen=True)
class KenwardRoger:
    """Φ = vcov(β̂), Φ_A (pbkrtest's vcovAdj) with its P and W, and β̂."""

    beta: np.ndarray
    phi: np.ndarray
    phi_adj: np.ndarray
    P: list[np.ndarray]
    W: np.ndarray

    def _a1_a2(self, L: np.ndarray) -> tuple[float, float]:  # noqa: N803
        theta_m = L.T @ np.linalg.solve(L @ self.phi @ L.T, L)
        tp = theta_m @ self.phi
        u = [tp @ P @ self.phi for P in self.P]
        a1 = a2 = 0.0
        k = len(u)
        for i in range(k):
            for j in range(i, k):
                e = 1.0 if i == j else 2.0
                a1 += e * self.W[i, j] * np.trace(u[i]) * np.trace(u[j])
                a2 += e * self.W[i, j] * float(np.sum(u[i] * u[j].T))
        return a1, a2

    def _ddf(self, L: np.ndarray, q: float) -> tuple[float, float]:  # noqa: N803
        """(df, F scaling) of Lβ (pbkrtest's Lb_ddf / .KR_adjust)."""
        a1, a2 = self._a1_a2(L)
        b = (a1 + 6.0 * a2) / (2.0 * q)
        g = ((q + 1.0) * a1 - (q + 4.0) * a2) / ((q + 2.0) * a2)
        den = 3.0 * q + 2.0 * (1.0 - g)
        c1, c2, c3 = g / den, (q - g) / den, (q + 2.0 - g) / den
        v0 = 1.0 + c1 * b
        v0 = 0.0 if abs(v0) < 1e-10 else v0
        v1, v2 = 1.0 - c2 * b, 1.0 - c3 * b
        rho = ((1.0 - a2 / q) / v1) ** 2 * v0 / (q * v2)
        df2 = 4.0 + (q + 2.0) / (q * rho - 1.0)
        scaling = 1.0 if abs(df2 - 2.0) < 1e-2 else df2 * (1.0 - a2 / q) / (df2 - 2.0)
        return df2, scaling

    def test_1d(self, L: np.ndarray) -> tuple[float, float, float]:  # noqa: N803
        """(estimate, adjusted std. error, df) of l'β (lmerTest's contest1D with KR)."""
        L = np.asarray(L, dtype=float).ravel()  # noqa: N806
        var = float(L @ self.phi_adj @ L)
        df, _ = self._ddf(L[None, :], 1.0)
        return float(L @ self.beta), math.sqrt(var), df

    def test_md(self, L: np.ndarray) -> tuple[float, int, float, float]:  # noqa: N803
        """(F value (scaled), numerator df, df, unscaled F) of Lβ = 0 (KRmodcomp)."""
        L = np.atleast_2d(np.asarray(L, dtype=float))  # noqa: N806
        q = int(np.linalg.matrix_rank(L))
        df, scaling = self._ddf(L, float(q))
        lb = L @ self.beta
        wald = float(lb @ np.linalg.solve(L @ self.phi_adj @ L.T, lb))
        f_u = wald / q
        return f_u * scaling, q, df, f_u


def adjust(pieces: KRPieces, phi: np.ndarray, beta: np.ndarray) -> KenwardRoger:
    """pbkrtest's vcovAdj from the pieces: the expected information, W and Φ_A."""
    P, Q, K = pieces.P, pieces.Q, pieces.Ktrace  # noqa: N806
    k = len(P)
    ie2 = np.empty((k, k))
    for i in range(k):
        phi_p = phi @ P[i]
        for j in range(i, k):
            ie2[i, j] = ie2[j, i] = (
                K[i, j] - 2.0 * float(np.sum(phi * Q[i, j])) + float(np.sum(phi_p * (P[j] @ phi)))
            )
    condi = float(np.min(np.abs(np.linalg.eigvalsh(ie2))))
    W = 2.0 * (np.linalg.inv(ie2) if condi > 1e-10 else np.linalg.pinv(ie2))  # noqa: N806
    W = (W + W.T) / 2.0  # noqa: N806
    U = np.zeros_like(phi)  # noqa: N806
    for i in range(k - 1):
        for j in range(i + 1, k):
            U += W[i, j] * (Q[i, j] - P[i] @ phi @ P[j])
    U = U + U.T  # noqa: N806
    for i in range(k):
        U += W[i, i] * (Q[i, i] - P[i] @ phi @ P[i])
    phi_adj = phi + 2.0 * phi @ U @ phi
    return KenwardRoger(np.asarray(beta, float), phi, phi_adj, list(P), W)


def _b_times(s: tuple[np.ndarray, np.ndarray], Y: np.ndarray) -> np.ndarray:  # noqa: N803
    """B_s Y for B_s = Σ e_c e_d' over the pairs (c, d) of the element's indicator."""
    c, d = s
    out = np.zeros_like(Y)
    np.add.at(out, c, Y[d])
    return out


# ---------------------------------------------------------------------------------------------
# General random effects: dense in q


def general_pieces(devfun: Any, theta: np.ndarray, sigma: float) -> KRPieces:
    """The KR pieces of an lmer model with any random effects (LmerDevfun's core)."""
    pred = devfun.pred
    if pred.q > MAX_DENSE_Q:
        raise ArgumentError(
            f"Kenward-Roger needs dense q x q matrices for this random-effects structure: q = "
            f"{pred.q} random effects exceeds the limit {MAX_DENSE_Q} (one (1|g) term has no "
            "limit; use ddf='satterthwaite' here)",
            "ddf",
        )
    w = np.asarray(pred.prior_w, float)
    if not np.all(w == 1.0):
        raise ArgumentError(
            "Kenward-Roger (pbkrtest) is defined for unweighted lmer fits only", "ddf"
        )
    Z, X = pred.Z, np.asarray(pred.X, float)  # noqa: N806
    lam = pred.lambda_matrix(np.asarray(theta, float)).toarray()
    A = (Z.T @ Z).toarray()  # noqa: N806
    C = np.asarray(Z.T @ X)  # noqa: N806
    K = lam.T @ A @ lam  # noqa: N806
    S = np.linalg.inv(np.eye(pred.q) + K)  # noqa: N806
    lsl = lam @ S @ lam.T
    F = np.eye(pred.q) - A @ lsl  # noqa: N806
    FC = F @ C  # noqa: N806
    F2C = F @ FC  # noqa: N806
    H = C.T @ lsl  # noqa: N806 - X'N = X' − H Z'
    xnx = X.T @ X - H @ C
    xn2x = xnx - H @ FC
    xn3x = xn2x - H @ F2C
    FA = F @ A  # noqa: N806
    F2A = F @ FA  # noqa: N806
    SK = S @ K  # noqa: N806
    tr_n2 = pred.n - 2.0 * np.trace(SK) + float(np.sum(SK * SK.T))
    s2 = sigma * sigma
    zmz = (FA + FA.T) / (2.0 * s2)
    zm2z = (F2A + F2A.T) / (2.0 * s2 * s2)
    params = _element_indices(pred)

    def bform(U: np.ndarray, r: tuple[np.ndarray, np.ndarray], V: np.ndarray) -> np.ndarray:  # noqa: N803
        c, d = r
        return U[c].T @ V[d]

    def btrace2(r: Any, s: Any) -> float:
        (c, d), (e, f) = r, s
        return float(np.sum(zmz[np.ix_(d, e)] * zmz[np.ix_(f, c)].T))

    def btrace1(r: Any) -> float:
        c, d = r
        return float(np.sum(zm2z[d, c]))

    xmz = (FC / s2).T
    R = len(params)  # noqa: N806
    zmx = xmz.T
    P = [-bform(zmx, r, zmx) for r in params] + [-xn2x / (s2 * s2)]  # noqa: N806
    Q: dict[tuple[int, int], np.ndarray] = {}
    Kt = np.empty((R + 1, R + 1))  # noqa: N806
    for i, r in enumerate(params):
        left = bform(zmx, r, zmz)  # X'MZ B_r Z'MZ  (p × q)
        for j in range(i, R):
            Q[i, j] = left @ _b_times(params[j], zmx)
            Kt[i, j] = Kt[j, i] = btrace2(r, params[j])
        Q[i, R] = bform(zmx, r, F2C / (s2 * s2))
        Kt[i, R] = Kt[R, i] = btrace1(r)
    Q[R, R] = xn3x / s2**3
    Kt[R, R] = tr_n2 / (s2 * s2)
    return KRPieces(P, Q, Kt)


def _element_indices(pred: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """For every covariance element (i, j) of every term (pbkrtest's ggamma order), the index
    pairs (c, d) of I_ℓ ⊗ E_ij: B = Σ e_c e_d' (both (i, j) and (j, i) for a covariance)."""
    out = []
    for k in range(len(pred.reterms)):
        pk, nl, g0 = pred.pk[k], pred.nlev[k], int(pred.gp[k])
        base = g0 + np.arange(nl) * pk
        for j in range(pk):
            for i in range(j, pk):  # lower triangle, column-major
                ci, cj = base + i, base + j
                if i == j:
                    out.append((ci, ci))
                else:
                    out.append((np.concatenate([ci, cj]), np.concatenate([cj, ci])))
    return out


def general_builder(devfun: Any) -> Callable[[Any], KenwardRoger]:
    """The KR builder for the general path: called with the fit (θ, σ, β, vcov)."""

    def build(fit: Any) -> KenwardRoger:
        pieces = general_pieces(devfun, fit.theta, fit.sigma)
        return adjust(pieces, fit.vcov.to_numpy(float), fit.fixef.to_numpy(float))

    return build


# ---------------------------------------------------------------------------------------------
# One (1|g): everything per group


def scalar_pieces(stats: Any, theta: float, sigma: float) -> KRPieces:
    """The KR pieces of `y ~ X + (1|g)` from the group sums (GroupStats), O(G p²)."""
    s = np.asarray(stats.s, float)
    SX = np.asarray(stats.SX, float)  # noqa: N806 - shifted X's group sums
    XtX = np.asarray(stats.XtX, float)  # noqa: N806
    p = XtX.shape[0]
    Tm = np.eye(p)  # noqa: N806 - X = X_shifted · Tm (undo the provisional shift)
    if stats.intercept is not None:
        S = np.eye(p)  # noqa: N806
        S[stats.intercept, :] -= stats.x_shift
        Tm = np.linalg.inv(S)  # noqa: N806
    t2 = float(theta) ** 2
    f = 1.0 / (1.0 + t2 * s)  # F = diag(f)
    h = t2 * f  # ΛSΛ' = diag(h)
    s2 = sigma * sigma

    def xdx(d: np.ndarray) -> np.ndarray:
        m = SX.T @ (d[:, None] * SX)
        return Tm.T @ m @ Tm

    xnx = Tm.T @ XtX @ Tm - xdx(h)
    xn2x = xnx - xdx(h * f)
    xn3x = xn2x - xdx(h * f * f)
    ts = t2 * s * f  # diag(SK)
    tr_n2 = stats.n - 2.0 * float(np.sum(ts)) + float(np.sum(ts * ts))
    P = [-xdx(f * f) / s2**2, -xn2x / s2**2]  # noqa: N806
    Q = {  # noqa: N806
        (0, 0): xdx(f * (f * s) * f) / s2**3,
        (0, 1): xdx(f * f * f) / s2**3,
        (1, 1): xn3x / s2**3,
    }
    Kt = np.empty((2, 2))  # noqa: N806
    Kt[0, 0] = float(np.sum((f * s) ** 2)) / s2**2
    Kt[0, 1] = Kt[1, 0] = float(np.sum(f * f * s)) / s2**2
    Kt[1, 1] = tr_n2 / s2**2
    return KRPieces(P, Q, Kt)


def scalar_builder(stats: Any, weighted: bool) -> Callable[[Any], KenwardRoger]:
    def build(fit: Any) -> KenwardRoger:
        if weighted:
            raise ArgumentError(
                "Kenward-Roger (pbkrtest) is defined for unweighted lmer fits only", "ddf"
            )
        pieces = scalar_pieces(stats, float(np.ravel(fit.theta)[0]), fit.sigma)
        return adjust(pieces, fit.vcov.to_numpy(float), fit.fixef.to_numpy(float))

    return build
