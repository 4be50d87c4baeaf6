"""Penalized iteratively reweighted least squares (PIRLS) for glmer, as lme4 runs it.

Pipeline piece: (θ, linear-predictor start, offset) -> PIRLS -> conditional modes ũ (and β in the
joint stage) -> Laplace deviance. The linear algebra lives in a *predictor* object with the
interface of `mixbridge.python_impl.predictor.Predictor`:

    pred.update(theta, sqrt_w)   factorize Λ'Z'WZΛ + I (and R_ZX, R_X) for working weights
    pred.solve(z) -> (beta, u)   joint PLS solution for the working response z
    pred.solve_u(z) -> u         u alone (the offset already holds Xβ)
    pred.ldL2                    log|L|² of the last factorization
    pred.Zb(u), pred.Xb(beta)    ZΛu and Xβ

`ScalarPredictor` below implements the same interface for a model whose random part is a single
scalar term such as `(1|g)`: then L is diagonal, every step separates across groups and is done
with `np.bincount` in O(n + G), with no q×q system at all.

lme4 details reproduced exactly (spec §3.2; src/external.cpp `pwrssUpdate`,
`internal_glmerWrkIter`):
* the working weights and the working response come from the current μ (not stored weights);
* the convergence test |pdev_old − pdev|/pdev < tolPwrss comes *before* step halving;
* step halving averages the new and previous (u, β) up to 20 times;
* the Laplace deviance uses log|L|² from the factorization made at the *start* of the last
  iteration (the weights of the previous μ), ‖ũ‖² and the family's aic at the final μ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special

from mixbridge.errors import ConvergenceError

DBL_MAX = float(np.finfo(float).max)
MAX_STEP_HALVINGS = 20


# ---------------------------------------------------------------------------------------------
# The response: y, prior weights, trials, offset and the family


EPS = float(np.finfo(float).eps)


def _clamp01(p: np.ndarray) -> np.ndarray:
    return np.clip(p, EPS, 1.0 - EPS)


# lme4 evaluates the common links in C++ (src/glmFamily.cpp) with its own clamps, which differ
# from stats::family's (e.g. logit: μ in [ε, 1−ε] instead of |η| ≤ 30). PIRLS paths on separated
# data depend on them, so glmer uses these; everything else comes from families.py.
_LME4_LINKS: dict[str, tuple[Any, Any]] = {
    "logit": (
        lambda eta: _clamp01(special.expit(eta)),
        lambda eta: np.maximum(EPS, special.expit(eta) * special.expit(-eta)),
    ),
    "probit": (
        lambda eta: np.minimum(1.0 - EPS, special.ndtr(eta)),
        lambda eta: np.exp(-0.5 * eta * eta) / np.sqrt(2.0 * np.pi),
    ),
    "cloglog": (
        lambda eta: _clamp01(-np.expm1(-np.exp(eta))),
        lambda eta: np.maximum(EPS, np.exp(eta - np.exp(eta))),
    ),
    "log": (
        lambda eta: np.maximum(EPS, np.exp(eta)),
        lambda eta: np.maximum(EPS, np.exp(eta)),
    ),
}


@dataclass
class GlmResponse:
    """lme4's `glmResp`: the response side of PIRLS (family, y, prior weights, trials, offset).

    `family` is a `mixbridge.python_impl.families.Family` (its name, link and linkfun are used);
    the inverse link, μ'(η) and V(μ) follow lme4's C++ clamps. `n_trials` is the binomial number
    of trials per row (cbind: s+f; 1 otherwise), used by the aic and by simulate.

    Deviance residuals and the aic are split into a part that depends only on the data
    (precomputed once: y log y terms, log-factorials) and a part in log μ — each PIRLS step then
    costs one or two log passes over the data instead of six.
    """

    family: Any
    y: np.ndarray
    weights: np.ndarray
    offset: np.ndarray
    n_trials: np.ndarray

    def __post_init__(self) -> None:
        self.family_name = self.family.family
        self.link = self.family.link
        self._linkinv, self._mu_eta = _LME4_LINKS[self.link]
        y, w = self.y, self.weights
        self.unit_weights = bool(np.all(w == 1.0))
        if (
            self.family_name == "binomial"
            and self.unit_weights
            and not np.any(self.n_trials > 1)
            and bool(np.all((y == 0.0) | (y == 1.0)))
        ):
            # 0/1 response, unit weights (the common big-data case): every data-only term below
            # is exactly zero (y log y = 0, log choose(1, y) = 0), so skip six O(n) passes
            self._bernoulli = True
            self._dev_const = np.zeros_like(y)
            self._aic_k, self._aic_mk, self._aic_coef = y, 1.0 - y, np.ones_like(y)
            self._aic_const = 0.0
            self.aic_minus_dev = 0.0
            return
        if self.family_name == "binomial":
            self._bernoulli = bool(np.all((y == 0.0) | (y == 1.0)))
            self._dev_const = 2.0 * w * (special.xlogy(y, y) + special.xlogy(1.0 - y, 1.0 - y))
            m = self.n_trials if np.any(self.n_trials > 1) else w
            k = np.round(m * y)
            m = np.round(m)
            coef = np.where(m > 0, w / np.where(m > 0, m, 1.0), 0.0)
            self._aic_k, self._aic_mk, self._aic_coef = k, m - k, coef
            lchoose = special.gammaln(m + 1) - special.gammaln(k + 1) - special.gammaln(m - k + 1)
            self._aic_const = -2.0 * float(np.sum(coef * np.where(m > 0, lchoose, 0.0)))
            # with integer trials and successes aic(μ) − Σ dev(μ) does not depend on μ
            exact = bool(np.all(k == m * y) and np.all(coef * m == w))
        elif self.family_name == "poisson":
            self._dev_const = 2.0 * w * (special.xlogy(y, y) - y)
            self._aic_const = 2.0 * float(np.sum(w * special.gammaln(y + 1.0)))
            exact = True
        else:
            raise ValueError(f"glmer family {self.family_name!r} is not supported")
        # aic(μ) = Σ dev(μ) + aic(y) whenever the binomial counts are integers (always for
        # poisson): the Laplace value then reuses PIRLS's deviance instead of another log pass
        self.aic_minus_dev: float | None = self.aic(np.asarray(y, float)) if exact else None

    def linkinv(self, eta: np.ndarray) -> np.ndarray:
        return self._linkinv(eta)

    def mu_eta(self, eta: np.ndarray, mu: np.ndarray | None = None) -> np.ndarray:
        if mu is not None and self.link == "logit":
            # dlogis(η) = μ(1 − μ); with lme4's clamps both sides floor at ε
            return np.maximum(EPS, mu * (1.0 - mu))
        if mu is not None and self.link == "log":
            return mu  # max(ε, exp(η)) is exactly lme4's μ
        return self._mu_eta(eta)

    def variance(self, mu: np.ndarray) -> np.ndarray:
        if self.family_name == "binomial":
            return np.maximum(EPS, mu * (1.0 - mu))
        return mu

    def working(
        self, eta: np.ndarray, mu: np.ndarray, offset: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """√W_i = μ'(η_i)·√(w_i/V(μ_i)) (lme4's sqrtWrkWt) and the working response
        z = (η − offset) + (y − μ)/μ'(η) (lme4's wrkResp)."""
        me = self.mu_eta(eta, mu)
        if (self.family_name, self.link) in CANONICAL:
            # canonical link: μ'(η) = V(μ) (same clamps), so μ'·√(w/V) = √(w·μ')
            sqrt_w = np.sqrt(me if self.unit_weights else self.weights * me)
        else:
            sqrt_w = me * np.sqrt(self.weights / self.variance(mu))
        return sqrt_w, (eta - offset) + (self.y - mu) / me

    def dev_resids(self, mu: np.ndarray) -> np.ndarray:
        """Deviance residuals (R's binomial/poisson dev.resids); μ may be (K, n) for AGQ."""
        w, y = self.weights, self.y
        if self.family_name == "binomial":
            if self._bernoulli:
                return -2.0 * w * np.log(np.where(y > 0.5, mu, 1.0 - mu))
            return self._dev_const - 2.0 * w * (
                special.xlogy(y, mu) + special.xlogy(1.0 - y, 1.0 - mu)
            )
        return self._dev_const - 2.0 * w * (special.xlogy(y, mu) - mu)

    def aic(self, mu: np.ndarray) -> float:
        """−2 Σ log p(y_i | μ_i) with lme4's conventions (spec §3.6, src/glmFamily.cpp):
        binomial −2 Σ (w/m)·log dbinom(round(m·y), m, μ), m = round(n if any n > 1 else w)
        (rows with m ≤ 0 count 0); poisson −2 Σ w·log dpois(y, μ), with the continuous
        (lgamma) extension for non-integer counts, where R gives −∞ (the engine warns)."""
        if self.family_name == "binomial":
            ll = special.xlogy(self._aic_k, mu) + special.xlogy(self._aic_mk, 1.0 - mu)
            return self._aic_const - 2.0 * float(np.sum(self._aic_coef * ll))
        return self._aic_const - 2.0 * float(
            np.sum(self.weights * (special.xlogy(self.y, mu) - mu))
        )


def saturated_log_lik(resp: GlmResponse) -> float:
    """Σ log p(y_i | μ_i = y_i): the constant lme4 1.1 leaves out of its nAGQ > 1 deviance."""
    return -0.5 * resp.aic(np.asarray(resp.y, dtype=float))


# ---------------------------------------------------------------------------------------------
# The O(n) predictor for a single scalar random-effects term


class ScalarPredictor:
    """PLS for one scalar term (`(1|g)`, `(0 + x|g)`): Λ = θI, L = diag(√(1 + θ²s_j)).

    With working weights W_i and term values z_i (1 for an intercept), s_j = Σ_{i∈j} W_i z_i².
    Everything is a per-group sum (np.bincount), so memory and time are O(n·p + G·p) — no q×q
    matrix, no per-group Python loop.
    """

    def __init__(self, X: np.ndarray, codes: np.ndarray, n_levels: int, zvals: np.ndarray | None):
        self.X = np.asarray(X, dtype=float)
        self.codes = np.asarray(codes, dtype=np.intp)
        self.n_levels = int(n_levels)
        self.zvals = None if zvals is None else np.asarray(zvals, dtype=float)
        self.theta = 1.0
        self._w = np.ones(len(self.codes))
        self._d = np.ones(self.n_levels)
        self._rx: np.ndarray | None = None
        self._sx: np.ndarray | None = None

    def _gsum(self, v: np.ndarray) -> np.ndarray:
        return np.bincount(self.codes, weights=v, minlength=self.n_levels)

    def update(self, theta: np.ndarray | float, sqrt_w: np.ndarray) -> None:
        self.theta = float(np.asarray(theta, dtype=float).reshape(-1)[0])
        w = sqrt_w * sqrt_w
        self._w = w if self.zvals is None else w * self.zvals
        wz2 = w if self.zvals is None else w * self.zvals**2
        self._s = self._gsum(wz2)
        self._d = 1.0 + self.theta**2 * self._s
        self._rx = None  # R_X and SX are built lazily: the u-only stage never needs them
        self._sx = None
        self._wfull = w

    @property
    def ldL2(self) -> float:
        return float(np.sum(np.log1p(self.theta**2 * self._s)))

    @property
    def l_diag(self) -> np.ndarray:
        """The diagonal of L (one entry per level)."""
        return np.sqrt(self._d)

    def _group_x(self) -> np.ndarray:
        if self._sx is None:
            wx = self.X * self._w[:, None]
            self._sx = np.column_stack([self._gsum(wx[:, k]) for k in range(self.X.shape[1])])
        return self._sx

    def _rx_matrix(self) -> np.ndarray:
        """R_X'R_X = X'WX − Σ_j ω_j SX_j SX_j' with ω_j = θ²/d_j (spec §2.2)."""
        if self._rx is None:
            sx = self._group_x()
            omega = self.theta**2 / self._d
            xtwx = (self.X * self._wfull[:, None]).T @ self.X
            self._rx = xtwx - sx.T @ (sx * omega[:, None])
        return self._rx

    def solve_u(self, z: np.ndarray) -> np.ndarray:
        return self.theta * self._gsum(self._w * z) / self._d

    def solve(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sz = self._gsum(self._w * z)
        sx = self._group_x()
        omega = self.theta**2 / self._d
        rhs = (self.X * self._wfull[:, None]).T @ z - sx.T @ (omega * sz)
        beta = np.linalg.solve(self._rx_matrix(), rhs)
        u = self.theta * (sz - sx @ beta) / self._d
        return beta, u

    def rx_inverse(self) -> np.ndarray:
        return np.linalg.inv(self._rx_matrix())

    def b(self, u: np.ndarray) -> np.ndarray:
        return self.theta * u

    def Zb(self, u: np.ndarray) -> np.ndarray:
        bb = (self.theta * u)[self.codes]
        return bb if self.zvals is None else bb * self.zvals

    def Zb_many(self, u: np.ndarray) -> np.ndarray:
        """ZΛu for several u at once: u is (K, G), the result (K, n)."""
        bb = (self.theta * u)[:, self.codes]
        return bb if self.zvals is None else bb * self.zvals[None, :]

    def Xb(self, beta: np.ndarray) -> np.ndarray:
        return self.X @ beta

    def cond_var_scalar(self) -> np.ndarray:
        """Diagonal of Λ(LL')⁻¹Λ' (σ = 1): θ²/d_j, one per level."""
        return self.theta**2 / self._d


class ScalarTermsPredictor:
    """PLS for several scalar terms (crossed or nested `(1|a) + (1|b)`), q up to a few thousand.

    Blocked like MixedModels.jl: with the first (largest) term's q1 columns first,

        V = Λ'Z'WZΛ + I = [[D, B'], [B, C]],   D diagonal (one level of term 1 per row)
        L = [[√D, 0], [B√D⁻¹, L22]],            L22 L22' = C − B D⁻¹ B'   (dense, q2 × q2)

    Z'WZ blocks come from one np.bincount per pair of terms (each row has one non-zero per term),
    so an update costs O(n K² + q1 q2 + q2³) — VerbAgg has q2 = 24. Same interface as `Predictor`.
    """

    MAX_Q2 = 2500  # columns outside the first term (the dense Schur complement)

    def __init__(self, X: np.ndarray, reterms: list[Any]):
        self.X = np.asarray(X, dtype=float)
        self.reterms = list(reterms)
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


@dataclass
class PirlsState:
    """Where PIRLS stopped: modes, fixed effects, linear predictor, and the Laplace pieces."""

    u: np.ndarray
    beta: np.ndarray | None
    eta: np.ndarray
    mu: np.ndarray
    ldL2: float
    pdev: float
    iterations: int
    converged: bool = True

    def laplace(self, resp: GlmResponse) -> float:
        """lme4's Laplace deviance: log|L|² + ‖ũ‖² + aic(μ̃) (glmResp::Laplace)."""
        if resp.aic_minus_dev is not None:  # pdev = Σ dev(μ̃) + ‖ũ‖²
            return self.ldL2 + self.pdev + resp.aic_minus_dev
        return self.ldL2 + float(self.u @ self.u) + resp.aic(self.mu)

    def lin_pred(self, pred: Any) -> np.ndarray:
        """lme4's pp$linPred(1): Xβ + ZΛu (Xβ only in the joint stage)."""
        lp = pred.Zb(self.u)
        return lp if self.beta is None else lp + pred.Xb(self.beta)


def pirls(
    pred: Any,
    resp: GlmResponse,
    theta: np.ndarray,
    eta_start: np.ndarray,
    offset: np.ndarray,
    *,
    u_only: bool,
    tol: float = 1e-7,
    maxit: int = 100,
    strict: bool = True,
) -> PirlsState:
    """Run lme4's `pwrssUpdate` from the linear predictor `eta_start`.

    Joint stage (`u_only=False`, lme4's nAGQ = 0 / stage 1): (β, u) solved together and η =
    offset + Xβ + ZΛu. u-only stage (stage 2): `offset` already contains Xβ and η = offset + ZΛu.
    """
    eta = np.asarray(eta_start, dtype=float)
    mu = resp.linkinv(eta)
    oldpdev = DBL_MAX
    u_old: np.ndarray | None = None
    beta_old: np.ndarray | None = None
    u = np.zeros(0)
    beta: np.ndarray | None = None
    pdev = oldpdev
    converged = False
    it = 0
    for it in range(1, maxit + 1):  # noqa: B007 (it is reported)
        sqrt_w, z = resp.working(eta, mu, offset)
        pred.update(theta, sqrt_w)
        ldL2 = pred.ldL2  # from the weights at the start of this iteration (lme4's quirk)
        if u_only:
            u = pred.solve_u(z)
        else:
            beta, u = pred.solve(z)
        eta, mu, pdev = _update_mu(pred, resp, offset, u, beta)
        if abs((oldpdev - pdev) / pdev) < tol:
            converged = True
            break
        if np.isnan(pdev) or pdev > oldpdev:
            # step halving towards the previous iterate (lme4 averages delu/delb)
            for _ in range(MAX_STEP_HALVINGS):
                if not (np.isnan(pdev) or pdev > oldpdev):
                    break
                u = 0.5 * ((np.zeros_like(u) if u_old is None else u_old) + u)
                if not u_only and beta_old is not None:
                    beta = 0.5 * (beta_old + beta)
                eta, mu, pdev = _update_mu(pred, resp, offset, u, beta)
            if np.isnan(pdev):
                raise ConvergenceError("PIRLS loop resulted in NaN value")
            if pdev - oldpdev > tol:
                raise ConvergenceError(
                    "PIRLS step-halvings failed to reduce the penalized deviance"
                )
        oldpdev = pdev
        u_old, beta_old = u, beta
    if not converged and strict:
        raise ConvergenceError(f"PIRLS (pwrssUpdate) did not converge in {maxit} iterations")
    # not strict: lme4 would stop here; we hand back the last iterate, flagged, so that a fit on
    # separated data (estimates drifting to ±∞) can finish with a warning instead of an error
    return PirlsState(u, beta, eta, mu, ldL2, pdev, it, converged)


def _update_mu(
    pred: Any, resp: GlmResponse, offset: np.ndarray, u: np.ndarray, beta: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, float]:
    eta = offset + pred.Zb(u)
    if beta is not None:
        eta = eta + pred.Xb(beta)
    mu = resp.linkinv(eta)
    pdev = float(np.sum(resp.dev_resids(mu)) + u @ u)
    return eta, mu, pdev


# ---------------------------------------------------------------------------------------------
# Analytic gradient of the (converged) Laplace deviance for one scalar term, canonical links


CANONICAL = {("binomial", "logit"), ("poisson", "log")}


def scalar_laplace_gradient(
    pred: ScalarPredictor, resp: GlmResponse, state: PirlsState, theta: float
) -> tuple[float, np.ndarray]:
    """d/d(θ, β) of D = Σ_j log d_j + ‖ũ‖² + Σ_i dev_i at the conditional modes ũ(θ, β).

    For canonical links dev'' = 2W, so with S_j = Σ W_i z_i² and d_j = 1 + θ²S_j:
        dũ_j/dβ = −θ Σ_{i∈j} W_i z_i x_i / d_j,   dũ_j/dθ = −(Σ_{i∈j} z_i dev'_i + 2θS_jũ_j)/(2d_j)
    and, by the envelope theorem for the penalized deviance,
        ∂D = Σ_i dev'_i ∂η_i|_ũ + Σ_j [∂(θ²)S_j + θ² Σ_{i∈j} W'_i z_i² dη_i]/d_j.
    Everything is a per-group sum: one O(n·p) pass. Valid for the fully converged Laplace value
    (lme4's stopping quirk is not differentiated; it is O(1e-7) relative for large data).
    """
    codes, G = pred.codes, pred.n_levels
    X = pred.X
    z = np.ones(codes.size) if pred.zvals is None else pred.zvals
    mu, w = state.mu, resp.weights
    if resp.link == "logit":
        me = np.maximum(EPS, mu * (1.0 - mu))
        mee = me * (1.0 - 2.0 * mu)  # μ'' for the logit link
    else:  # poisson log
        me = mu
        mee = mu
    W = w * me  # canonical: w μ'²/V = w μ'
    dW = w * mee
    dev1 = -2.0 * w * (resp.y - mu)  # d dev / dη (canonical)
    u = state.u

    def gsum(v: np.ndarray) -> np.ndarray:
        return np.bincount(codes, weights=v, minlength=G)

    S = gsum(W * z * z)
    d = 1.0 + theta * theta * S
    sx = np.column_stack([gsum(W * z * X[:, k]) for k in range(X.shape[1])])
    du_db = -theta * sx / d[:, None]  # (G, p)
    du_dt = -(gsum(z * dev1) + 2.0 * theta * S * u) / (2.0 * d)  # (G,)
    a = theta * theta * dW * z * z / d[codes]  # weight of dη_i in Σ_j log d_j
    az = gsum(a * theta * z)  # Σ_{i∈j} a_i θ z_i
    # β: envelope part + log-det part
    g_beta = X.T @ dev1 + X.T @ a + du_db.T @ az
    # θ: envelope part (∂η/∂θ at fixed u is z u_j) + ∂log d/∂θ at fixed W + W through η
    g_theta = float(
        np.sum(dev1 * z * u[codes])
        + np.sum(2.0 * theta * S / d)
        + np.sum(a * z * u[codes])
        + np.sum(az * du_dt)
    )
    return g_theta, g_beta


# ---------------------------------------------------------------------------------------------
# Fused u-only PIRLS and gradient for one scalar intercept term with a canonical link


# |η| bound under which lme4's clamps (μ in [ε, 1−ε] for logit, μ ≥ ε for log) are inactive, so
# the closed forms below are lme4's quantities exactly (up to rounding)
ETA_BOUND = 30.0


class _OutOfRange(Exception):
    """A linear predictor left |η| ≤ ETA_BOUND: the caller falls back to the generic PIRLS."""


class ScalarCanonicalKernel:
    """lme4's u-only PIRLS for `(1|g)` with the logit or log link, one fused pass per iteration.

    With a canonical link μ'(η) = V(μ), so the working weight is W = w·μ' (w·μ(1−μ) or w·μ) and
    the PLS right-hand side needs no working response: with η = o + b[g] (b = θu),
        Σ_{i∈j} W_i z_i = b_j S_j + Σ_{i∈j} w_i (y_i − μ_i),     S_j = Σ_{i∈j} W_i,
    and the deviance is a closed form in η and log μ (logit) or μ (log):
        logit: dev_i = c_i − 2 w_i log μ_i + 2 w_i (1 − y_i) η_i,
        log:   dev_i = c_i + 2 w_i (μ_i − y_i η_i)
    (c_i = the data-only part). Per iteration: one gather, one exp (+ one log for logit), two
    bincounts and a few dot products, instead of ~20 elementwise passes. The control flow
    (convergence test before step halving, halving towards the previous u, log|L|² from the
    weights at the start of the last iteration) is `pirls`'s, i.e. lme4's `pwrssUpdate`.
    """

    def __init__(self, pred: ScalarPredictor, resp: GlmResponse) -> None:
        if pred.zvals is not None or (resp.family_name, resp.link) not in CANONICAL:
            raise ValueError("ScalarCanonicalKernel needs (1|g) with a canonical link")
        self.pred, self.resp = pred, resp
        self.codes, self.G = pred.codes, pred.n_levels
        # rows already ordered by group (glmm orders big models so): segment sums and repeats
        counts = np.bincount(self.codes, minlength=self.G)
        self.counts = counts
        self.segmented = bool(
            self.codes.size > 1 and np.all(counts > 0) and np.all(self.codes[1:] >= self.codes[:-1])
        )
        self.starts = np.concatenate([[0], np.cumsum(counts)[:-1]]) if self.segmented else None
        self.logit = resp.link == "logit"
        w, y = resp.weights, resp.y
        self.unit = resp.unit_weights
        self.w = None if self.unit else w
        self.sy = self.gsum(w * y)  # Σ_j w y
        # η-coefficient of the deviance: logit 2w(1 − y), log −2wy
        self.eta_coef = 2.0 * w * (1.0 - y) if self.logit else -2.0 * w * y
        self.n1 = self.gsum(w * (1.0 - y)) if self.logit else None  # Σ_j w (1 − y)
        self.dev_const = float(np.sum(resp._dev_const))
        self.ones_cols = [bool(np.all(pred.X[:, k] == 1.0)) for k in range(pred.X.shape[1])]
        self._tmp = np.empty(codes_len := self.codes.size)
        self._tmp2 = np.empty(codes_len)

    def gsum(self, v: np.ndarray) -> np.ndarray:
        """Σ_{i∈j} v_i for every group j."""
        if self.segmented:
            return np.add.reduceat(v, self.starts)
        return np.bincount(self.codes, weights=v, minlength=self.G)

    def expand(self, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """b[g_i] for every row i."""
        if self.segmented:
            r = np.repeat(b, self.counts)
            if out is None:
                return r
            out[:] = r
            return out
        return np.take(b, self.codes, out=out)

    # -- one pass: η, μ, Σ dev from the group effects b --
    def _mu(self, eta: np.ndarray, mu: np.ndarray) -> None:
        if self.logit:
            special.expit(eta, out=mu)
        else:
            np.exp(eta, out=mu)

    def _dev(self, eta: np.ndarray, mu: np.ndarray) -> float:
        if self.logit:
            lm = np.log(mu, out=self._tmp)
            s = float(lm.sum()) if self.unit else float(self.w @ lm)
            return self.dev_const - 2.0 * s + float(self.eta_coef @ eta)
        s = float(mu.sum()) if self.unit else float(self.w @ mu)
        return self.dev_const + 2.0 * s + float(self.eta_coef @ eta)

    def _update(
        self, b: np.ndarray, offset: np.ndarray, off_max: float, eta: np.ndarray, mu: np.ndarray
    ) -> float:
        if off_max + float(np.max(np.abs(b), initial=0.0)) > ETA_BOUND:
            raise _OutOfRange
        if self.segmented:
            np.add(np.repeat(b, self.counts), offset, out=eta)
        else:
            np.take(b, self.codes, out=eta)
            eta += offset
        self._mu(eta, mu)
        return self._dev(eta, mu)

    def _weights(self, mu: np.ndarray) -> np.ndarray:
        W = self._tmp2
        if self.logit:
            np.multiply(mu, mu, out=W)
            np.subtract(mu, W, out=W)  # μ(1 − μ)
        else:
            W[:] = mu
        if not self.unit:
            W *= self.w
        return W

    def pirls_u(
        self,
        theta: float,
        offset: np.ndarray,
        *,
        eta_start: np.ndarray | None = None,
        b_start: np.ndarray | None = None,
        tol: float = 1e-7,
        maxit: int = 100,
        strict: bool = True,
    ) -> PirlsState | None:
        """u-only PIRLS from η = eta_start (any vector) or from η = offset + b_start[g].
        Returns None when η would leave the |η| ≤ ETA_BOUND region (use `pirls` then)."""
        try:
            return self._pirls_u(theta, offset, eta_start, b_start, tol, maxit, strict)
        except _OutOfRange:
            return None

    def _pirls_u(
        self,
        theta: float,
        offset: np.ndarray,
        eta_start: np.ndarray | None,
        b_start: np.ndarray | None,
        tol: float,
        maxit: int,
        strict: bool,
    ) -> PirlsState:
        th = float(theta)
        off_max = float(np.max(np.abs(offset)))
        n = self.codes.size
        eta, mu = np.empty(n), np.empty(n)
        b_cur: np.ndarray | None
        if b_start is not None:
            b_cur = np.asarray(b_start, dtype=float)
            self._update(b_cur, offset, off_max, eta, mu)
        else:
            eta[:] = eta_start
            if float(np.max(np.abs(eta))) > ETA_BOUND:
                raise _OutOfRange
            self._mu(eta, mu)
            b_cur = None
        self.pred.theta = th
        oldpdev = DBL_MAX
        u_old: np.ndarray | None = None
        u = np.zeros(self.G)
        pdev, ldL2, converged, it = oldpdev, 0.0, False, 0
        for it in range(1, maxit + 1):  # noqa: B007 (it is reported)
            W = self._weights(mu)
            S = self.gsum(W)
            swmu = self.gsum(mu if self.unit else self.w * mu)
            if b_cur is None:  # first iteration from an arbitrary η: Σ W (η − o) directly
                np.subtract(eta, offset, out=self._tmp)
                self._tmp *= W
                swz = self.gsum(self._tmp)
            else:
                swz = b_cur * S
            swz += self.sy - swmu
            d = 1.0 + th * th * S
            ldL2 = float(np.sum(np.log1p(th * th * S)))  # weights at the start (lme4's quirk)
            u = th * swz / d
            pdev = self._update(th * u, offset, off_max, eta, mu) + float(u @ u)
            if abs((oldpdev - pdev) / pdev) < tol:
                converged = True
                break
            if np.isnan(pdev) or pdev > oldpdev:
                for _ in range(MAX_STEP_HALVINGS):
                    if not (np.isnan(pdev) or pdev > oldpdev):
                        break
                    u = 0.5 * ((np.zeros_like(u) if u_old is None else u_old) + u)
                    pdev = self._update(th * u, offset, off_max, eta, mu) + float(u @ u)
                if np.isnan(pdev):
                    raise ConvergenceError("PIRLS loop resulted in NaN value")
                if pdev - oldpdev > tol:
                    raise ConvergenceError(
                        "PIRLS step-halvings failed to reduce the penalized deviance"
                    )
            oldpdev = pdev
            u_old = u
            b_cur = th * u
        if not converged and strict:
            raise ConvergenceError(f"PIRLS (pwrssUpdate) did not converge in {maxit} iterations")
        # the predictor holds this factorization (cond_var, AGQ's sd, ldL2), as after `pirls`
        self.pred._s, self.pred._d = S, d
        self.pred._rx = self.pred._sx = None
        self.pred._w = self.pred._wfull = W.copy()
        return PirlsState(u, None, eta, mu, ldL2, pdev, it, converged)

    def pirls_joint(
        self,
        theta: float,
        eta_start: np.ndarray,
        offset: np.ndarray,
        tol: float = 1e-7,
        maxit: int = 100,
    ) -> PirlsState | None:
        """lme4's joint (β, u) PIRLS (stage 1, the initial fit) in the same fused form, as
        `pirls(u_only=False, strict=False)`. None outside |η| ≤ ETA_BOUND."""
        try:
            return self._pirls_joint(float(theta), eta_start, offset, tol, maxit)
        except _OutOfRange:
            return None

    def _joint_update(
        self,
        th: float,
        u: np.ndarray,
        beta: np.ndarray,
        offset: np.ndarray,
        eta: np.ndarray,
        mu: np.ndarray,
    ) -> float:
        fixed = offset + self.pred.X @ beta
        off_max = float(np.max(np.abs(fixed)))
        return self._update(th * u, fixed, off_max, eta, mu) + float(u @ u)

    def _pirls_joint(
        self, th: float, eta_start: np.ndarray, offset: np.ndarray, tol: float, maxit: int
    ) -> PirlsState:
        pred, X = self.pred, self.pred.X
        eta = np.array(eta_start, dtype=float)
        if float(np.max(np.abs(eta))) > ETA_BOUND:
            raise _OutOfRange
        mu = np.empty_like(eta)
        self._mu(eta, mu)
        oldpdev = DBL_MAX
        u_old: np.ndarray | None = None
        beta_old: np.ndarray | None = None
        pdev, ldL2, converged, it = oldpdev, 0.0, False, 0
        u, beta = np.zeros(self.G), np.zeros(X.shape[1])
        for it in range(1, maxit + 1):  # noqa: B007 (it is reported)
            W = self._weights(mu).copy()
            # W z = W (η − o) + w (y − μ)
            wz = np.subtract(eta, offset, out=self._tmp)
            wz *= W
            wz += self.resp.y if self.unit else self.w * self.resp.y
            wz -= mu if self.unit else self.w * mu
            # the factorization of ScalarPredictor.update/solve, from one X·W product
            S = self.gsum(W)
            d = 1.0 + th * th * S
            XW = X * W[:, None]
            sx = np.column_stack(
                [S if one else self.gsum(XW[:, k]) for k, one in enumerate(self.ones_cols)]
            )
            omega = th * th / d
            rx = XW.T @ X - sx.T @ (sx * omega[:, None])
            pred.theta, pred._s, pred._d = th, S, d
            pred._w = pred._wfull = W
            pred._sx, pred._rx = sx, rx
            ldL2 = float(np.sum(np.log1p(th * th * S)))  # weights at the start (lme4's quirk)
            sz = self.gsum(wz)
            beta = np.linalg.solve(rx, X.T @ wz - sx.T @ (omega * sz))
            u = th * (sz - sx @ beta) / d
            pdev = self._joint_update(th, u, beta, offset, eta, mu)
            if abs((oldpdev - pdev) / pdev) < tol:
                converged = True
                break
            if np.isnan(pdev) or pdev > oldpdev:
                for _ in range(MAX_STEP_HALVINGS):
                    if not (np.isnan(pdev) or pdev > oldpdev):
                        break
                    u = 0.5 * ((np.zeros_like(u) if u_old is None else u_old) + u)
                    if beta_old is not None:
                        beta = 0.5 * (beta_old + beta)
                    pdev = self._joint_update(th, u, beta, offset, eta, mu)
                if np.isnan(pdev):
                    raise ConvergenceError("PIRLS loop resulted in NaN value")
                if pdev - oldpdev > tol:
                    raise ConvergenceError(
                        "PIRLS step-halvings failed to reduce the penalized deviance"
                    )
            oldpdev = pdev
            u_old, beta_old = u, beta
        # not converged: handed back flagged, as `pirls(strict=False)`
        return PirlsState(u, beta, eta, mu, ldL2, pdev, it, converged)

    def gradient(self, state: PirlsState, theta: float) -> tuple[float, np.ndarray]:
        """`scalar_laplace_gradient` for this model at `state` (z = 1), from group sums."""
        W = self._weights(state.mu)
        S = self.gsum(W)
        swmu = self.gsum(state.mu if self.unit else self.w * state.mu)
        return self._gradient_from(float(theta), W, S, swmu, state.mu, state.u)

    def _gradient_from(
        self,
        th: float,
        W: np.ndarray,
        S: np.ndarray,
        swmu: np.ndarray,
        mu: np.ndarray,
        u: np.ndarray,
    ) -> tuple[float, np.ndarray]:
        """The gradient from W = w μ', S = Σ_j W and Σ_j w μ at the modes: p + 1 more bincounts,
        one gather and one X'v product (see `scalar_laplace_gradient` for the formulas)."""
        X = self.pred.X
        d = 1.0 + th * th * S
        sdev1 = -2.0 * (self.sy - swmu)  # Σ_j dev'
        sx = np.column_stack(
            [S if one else self.gsum(W * X[:, k]) for k, one in enumerate(self.ones_cols)]
        )
        dW = W * (1.0 - 2.0 * mu) if self.logit else W  # w μ''
        sa = th * th * self.gsum(dW) / d  # Σ_{i∈j} a_i, a_i = θ² dW_i / d_j
        az = th * sa
        du_db = -th * sx / d[:, None]
        du_dt = -(sdev1 + 2.0 * th * S * u) / (2.0 * d)
        # per-row η-derivative weight: dev'_i + a_i
        v = self.expand(th * th / d)
        v *= dW
        v -= 2.0 * (self.resp.y - mu) * (1.0 if self.unit else self.w)
        g_beta = X.T @ v + du_db.T @ az
        g_theta = float(u @ sdev1 + np.sum(2.0 * th * S / d) + u @ sa + az @ du_dt)
        self.du_dx = np.column_stack([du_dt, du_db])  # dũ/d(θ, β): the next warm start
        return g_theta, g_beta

    def modes(
        self, theta: float, offset: np.ndarray, b_start: np.ndarray, tol: float, maxit: int = 50
    ) -> tuple[PirlsState, np.ndarray, np.ndarray, np.ndarray] | None:
        """Fully converged conditional modes at (θ, offset = o + Xβ), for the gradient phase:
        Newton steps in u from the warm start b_start = θu₀ until the penalized deviance changes
        by less than tol (relative) — the start's own pdev counts, so a good start needs one
        step. Returns the state (log|L|² at the final weights: the smooth function the
        gradients differentiate, not lme4's stopping quirk), W = wμ', S = Σ_j W and Σ_j wμ at
        the modes; None if η leaves |η| ≤ ETA_BOUND or a step fails to decrease pdev (the
        caller uses the lme4-style path instead)."""
        try:
            return self._modes(float(theta), offset, b_start, tol, maxit)
        except _OutOfRange:
            return None

    def _modes(
        self, th: float, offset: np.ndarray, b_start: np.ndarray, tol: float, maxit: int
    ) -> tuple[PirlsState, np.ndarray, np.ndarray, np.ndarray] | None:
        off_max = float(np.max(np.abs(offset)))
        n = self.codes.size
        eta, mu = np.empty(n), np.empty(n)
        b = np.asarray(b_start, dtype=float)
        u = b / th if th > 0 else np.zeros(self.G)
        pdev = self._update(b, offset, off_max, eta, mu) + float(u @ u)
        it, converged = 0, False
        while True:
            W = self._weights(mu)
            S = self.gsum(W)
            swmu = self.gsum(mu if self.unit else self.w * mu)
            if converged:
                break
            it += 1
            if it > maxit:
                return None
            d = 1.0 + th * th * S
            u_new = th * (b * S + self.sy - swmu) / d
            b_new = th * u_new
            pdev_new = self._update(b_new, offset, off_max, eta, mu) + float(u_new @ u_new)
            # not a Newton descent step (beyond rounding in the sums): far from the mode
            if not np.isfinite(pdev_new) or pdev_new > pdev + max(tol, 1e-11) * abs(pdev_new):
                return None
            converged = abs(pdev - pdev_new) < tol * abs(pdev_new)
            u, b, pdev = u_new, b_new, pdev_new
        ldL2 = float(np.sum(np.log1p(th * th * S)))
        return PirlsState(u, None, eta, mu, ldL2, pdev, it, True), W.copy(), S, swmu
