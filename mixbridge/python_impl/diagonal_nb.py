"""glmer with one scalar intercept term `(1|g)` and MASS's negative.binomial(k) family (log
link, not canonical): lme4's PIRLS steps in fused group-level form, the fully converged
conditional modes and the analytic gradient of the Laplace deviance — the negative-binomial
counterpart of `diagonal_canonical` (same protocol: `pirls_u`, `pirls_joint`, `modes`,
`gradient`, `gradient_from`), so that glmer's Devfun and its gradient stage 2
(`glmer_gradient.optimize_stage2`) run on it unchanged. The group bookkeeping and the PIRLS steps
are `diagonal_kernel`'s; this module has the negative-binomial math.

With μ = exp(η) (lme4's clamp μ ≥ ε is inactive for |η| ≤ ETA_BOUND) and q_i = w_i k/(μ_i + k):
    Fisher weight (lme4 sqrtWrkWt²)  W_i = w_i μ'²/V = q_i μ_i,
    PLS right-hand side              Σ_{i∈j} W_i z_i = b_j S_j + R_j, R_j = Σ_{i∈j} q_i (y_i − μ_i),
    deviance (lme4 C++)              dev_i = c_i − 2 w_i y_i η_i + 2 w_i (y_i + k) log(μ_i + k),
so a PIRLS step is one gather, one exp, one log and two group sums, as in the canonical case.

The Laplace deviance uses the Fisher weights in log|L|² (lme4: d_j = 1 + θ²S_j), but the modes
minimize the penalized deviance, whose curvature is the observed one:
    dev'_i = −2 q_i (y_i − μ_i),   dev''_i / 2 = H_i = W_i (y_i + k)/(μ_i + k)  (> 0),
so `modes` takes Newton steps u ← θ(b H + R)/h, h_j = 1 + θ²Σ_{i∈j}H_i (quadratic convergence to
the same modes PIRLS converges to linearly), and the gradient of D = Σ log d_j + ‖ũ‖² + Σ dev_i
is, by the envelope theorem for the penalized deviance and implicit differentiation of its
stationarity condition (with prior weights the criterion's aic differs from Σ dev by a term
linear in η, whose total derivative is added),
    dũ_j/dβ = −θ Σ_{i∈j} H_i x_i / h_j,        dũ_j/dθ = −(Σ_{i∈j} dev'_i + 2θ H_j ũ_j)/(2 h_j),
    ∂D = Σ_i dev'_i ∂η_i|_ũ + Σ_j [∂(θ²) S_j + θ² Σ_{i∈j} W'_i dη_i] / d_j,  W'_i = W_i k/(μ_i + k).
Everything is a per-group sum: one O(n·p) pass.
"""

from __future__ import annotations

import numpy as np

from mixbridge.python_impl.diagonal_kernel import ETA_BOUND, DiagonalKernel, OutOfRange
from mixbridge.python_impl.pirls import PirlsState
from mixbridge.python_impl.pls_diagonal import DiagonalCore
from mixbridge.python_impl.response import GlmResponse

MAX_HALVINGS = 30  # of a Newton step in `modes`
TIGHT_MODES_TOL = 1e-12  # `gradient`'s modes: the converged deviance's tolerance (TIGHT_TOL)


def nb_kernel_applies(core: object, resp: GlmResponse) -> bool:
    """(1|g) (a diagonal core with no term values) and negative.binomial with the log link."""
    return (
        isinstance(core, DiagonalCore)
        and core.zvals is None
        and resp.family_name == "negative.binomial"
        and resp.link == "log"
    )


class NbKernel(DiagonalKernel[tuple[np.ndarray, ...]]):
    """The fused (1|g) negative-binomial computations for one (diagonal core, response) pair;
    see the module docstring."""

    def __init__(self, core: DiagonalCore, resp: GlmResponse) -> None:
        if not nb_kernel_applies(core, resp):
            raise ValueError("NbKernel needs (1|g) with the negative.binomial family, log link")
        super().__init__(core, resp)
        self.k = float(resp.nb_theta)
        w, y = np.asarray(resp.weights, dtype=float), np.asarray(resp.y, dtype=float)
        self.w = None if self.unit else w
        self.y = y
        self.wk = self.k * (1.0 if self.unit else w)  # w·k (a scalar with unit weights)
        self.eta_coef = -2.0 * (y if self.unit else w * y)  # η-coefficient of the deviance
        self.eta_coef_sums = self.gsum(self.eta_coef)
        self.ypk = y + self.k
        self.log_coef = 2.0 * (y + self.k) * (1.0 if self.unit else w)  # of log(μ + k)
        self.dev_const = float(np.sum(resp.dev_const))
        # η-coefficient of aic(μ) − Σ dev(μ) (nonzero with prior weights; see gradient_from)
        self.aic_eta = None if self.unit else 2.0 * (w - 1.0) * y
        self.aic_eta_sums = None if self.aic_eta is None else self.gsum(self.aic_eta)

    def mean(self, eta: np.ndarray, mu: np.ndarray) -> None:
        """μ = exp(η) in place."""
        np.exp(eta, out=mu)

    def deviance(self, eta: np.ndarray, mu: np.ndarray) -> float:
        """Σ dev: lme4's C++ deviance of the module docstring."""
        lg = np.add(mu, self.k, out=self.scratch)
        np.log(lg, out=lg)
        return self.dev_const + float(self.eta_coef @ eta) + float(self.log_coef @ lg)

    def q_weights(self, mu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(q, W): q = w k/(μ + k) and the Fisher working weight W = q μ."""
        q = np.add(mu, self.k)
        np.divide(self.wk, q, out=q)
        return q, q * mu

    def pirls_sums(self, mu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(W, R_j = Σ_{i∈j} q_i (y_i − μ_i)), W z − W η = q (y − μ)."""
        q, W = self.q_weights(mu)
        q *= self.y - mu
        return W, self.gsum(q)

    def working_rhs(
        self, eta: np.ndarray, offset: np.ndarray, mu: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(W, W z) with W z = W (η − o) + q (y − μ)."""
        q, W = self.q_weights(mu)
        wz = np.subtract(eta, offset)
        wz *= W
        q *= self.y - mu
        wz += q
        return W, wz

    # -- the gradient phase: converged modes and the analytic gradient --
    def _sums(
        self, mu: np.ndarray, tm: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
        """W, S = Σ_j W and (H_i, Σ_j H, Σ_j q(y − μ), q(y − μ), μ + k) at μ (`tm`: μ + k when
        already computed)."""
        if tm is None:
            tm = mu + self.k
        q = np.divide(self.wk, tm)
        W = q * mu
        S = self.gsum(W)
        Hrow = W * self.ypk
        Hrow /= tm
        r = np.subtract(self.y, mu)
        r *= q
        return W, S, (Hrow, self.gsum(Hrow), self.gsum(r), r, tm)

    def gradient(self, state: PirlsState, theta: float) -> tuple[float, np.ndarray, np.ndarray]:
        """The gradient of the converged Laplace deviance and dũ/d(θ, β) (`gradient_from`) at
        the (θ, β) of `state`, an lme4-style PIRLS result: Fisher scoring converges linearly
        for this link, so its modes are first made exact by Newton steps from there (at
        PIRLS's own stopping point the gradient is not yet the converged deviance's: the
        gradient path's optimizer then wandered, 43 evaluations instead of 12 at 2e5 rows)."""
        th = float(theta)
        u = state.u
        if state.beta is None and th > 0:
            offset = state.eta - self.expand(th * u)
            r = self.modes(th, offset, th * u, TIGHT_MODES_TOL)
            if r is not None:
                st, W, S, extra = r
                return self.gradient_from(th, W, S, extra, st.mu, st.u)
        W, S, extra = self._sums(state.mu)
        return self.gradient_from(th, W, S, extra, state.mu, u)

    def gradient_from(
        self,
        th: float,
        W: np.ndarray,
        S: np.ndarray,
        extra: tuple[np.ndarray, ...],
        mu: np.ndarray,
        u: np.ndarray,
    ) -> tuple[float, np.ndarray, np.ndarray]:
        """(∂D/∂θ, ∂D/∂β, dũ/d(θ, β)) from the sums at the modes (module docstring); the last
        is the next evaluation's warm start."""
        Hrow, H, R, r, tm = extra
        X = self.core.X
        t2 = th * th
        d = 1.0 + t2 * S
        h = 1.0 + t2 * H
        sdev1 = -2.0 * R  # Σ_j dev'
        sxh = np.column_stack(
            [H if one else self.gsum(Hrow * X[:, c]) for c, one in enumerate(self.ones_cols)]
        )
        dW = W * self.k
        dW /= tm  # dW/dη
        sa = t2 * self.gsum(dW) / d  # Σ_{i∈j} a_i, a_i = θ² W'_i / d_j
        az = th * sa
        du_db = -th * sxh / h[:, None]
        du_dt = -(sdev1 + 2.0 * th * H * u) / (2.0 * h)
        # per-row η-derivative weight: dev'_i + a_i
        v = self.expand(t2 / d)
        v *= dW
        v -= 2.0 * r
        g_beta = X.T @ v + du_db.T @ az
        g_theta = float(u @ sdev1 + np.sum(2.0 * th * S / d) + u @ sa + az @ du_dt)
        if self.aic_eta is not None:
            # prior weights: lme4's aic weights only its log(μ + k) term, so the criterion's
            # aic(μ) − Σ dev(μ) = Σ 2(w − 1) y η + const, which the modes do not make
            # stationary: its total derivative through η = o + Xβ + θũ
            c = self.aic_eta
            C = self.aic_eta_sums
            g_beta = g_beta + X.T @ c + th * (du_db.T @ C)
            g_theta += float(u @ C + th * (C @ du_dt))
        return g_theta, g_beta, np.column_stack([du_dt, du_db])

    def _modes(
        self, th: float, offset: np.ndarray, b_start: np.ndarray, tol: float, maxit: int
    ) -> tuple[PirlsState, np.ndarray, np.ndarray, tuple[np.ndarray, ...]] | None:
        """`modes` for negative.binomial: Newton steps on the observed curvature H with step
        halving (Fisher scoring converges only linearly here); the sums are `_sums`'."""
        off_max = float(np.max(np.abs(offset)))
        b = np.asarray(b_start, dtype=float)
        if th <= 0 or off_max + float(np.max(np.abs(b), initial=0.0)) > ETA_BOUND:
            # a far extrapolated start (e.g. from θ = 0, where ũ = 0 but dũ/dθ is not): the
            # penalized deviance is convex in u, so start from u = 0
            b = np.zeros(self.G)
        # at a fixed offset μ = exp(o)·exp(b)[g] and Σ η-terms = const + b·Σ_j: one exp over
        # the rows per call, not per step
        e_off = np.exp(offset)
        c_off = float(self.eta_coef @ offset)
        n = self.codes.size
        mu, tm, lg = np.empty(n), np.empty(n), np.empty(n)

        def move(bb: np.ndarray) -> float:
            if off_max + float(np.max(np.abs(bb), initial=0.0)) > ETA_BOUND:
                raise OutOfRange
            np.multiply(self.expand(np.exp(bb)), e_off, out=mu)
            np.add(mu, self.k, out=tm)
            np.log(tm, out=lg)
            eta_terms = c_off + float(bb @ self.eta_coef_sums)
            return self.dev_const + eta_terms + float(self.log_coef @ lg)

        u = b / th if th > 0 else np.zeros(self.G)
        pdev = move(b) + float(u @ u)
        it, converged = 0, False
        while True:
            W, S, extra = self._sums(mu, tm)
            if converged:
                break
            it += 1
            if it > maxit:
                return None
            _, H, R, _, _ = extra
            u_new = th * (b * H + R) / (1.0 + th * th * H)
            # Newton steps with step halving (pdev is strictly convex in u: dev'' > 0); the
            # stopping test only on full steps
            halving = 0
            while True:
                try:
                    pdev_new = move(th * u_new) + float(u_new @ u_new)
                except OutOfRange:
                    pdev_new = np.inf
                if np.isfinite(pdev_new) and pdev_new <= pdev + max(tol, 1e-11) * abs(pdev):
                    break
                halving += 1
                if halving > MAX_HALVINGS:
                    return None
                u_new = 0.5 * (u + u_new)
            converged = halving == 0 and abs(pdev - pdev_new) < tol * abs(pdev_new)
            u, b, pdev = u_new, th * u_new, pdev_new
        ldL2 = float(np.sum(np.log1p(th * th * S)))
        eta = offset + self.expand(b)
        return PirlsState(u, None, eta, mu, ldL2, pdev, it, True), W, S, extra
