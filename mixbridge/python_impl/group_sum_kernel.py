"""glmer's big-data `(1|g)` fit (canonical link, nAGQ = 1) over GROUP SUMS: every step of the
algorithm reads the rows only through one pass that returns per-group sums, so the rows can
live anywhere — in memory (`MemoryRows`) or in the partitions of a Dask DataFrame on a cluster
(`distributed_glmer.DaskRows`), where each step is one map-reduce and only O(G) sums leave the
workers.

The steps are those of the in-memory fused path (`diagonal_canonical`, `glmer_gradient`) in
group-sum form: the initial joint PIRLS at θ = 1 from mustart, then stage 2 by BFGS on the
converged Laplace deviance with its analytic gradient (modes warm-started to first order), the
Hessian by central differences of that gradient, lme4's boundary check and checkConv. With
η = o + Xβ + b[g], W = w·μ' and μ' = V(μ) (canonical link):

    u-only step     S_j = Σ W, Σ_j wμ         ũ_j = θ(b_j S_j + Σ_j wy − Σ_j wμ)/(1 + θ²S_j)
    joint step      + Σ_j W x, X'WX, X'Wz, Σ_j Wz   (the diagonal core's factorization)
    deviance        logit: c − 2 Σ w log μ + 2 Σ w(1 − y)η;  log: c + 2 Σ wμ − 2 Σ wyη
    gradient        + Σ_j W x, Σ_j w μ'', Σ_j w μ'' x, X'w(y − μ)

One pass per PIRLS iteration: the pass at the new (β, b) returns its deviance and the sums the
next iteration's solve needs. The rows and the pass are `group_sum_rows`; the optimizer over the
kernel (stage 2, bound probes, the fit) is `group_sum_fit`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mixbridge.python_impl.diagonal_kernel import ETA_BOUND
from mixbridge.python_impl.group_sum_rows import Request, RowSource
from mixbridge.python_impl.pirls import PirlsState, run_pirls

# ---------------------------------------------------------------------------------------------
# The kernel: PIRLS, converged modes and the gradient from group sums


class OutOfRange(Exception):
    """|η| beyond ETA_BOUND, where lme4's clamps act (the in-memory path's generic PIRLS)."""


@dataclass
class Constants:
    """Data-only quantities of the response (one pass at set-up): Σ_j wy, the deviance's
    constant, aic − deviance (the Laplace value's constant), which X columns are all ones."""

    sy: np.ndarray
    dev_const: float
    aic_minus_dev: float
    ones_cols: list[bool]


@dataclass
class Factor:
    """The factorization of a PIRLS solve: θ, S_j, d_j = 1 + θ²S_j and (when computed) Σ_j Wx
    and R_X'R_X."""

    theta: float
    S: np.ndarray
    d: np.ndarray
    rx: np.ndarray | None = None


class GroupSumKernel:
    """The fused (1|g) canonical-link algorithm on a `RowSource` (see the module docstring)."""

    def __init__(self, source: RowSource, consts: Constants, p: int) -> None:
        self.source, self.c, self.p = source, consts, p
        self.G = source.n_groups
        self.cols = tuple(k for k, one in enumerate(consts.ones_cols) if not one)
        self.factor: Factor | None = None
        self.n_passes = 0

    def run(self, beta: np.ndarray | None, b: np.ndarray | None, **flags: Any) -> dict[str, Any]:
        self.n_passes += 1
        return self.source.run(Request(beta, b, self.cols, **flags))

    def dev(self, r: dict[str, Any]) -> float:
        return self.c.dev_const + r["dev"]

    def full_x(self, S: np.ndarray, part: np.ndarray | None) -> np.ndarray:
        """(G, p): a column per X column, S for the all-ones ones."""
        out = np.empty((self.G, self.p))
        j = 0
        for k, one in enumerate(self.c.ones_cols):
            if one:
                out[:, k] = S
            else:
                assert part is not None
                out[:, k] = part[:, j]
                j += 1
        return out

    def rx_from(self, th: float, S: np.ndarray, d: np.ndarray, r: dict[str, Any]) -> np.ndarray:
        sx = self.full_x(S, r["sx"])
        return r["xwx"] - sx.T @ (sx * (th * th / d)[:, None])

    def check_lin(self, r: dict[str, Any], b: np.ndarray | None) -> None:
        bmax = 0.0 if b is None else float(np.max(np.abs(b), initial=0.0))
        if r["offmax"] + bmax > ETA_BOUND:
            raise OutOfRange

    # -- PIRLS --
    def pirls_joint(self, theta: float, tol: float, maxit: int) -> PirlsState:
        return run_pirls(_JointStep(self, theta), tol, maxit, False)

    def pirls_u(
        self,
        theta: float,
        beta: np.ndarray,
        *,
        start: tuple[np.ndarray, np.ndarray] | None = None,
        b_start: np.ndarray | None = None,
        tol: float,
        maxit: int,
        flags: dict[str, bool],
    ) -> tuple[PirlsState, dict[str, Any]]:
        step = _UStep(self, theta, beta, start, b_start, flags)
        st = run_pirls(step, tol, maxit, False)
        return st, step.r

    def laplace(self, st: PirlsState) -> float:
        return st.ldL2 + st.pdev + self.c.aic_minus_dev

    # -- the gradient phase --
    def modes(
        self, th: float, beta: np.ndarray, b_start: np.ndarray, tol: float, maxit: int = 50
    ) -> tuple[PirlsState, dict[str, Any]] | None:
        """`CanonicalKernel.modes` in group-sum form (None: use the lme4-style PIRLS)."""
        b = np.asarray(b_start, dtype=float)
        u = b / th if th > 0 else np.zeros(self.G)
        r = self.run(beta, b)  # never the last pass: at least one Newton step follows
        try:
            self.check_lin(r, b)
        except OutOfRange:
            return None
        pdev = self.dev(r) + float(u @ u)
        sy = self.c.sy
        it, converged = 0, False
        while not converged:
            it += 1
            if it > maxit:
                return None
            S = r["S"]
            d = 1.0 + th * th * S
            u_new = th * (b * S + sy - r["swmu"]) / d
            b_new = th * u_new
            r_new = self.run(beta, b_new, grad=True)
            try:
                self.check_lin(r_new, b_new)
            except OutOfRange:
                return None
            pdev_new = self.dev(r_new) + float(u_new @ u_new)
            if not np.isfinite(pdev_new) or pdev_new > pdev + max(tol, 1e-11) * abs(pdev_new):
                return None
            converged = abs(pdev - pdev_new) < tol * abs(pdev_new)
            u, b, pdev, r = u_new, b_new, pdev_new, r_new
        ldL2 = float(np.sum(np.log1p(th * th * r["S"])))
        return PirlsState(u, None, None, None, ldL2, pdev, it, True), r  # type: ignore[arg-type]

    def gradient_from(
        self, th: float, r: dict[str, Any], u: np.ndarray
    ) -> tuple[float, np.ndarray, np.ndarray]:
        """`CanonicalKernel.gradient_from` from the sums of a `grad` pass at the modes."""
        S = r["S"]
        d = 1.0 + th * th * S
        sdev1 = -2.0 * (self.c.sy - r["swmu"])
        sx = self.full_x(S, r["sx"])
        sa = th * th * r["sdW"] / d
        az = th * sa
        du_db = -th * sx / d[:, None]
        du_dt = -(sdev1 + 2.0 * th * S * u) / (2.0 * d)
        sxdw = self.full_x(r["sdW"], r["sxdW"])
        xv = sxdw.T @ (th * th / d) - 2.0 * r["xr"]
        g_beta = xv + du_db.T @ az
        g_theta = float(u @ sdev1 + np.sum(2.0 * th * S / d) + u @ sa + az @ du_dt)
        return g_theta, g_beta, np.column_stack([du_dt, du_db])


class _JointStep:
    """lme4's joint (β, u) PIRLS step from η = eta_init (`diagonal_kernel.JointStep`)."""

    def __init__(self, k: GroupSumKernel, theta: float) -> None:
        self.k, self.th = k, float(theta)
        self.eta = self.mu = None
        self.r = k.run(None, None, joint=True)
        if self.r["etamax"] > ETA_BOUND:
            raise OutOfRange

    def solve(self) -> tuple[np.ndarray, np.ndarray, float]:
        k, th, r = self.k, self.th, self.r
        S = r["S"]
        d = 1.0 + th * th * S
        sx = k.full_x(S, r["sx"])
        omega = th * th / d
        rx = r["xwx"] - sx.T @ (sx * omega[:, None])
        k.factor = Factor(th, S, d, rx)
        ldL2 = float(np.sum(np.log1p(th * th * S)))
        sz = r["sz"]
        beta = np.linalg.solve(rx, r["xwz"] - sx.T @ (omega * sz))
        return th * (sz - sx @ beta) / d, beta, ldL2

    def update(self, u: np.ndarray, beta: np.ndarray | None) -> float:
        assert beta is not None
        b = self.th * u
        self.r = self.k.run(beta, b, joint=True)
        self.k.check_lin(self.r, b)
        return self.k.dev(self.r) + float(u @ u)

    def finish(self) -> None:
        """The factorization is installed by every `solve`."""


class _UStep:
    """lme4's u-only PIRLS step at fixed β (`diagonal_kernel.UOnlyStep`), from the linear
    predictor `start` = (β₀, b₀) or from the group effects `b_start`."""

    def __init__(
        self,
        k: GroupSumKernel,
        theta: float,
        beta: np.ndarray,
        start: tuple[np.ndarray, np.ndarray] | None,
        b_start: np.ndarray | None,
        flags: dict[str, bool],
    ) -> None:
        self.k, self.th, self.beta, self.flags = k, float(theta), beta, flags
        self.eta = self.mu = None
        self.b: np.ndarray | None
        if b_start is not None:
            self.b = np.asarray(b_start, dtype=float)
            self.r = k.run(beta, self.b, **flags)
            k.check_lin(self.r, self.b)
        else:
            assert start is not None
            beta0, b0 = start
            self.r = k.run(beta0, b0, dbeta=beta0 - beta, **flags)
            if self.r["etamax"] > ETA_BOUND:
                raise OutOfRange
            self.b = None
        self.r_solve = self.r

    def solve(self) -> tuple[np.ndarray, None, float]:
        k, th, r = self.k, self.th, self.r
        S = r["S"]
        swz = r["swd"] if self.b is None else self.b * S
        swz = swz + k.c.sy - r["swmu"]
        d = 1.0 + th * th * S
        ldL2 = float(np.sum(np.log1p(th * th * S)))
        self.S, self.d, self.r_solve = S, d, r
        return th * swz / d, None, ldL2

    def update(self, u: np.ndarray, beta: None) -> float:
        self.b = self.th * u
        self.r = self.k.run(self.beta, self.b, **self.flags)
        self.k.check_lin(self.r, self.b)
        return self.k.dev(self.r) + float(u @ u)

    def finish(self) -> None:
        r = self.r_solve
        rx = self.k.rx_from(self.th, self.S, self.d, r) if "xwx" in r else None
        self.k.factor = Factor(self.th, self.S, self.d, rx)
