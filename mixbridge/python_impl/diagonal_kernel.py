"""What the fused (1|g) glmer kernels share: the group bookkeeping of a diagonal core (group
sums, gathers), one pass η → μ → Σ dev, and lme4's PIRLS steps in group-level form, run by
`pirls.run_pirls`, the one PIRLS loop.

A family's kernel (`diagonal_canonical.CanonicalKernel`, `diagonal_nb.NbKernel`) subclasses
`DiagonalKernel` and supplies only its own math (`mean`, `deviance`, `pirls_sums`,
`working_rhs`) plus its converged modes and analytic gradient. With b = θu, η = o + b[g] and
the Fisher weights W, a u-only step solves
    u_j = θ (b_j S_j + R_j) / d_j,   S_j = Σ_{i∈j} W_i,   d_j = 1 + θ² S_j,
where R_j = Σ_{i∈j} W_i (z_i − η_i) is the family's (`pirls_sums`); a joint step solves the
(β, u) system from W and W z (`working_rhs`) with one X·W product.

The kernel binds a core to a response, which the core itself must not know (lme4: the
predictor knows no family); it reads the core's public state only and installs the
factorization of the last step with `core.set_factorization`.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import numpy as np

from mixbridge.python_impl.pirls import PirlsState, run_pirls
from mixbridge.python_impl.pls_diagonal import DiagonalCore
from mixbridge.python_impl.response import GlmResponse

# |η| bound under which lme4's clamps (μ in [ε, 1−ε] for logit, μ ≥ ε for log) are inactive, so
# the kernels' closed forms are lme4's quantities exactly (up to rounding)
ETA_BOUND = 30.0


class OutOfRange(Exception):
    """A linear predictor left |η| ≤ ETA_BOUND: the caller falls back to the generic PIRLS."""


# the family's sums at the converged modes that its `gradient_from` takes
ModeSums = TypeVar("ModeSums")


class DiagonalKernel(Generic[ModeSums]):
    """The family-free part of a fused (1|g) kernel (see the module docstring). Subclasses
    check their family in `__init__` before calling this one."""

    def __init__(self, core: DiagonalCore, resp: GlmResponse) -> None:
        self.core, self.resp = core, resp
        self.codes, self.G = core.codes, core.n_levels
        # rows already ordered by group (glmer orders big models so): segment sums and repeats
        counts = np.bincount(self.codes, minlength=self.G)
        self.counts = counts
        self.segmented = bool(
            self.codes.size > 1 and np.all(counts > 0) and np.all(self.codes[1:] >= self.codes[:-1])
        )
        self.starts = np.concatenate([[0], np.cumsum(counts)[:-1]]) if self.segmented else None
        self.unit = resp.unit_weights
        X = core.X
        # intercept-like columns: their group sums are S itself, no extra pass
        self.ones_cols = [bool(np.all(X[:, k] == 1.0)) for k in range(X.shape[1])]
        self.scratch = np.empty(self.codes.size)  # one n-vector, reused

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

    # -- the family's math --
    def mean(self, eta: np.ndarray, mu: np.ndarray) -> None:
        """μ = g⁻¹(η) in place."""
        raise NotImplementedError

    def deviance(self, eta: np.ndarray, mu: np.ndarray) -> float:
        """Σ_i dev_i at (η, μ) (may use `scratch`)."""
        raise NotImplementedError

    def pirls_sums(self, mu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(W, R): the Fisher weights per row (an array the next call may overwrite) and
        R_j = Σ_{i∈j} W_i (z_i − η_i), the u-only step's right-hand side beyond b_j S_j."""
        raise NotImplementedError

    def working_rhs(
        self, eta: np.ndarray, offset: np.ndarray, mu: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(W, W z) per row for the joint step, z = η − o + (y − μ)/μ' (W an array of its
        own, kept by the core's factorization; W z may live in `scratch`)."""
        raise NotImplementedError

    def _modes(
        self, th: float, offset: np.ndarray, b_start: np.ndarray, tol: float, maxit: int
    ) -> tuple[PirlsState, np.ndarray, np.ndarray, ModeSums] | None:
        """The family's Newton iteration for `modes` (may raise OutOfRange)."""
        raise NotImplementedError

    # -- the gradient phase: converged modes --
    def modes(
        self, theta: float, offset: np.ndarray, b_start: np.ndarray, tol: float, maxit: int = 50
    ) -> tuple[PirlsState, np.ndarray, np.ndarray, ModeSums] | None:
        """Fully converged conditional modes at (θ, offset = o + Xβ), for the gradient phase:
        Newton steps in u from the warm start b_start = θu₀ until the penalized deviance changes
        by less than tol (relative). Returns the state (log|L|² at the Fisher weights at the
        modes: the smooth function the gradients differentiate, not lme4's stopping quirk), W,
        S = Σ_j W and the family's sums for `gradient_from`; None if η leaves |η| ≤ ETA_BOUND
        or a step fails to decrease pdev (the caller uses the lme4-style PIRLS instead)."""
        try:
            return self._modes(float(theta), offset, b_start, tol, maxit)
        except OutOfRange:
            return None

    # -- one pass: η, μ, Σ dev from the group effects b --
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
        return self.deviance(eta, mu)

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


class UOnlyStep:
    """lme4's u-only PIRLS step for (1|g) on a fused kernel (see `pirls.PirlsStep`)."""

    def __init__(
        self,
        kernel: DiagonalKernel,
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
        W, R = k.pirls_sums(self.mu)
        S = k.gsum(W)
        if self.b is None:  # first iteration from an arbitrary η: Σ W (η − o) directly
            np.subtract(self.eta, self.offset, out=k.scratch)
            k.scratch *= W
            swz = k.gsum(k.scratch)
        else:
            swz = self.b * S
        swz += R
        d = 1.0 + th * th * S
        ldL2 = float(np.sum(np.log1p(th * th * S)))  # weights at the start (lme4's quirk)
        self.W, self.S, self.d = W, S, d
        return th * swz / d, None, ldL2

    def update(self, u: np.ndarray, beta: None) -> float:
        self.b = self.th * u
        return self.k.move(self.b, self.offset, self.off_max, self.eta, self.mu) + float(u @ u)

    def finish(self) -> None:
        """The core holds this factorization (cond_var, AGQ's sd, ldL2), as after `pirls`; a
        copy of W, which `pirls_sums` may overwrite later."""
        self.k.core.set_factorization(self.th, self.S, self.d, self.W.copy())


class JointStep:
    """lme4's joint (β, u) PIRLS step for (1|g) on a fused kernel (see `pirls.PirlsStep`)."""

    def __init__(
        self, kernel: DiagonalKernel, theta: float, eta_start: np.ndarray, offset: np.ndarray
    ) -> None:
        self.k, self.th, self.offset = kernel, theta, offset
        self.eta = np.array(eta_start, dtype=float)
        if float(np.max(np.abs(self.eta))) > ETA_BOUND:
            raise OutOfRange
        self.mu = np.empty_like(self.eta)
        kernel.mean(self.eta, self.mu)

    def solve(self) -> tuple[np.ndarray, np.ndarray, float]:
        k, th, X = self.k, self.th, self.k.core.X
        W, wz = k.working_rhs(self.eta, self.offset, self.mu)
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
