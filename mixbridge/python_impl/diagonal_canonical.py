"""glmer with one scalar intercept term `(1|g)` and a canonical link (logit, log): lme4's PIRLS
steps in fused group-level form, the fully converged conditional modes, and the analytic
gradient of the Laplace deviance, all on the diagonal core (`pls_diagonal`).

With a canonical link μ'(η) = V(μ), so the working weight is W = w·μ' (w·μ(1−μ) or w·μ) and
the PLS right-hand side needs no working response: with η = o + b[g] (b = θu),
    Σ_{i∈j} W_i z_i = b_j S_j + Σ_{i∈j} w_i (y_i − μ_i),     S_j = Σ_{i∈j} W_i,
and the deviance is a closed form in η and log μ (logit) or μ (log):
    logit: dev_i = c_i − 2 w_i log μ_i + 2 w_i (1 − y_i) η_i,
    log:   dev_i = c_i + 2 w_i (μ_i − y_i η_i)
(c_i = the data-only part). Per iteration: one gather, one exp (+ one log for logit), two
bincounts and a few dot products, instead of ~20 elementwise passes. The iterations run in
`pirls.run_pirls`, the one PIRLS loop (`UOnlyStep`, `JointStep`).

The kernel binds a core to a response, which the core itself must not know (lme4: the
predictor knows no family); it reads the core's public state only and installs the
factorization of the last step with `core.set_factorization`.
"""

from __future__ import annotations

import numpy as np
from scipy import special

from mixbridge.python_impl.families import DBL_EPSILON as EPS
from mixbridge.python_impl.pirls import PirlsState, run_pirls
from mixbridge.python_impl.pls_diagonal import DiagonalCore
from mixbridge.python_impl.response import CANONICAL, GlmResponse

# |η| bound under which lme4's clamps (μ in [ε, 1−ε] for logit, μ ≥ ε for log) are inactive, so
# the closed forms below are lme4's quantities exactly (up to rounding)
ETA_BOUND = 30.0


class OutOfRange(Exception):
    """A linear predictor left |η| ≤ ETA_BOUND: the caller falls back to the generic PIRLS."""


def scalar_laplace_gradient(
    core: DiagonalCore, resp: GlmResponse, state: PirlsState, theta: float
) -> tuple[float, np.ndarray]:
    """d/d(θ, β) of D = Σ_j log d_j + ‖ũ‖² + Σ_i dev_i at the conditional modes ũ(θ, β).

    For canonical links dev'' = 2W, so with S_j = Σ W_i z_i² and d_j = 1 + θ²S_j:
        dũ_j/dβ = −θ Σ_{i∈j} W_i z_i x_i / d_j,   dũ_j/dθ = −(Σ_{i∈j} z_i dev'_i + 2θS_jũ_j)/(2d_j)
    and, by the envelope theorem for the penalized deviance,
        ∂D = Σ_i dev'_i ∂η_i|_ũ + Σ_j [∂(θ²)S_j + θ² Σ_{i∈j} W'_i z_i² dη_i]/d_j.
    Everything is a per-group sum: one O(n·p) pass. Valid for the fully converged Laplace value
    (lme4's stopping quirk is not differentiated; it is O(1e-7) relative for large data).
    """
    codes, G = core.codes, core.n_levels
    X = core.X
    z = np.ones(codes.size) if core.zvals is None else core.zvals
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


class CanonicalKernel:
    """The fused (1|g) canonical-link computations for one (diagonal core, response) pair; see
    the module docstring."""

    def __init__(self, core: DiagonalCore, resp: GlmResponse) -> None:
        if core.zvals is not None or (resp.family_name, resp.link) not in CANONICAL:
            raise ValueError("CanonicalKernel needs (1|g) with a canonical link")
        self.core, self.resp = core, resp
        self.codes, self.G = core.codes, core.n_levels
        # rows already ordered by group (glmer orders big models so): segment sums and repeats
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
        self.dev_const = float(np.sum(resp.dev_const))
        X = core.X
        self.ones_cols = [bool(np.all(X[:, k] == 1.0)) for k in range(X.shape[1])]
        self.scratch = np.empty(codes_len := self.codes.size)  # one n-vector, reused
        self._weights_buf = np.empty(codes_len)

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
    def mean(self, eta: np.ndarray, mu: np.ndarray) -> None:
        """μ = g⁻¹(η) in place."""
        if self.logit:
            special.expit(eta, out=mu)
        else:
            np.exp(eta, out=mu)

    def _dev(self, eta: np.ndarray, mu: np.ndarray) -> float:
        if self.logit:
            lm = np.log(mu, out=self.scratch)
            s = float(lm.sum()) if self.unit else float(self.w @ lm)
            return self.dev_const - 2.0 * s + float(self.eta_coef @ eta)
        s = float(mu.sum()) if self.unit else float(self.w @ mu)
        return self.dev_const + 2.0 * s + float(self.eta_coef @ eta)

    def move(
        self, b: np.ndarray, offset: np.ndarray, off_max: float, eta: np.ndarray, mu: np.ndarray
    ) -> float:
        """η = offset + b[g], μ in place; returns Σ dev (OutOfRange beyond ETA_BOUND)."""
        if off_max + float(np.max(np.abs(b), initial=0.0)) > ETA_BOUND:
            raise OutOfRange
        if self.segmented:
            np.add(np.repeat(b, self.counts), offset, out=eta)
        else:
            np.take(b, self.codes, out=eta)
            eta += offset
        self.mean(eta, mu)
        return self._dev(eta, mu)

    def weights(self, mu: np.ndarray) -> np.ndarray:
        """W = w·μ' at μ, in a buffer the next call overwrites."""
        W = self._weights_buf
        if self.logit:
            np.multiply(mu, mu, out=W)
            np.subtract(mu, W, out=W)  # μ(1 − μ)
        else:
            W[:] = mu
        if not self.unit:
            W *= self.w
        return W

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
        """u-only PIRLS from η = eta_start (any vector) or from η = offset + b_start[g].
        Returns None when η would leave the |η| ≤ ETA_BOUND region (use `pirls` then)."""
        try:
            step = UOnlyStep(self, float(theta), offset, eta_start, b_start)
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
        """lme4's joint (β, u) PIRLS (stage 1, the initial fit) in the same fused form, as
        `pirls(u_only=False, strict=False)`. None outside |η| ≤ ETA_BOUND."""
        try:
            return run_pirls(JointStep(self, float(theta), eta_start, offset), tol, maxit, False)
        except OutOfRange:
            return None

    # -- the gradient phase: converged modes and the analytic gradient --
    def gradient(self, state: PirlsState, theta: float) -> tuple[float, np.ndarray, np.ndarray]:
        """`scalar_laplace_gradient` for this model at `state` (z = 1), from group sums, and
        dũ/d(θ, β) (see `gradient_from`)."""
        W = self.weights(state.mu)
        S = self.gsum(W)
        swmu = self.gsum(state.mu if self.unit else self.w * state.mu)
        return self.gradient_from(float(theta), W, S, swmu, state.mu, state.u)

    def gradient_from(
        self,
        th: float,
        W: np.ndarray,
        S: np.ndarray,
        swmu: np.ndarray,
        mu: np.ndarray,
        u: np.ndarray,
    ) -> tuple[float, np.ndarray, np.ndarray]:
        """The gradient from W = w μ', S = Σ_j W and Σ_j w μ at the modes: p + 1 more bincounts,
        one gather and one X'v product (see `scalar_laplace_gradient` for the formulas).
        Returns (∂/∂θ, ∂/∂β, dũ/d(θ, β)): the last is the next evaluation's warm start."""
        X = self.core.X
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
        return g_theta, g_beta, np.column_stack([du_dt, du_db])

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
        except OutOfRange:
            return None

    def _modes(
        self, th: float, offset: np.ndarray, b_start: np.ndarray, tol: float, maxit: int
    ) -> tuple[PirlsState, np.ndarray, np.ndarray, np.ndarray] | None:
        off_max = float(np.max(np.abs(offset)))
        n = self.codes.size
        eta, mu = np.empty(n), np.empty(n)
        b = np.asarray(b_start, dtype=float)
        u = b / th if th > 0 else np.zeros(self.G)
        pdev = self.move(b, offset, off_max, eta, mu) + float(u @ u)
        it, converged = 0, False
        while True:
            W = self.weights(mu)
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
            pdev_new = self.move(b_new, offset, off_max, eta, mu) + float(u_new @ u_new)
            # not a Newton descent step (beyond rounding in the sums): far from the mode
            if not np.isfinite(pdev_new) or pdev_new > pdev + max(tol, 1e-11) * abs(pdev_new):
                return None
            converged = abs(pdev - pdev_new) < tol * abs(pdev_new)
            u, b, pdev = u_new, b_new, pdev_new
        ldL2 = float(np.sum(np.log1p(th * th * S)))
        return PirlsState(u, None, eta, mu, ldL2, pdev, it, True), W.copy(), S, swmu


class UOnlyStep:
    """lme4's u-only PIRLS step for (1|g), canonical link (see `pirls.PirlsStep`)."""

    def __init__(
        self,
        kernel: CanonicalKernel,
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
            kernel.mean(self.eta, self.mu)
            self.b = None
        kernel.core.theta = theta

    def solve(self) -> tuple[np.ndarray, None, float]:
        k, th = self.k, self.th
        W = k.weights(self.mu)
        S = k.gsum(W)
        swmu = k.gsum(self.mu if k.unit else k.w * self.mu)
        if self.b is None:  # first iteration from an arbitrary η: Σ W (η − o) directly
            np.subtract(self.eta, self.offset, out=k.scratch)
            k.scratch *= W
            swz = k.gsum(k.scratch)
        else:
            swz = self.b * S
        swz += k.sy - swmu
        d = 1.0 + th * th * S
        ldL2 = float(np.sum(np.log1p(th * th * S)))  # weights at the start (lme4's quirk)
        self.W, self.S, self.d = W, S, d
        return th * swz / d, None, ldL2

    def update(self, u: np.ndarray, beta: None) -> float:
        self.b = self.th * u
        return self.k.move(self.b, self.offset, self.off_max, self.eta, self.mu) + float(u @ u)

    def finish(self) -> None:
        """The core holds this factorization (cond_var, AGQ's sd, ldL2), as after `pirls`."""
        self.k.core.set_factorization(self.th, self.S, self.d, self.W.copy())


class JointStep:
    """lme4's joint (β, u) PIRLS step for (1|g), canonical link (see `pirls.PirlsStep`)."""

    def __init__(
        self, kernel: CanonicalKernel, theta: float, eta_start: np.ndarray, offset: np.ndarray
    ) -> None:
        self.k, self.th, self.offset = kernel, theta, offset
        self.eta = np.array(eta_start, dtype=float)
        if float(np.max(np.abs(self.eta))) > ETA_BOUND:
            raise OutOfRange
        self.mu = np.empty_like(self.eta)
        kernel.mean(self.eta, self.mu)

    def solve(self) -> tuple[np.ndarray, np.ndarray, float]:
        k, th, X = self.k, self.th, self.k.core.X
        W = k.weights(self.mu).copy()
        # W z = W (η − o) + w (y − μ)
        wz = np.subtract(self.eta, self.offset, out=k.scratch)
        wz *= W
        wz += k.resp.y if k.unit else k.w * k.resp.y
        wz -= self.mu if k.unit else k.w * self.mu
        # the factorization of DiagonalCore.update/solve, from one X·W product
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
