"""glmer with one scalar intercept term `(1|g)` and MASS's negative.binomial(k) family (log
link, not canonical): lme4's PIRLS steps in fused group-level form, the fully converged
conditional modes and the analytic gradient of the Laplace deviance — the negative-binomial
counterpart of `diagonal_canonical` (same protocol: `pirls_u`, `pirls_joint`, `modes`,
`gradient`, `gradient_from`), so that glmer's Devfun and its gradient stage 2
(`glmer_gradient.optimize_stage2`) run on it unchanged.

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

from mixbridge.python_impl.diagonal_canonical import ETA_BOUND, OutOfRange
from mixbridge.python_impl.pirls import PirlsState, run_pirls
from mixbridge.python_impl.pls_diagonal import DiagonalCore
from mixbridge.python_impl.response import GlmResponse

MAX_HALVINGS = 30  # of a Newton step in `modes`


def nb_kernel_applies(core: object, resp: GlmResponse) -> bool:
    """(1|g) (a diagonal core with no term values) and negative.binomial with the log link."""
    return (
        isinstance(core, DiagonalCore)
        and core.zvals is None
        and resp.family_name == "negative.binomial"
        and resp.link == "log"
    )


class NbKernel:
    """The fused (1|g) negative-binomial computations for one (diagonal core, response) pair;
    see the module docstring."""

    def __init__(self, core: DiagonalCore, resp: GlmResponse) -> None:
        if not nb_kernel_applies(core, resp):
            raise ValueError("NbKernel needs (1|g) with the negative.binomial family, log link")
        self.core, self.resp = core, resp
        self.k = float(resp.nb_theta)
        self.codes, self.G = core.codes, core.n_levels
        counts = np.bincount(self.codes, minlength=self.G)
        self.counts = counts
        self.segmented = bool(
            self.codes.size > 1 and np.all(counts > 0) and np.all(self.codes[1:] >= self.codes[:-1])
        )
        self.starts = np.concatenate([[0], np.cumsum(counts)[:-1]]) if self.segmented else None
        w, y = np.asarray(resp.weights, dtype=float), np.asarray(resp.y, dtype=float)
        self.unit = resp.unit_weights
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
        X = core.X
        self.ones_cols = [bool(np.all(X[:, j] == 1.0)) for j in range(X.shape[1])]
        self.scratch = np.empty(self.codes.size)

    def gsum(self, v: np.ndarray) -> np.ndarray:
        """Σ_{i∈j} v_i for every group j."""
        if self.segmented:
            return np.add.reduceat(v, self.starts)
        return np.bincount(self.codes, weights=v, minlength=self.G)

    def expand(self, b: np.ndarray) -> np.ndarray:
        """b[g_i] for every row i."""
        if self.segmented:
            return np.repeat(b, self.counts)
        return np.take(b, self.codes)

    # -- one pass: η, μ, Σ dev from the group effects b --
    def _dev(self, eta: np.ndarray, mu: np.ndarray) -> float:
        lg = np.add(mu, self.k, out=self.scratch)
        np.log(lg, out=lg)
        return self.dev_const + float(self.eta_coef @ eta) + float(self.log_coef @ lg)

    def move(
        self, b: np.ndarray, offset: np.ndarray, off_max: float, eta: np.ndarray, mu: np.ndarray
    ) -> float:
        """η = offset + b[g], μ = exp(η) in place; returns Σ dev (OutOfRange beyond ETA_BOUND)."""
        if off_max + float(np.max(np.abs(b), initial=0.0)) > ETA_BOUND:
            raise OutOfRange
        if self.segmented:
            np.add(np.repeat(b, self.counts), offset, out=eta)
        else:
            np.take(b, self.codes, out=eta)
            eta += offset
        np.exp(eta, out=mu)
        return self._dev(eta, mu)

    def q_weights(self, mu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(q, W): q = w k/(μ + k) and the Fisher working weight W = q μ."""
        q = np.add(mu, self.k)
        np.divide(self.wk, q, out=q)
        return q, q * mu

    # -- PIRLS (the one loop, `pirls.run_pirls`, with the fused steps) --
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
        """u-only PIRLS from η = eta_start or from η = offset + b_start[g]; None when η would
        leave |η| ≤ ETA_BOUND (the caller uses the generic PIRLS then)."""
        try:
            step = NbUOnlyStep(self, float(theta), offset, eta_start, b_start)
            return run_pirls(step, tol, maxit, strict)
        except OutOfRange:
            return None

    def pirls_joint(
        self,
        theta: float,
        eta_start: np.ndarray,
        offset: np.ndarray,
        tol: float = 1e-7,
        maxit: int = 100,
    ) -> PirlsState | None:
        """lme4's joint (β, u) PIRLS (stage 1, the initial fit) in fused form, as
        `pirls(u_only=False, strict=False)`. None outside |η| ≤ ETA_BOUND."""
        try:
            return run_pirls(NbJointStep(self, float(theta), eta_start, offset), tol, maxit, False)
        except OutOfRange:
            return None

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
        """The gradient at `state` (converged modes) and dũ/d(θ, β) (see `gradient_from`)."""
        W, S, extra = self._sums(state.mu)
        return self.gradient_from(float(theta), W, S, extra, state.mu, state.u)

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

    def modes(
        self, theta: float, offset: np.ndarray, b_start: np.ndarray, tol: float, maxit: int = 50
    ) -> tuple[PirlsState, np.ndarray, np.ndarray, tuple[np.ndarray, ...]] | None:
        """Fully converged conditional modes at (θ, offset = o + Xβ) by Newton steps from
        b_start = θu₀ until the penalized deviance changes by less than tol (relative).
        Returns the state (log|L|² from the Fisher weights at the modes), W, S = Σ_j W and the
        sums `gradient_from` needs; None if η leaves |η| ≤ ETA_BOUND or a step fails to
        decrease pdev (the caller uses the lme4-style PIRLS instead)."""
        try:
            return self._modes(float(theta), offset, b_start, tol, maxit)
        except OutOfRange:
            return None

    def _modes(
        self, th: float, offset: np.ndarray, b_start: np.ndarray, tol: float, maxit: int
    ) -> tuple[PirlsState, np.ndarray, np.ndarray, tuple[np.ndarray, ...]] | None:
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


class NbUOnlyStep:
    """lme4's u-only PIRLS step for (1|g), negative.binomial (see `pirls.PirlsStep`)."""

    def __init__(
        self,
        kernel: NbKernel,
        theta: float,
        offset: np.ndarray,
        eta_start: np.ndarray | None,
        b_start: np.ndarray | None,
    ) -> None:
        self.k, self.th, self.offset = kernel, theta, offset
        self.off_max = float(np.max(np.abs(offset)))
        n = kernel.codes.size
        self.eta, self.mu = np.empty(n), np.empty(n)
        self.b: np.ndarray | None
        if b_start is not None:
            self.b = np.asarray(b_start, dtype=float)
            kernel.move(self.b, offset, self.off_max, self.eta, self.mu)
        else:
            self.eta[:] = eta_start
            if float(np.max(np.abs(self.eta))) > ETA_BOUND:
                raise OutOfRange
            np.exp(self.eta, out=self.mu)
            self.b = None
        kernel.core.theta = theta

    def solve(self) -> tuple[np.ndarray, None, float]:
        k, th = self.k, self.th
        q, W = k.q_weights(self.mu)
        S = k.gsum(W)
        q *= k.y - self.mu
        r = k.gsum(q)  # Σ W (y − μ)/μ'
        if self.b is None:  # first iteration from an arbitrary η: Σ W (η − o) directly
            np.subtract(self.eta, self.offset, out=k.scratch)
            k.scratch *= W
            swz = k.gsum(k.scratch)
        else:
            swz = self.b * S
        swz += r
        d = 1.0 + th * th * S
        ldL2 = float(np.sum(np.log1p(th * th * S)))  # weights at the start (lme4's quirk)
        self.W, self.S, self.d = W, S, d
        return th * swz / d, None, ldL2

    def update(self, u: np.ndarray, beta: None) -> float:
        self.b = self.th * u
        return self.k.move(self.b, self.offset, self.off_max, self.eta, self.mu) + float(u @ u)

    def finish(self) -> None:
        """The core holds this factorization (cond_var, ldL2), as after `pirls`."""
        self.k.core.set_factorization(self.th, self.S, self.d, self.W)


class NbJointStep:
    """lme4's joint (β, u) PIRLS step for (1|g), negative.binomial (see `pirls.PirlsStep`)."""

    def __init__(
        self, kernel: NbKernel, theta: float, eta_start: np.ndarray, offset: np.ndarray
    ) -> None:
        self.k, self.th, self.offset = kernel, theta, offset
        self.eta = np.array(eta_start, dtype=float)
        if float(np.max(np.abs(self.eta))) > ETA_BOUND:
            raise OutOfRange
        self.mu = np.exp(self.eta)

    def solve(self) -> tuple[np.ndarray, np.ndarray, float]:
        k, th, X = self.k, self.th, self.k.core.X
        q, W = k.q_weights(self.mu)
        # W z = W (η − o) + q (y − μ)
        wz = np.subtract(self.eta, self.offset)
        wz *= W
        q *= k.y - self.mu
        wz += q
        S = k.gsum(W)
        d = 1.0 + th * th * S
        XW = X * W[:, None]
        sx = np.column_stack([S if one else k.gsum(XW[:, j]) for j, one in enumerate(k.ones_cols)])
        omega = th * th / d
        rx = XW.T @ X - sx.T @ (sx * omega[:, None])
        k.core.set_factorization(th, S, d, W, sx, rx)
        ldL2 = float(np.sum(np.log1p(th * th * S)))  # weights at the start (lme4's quirk)
        sz = k.gsum(wz)
        beta = np.linalg.solve(rx, X.T @ wz - sx.T @ (omega * sz))
        return th * (sz - sx @ beta) / d, beta, ldL2

    def update(self, u: np.ndarray, beta: np.ndarray | None) -> float:
        assert beta is not None
        fixed = self.offset + self.k.core.X @ beta
        off_max = float(np.max(np.abs(fixed)))
        return self.k.move(self.th * u, fixed, off_max, self.eta, self.mu) + float(u @ u)

    def finish(self) -> None:
        """The factorization is installed by every `solve`."""
