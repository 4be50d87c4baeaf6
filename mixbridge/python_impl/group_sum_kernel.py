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
next iteration's solve needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
from scipy import special

from mixbridge.errors import ConvergenceError
from mixbridge.python_impl import optimizers
from mixbridge.python_impl.checkconv import BOUNDARY_TOL
from mixbridge.python_impl.diagonal_canonical import ETA_BOUND
from mixbridge.python_impl.glmer_gradient import polished_hessian
from mixbridge.python_impl.optimize import probe_points
from mixbridge.python_impl.optsummary import OptSummary
from mixbridge.python_impl.pirls import PirlsState, run_pirls

EDGE = 1e-10  # fitted values this close to the edge count as separation (glmer's warning)


# ---------------------------------------------------------------------------------------------
# The rows and the one pass over them (runs where the rows are: a worker, or in memory)


@dataclass
class Rows:
    """One block of model rows: X (n×p), group codes (global), response y, prior weights w
    (None: unit), offset, and η from mustart (lme4's start)."""

    X: np.ndarray
    codes: np.ndarray
    y: np.ndarray
    w: np.ndarray | None
    off: np.ndarray
    eta_init: np.ndarray
    logit: bool
    n_groups: int
    # rows ordered by group: (the groups present, their first rows, their row counts); group
    # sums are then segment sums and b[g] a repeat (no scattered memory access)
    segments: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def gsum(self, v: np.ndarray) -> np.ndarray:
        if self.segments is not None and v.size:
            groups, starts, _ = self.segments
            out = np.zeros(self.n_groups)
            out[groups] = np.add.reduceat(v, starts)
            return out
        return np.bincount(self.codes, weights=v, minlength=self.n_groups)

    def expand(self, b: np.ndarray) -> np.ndarray:
        """b[g] for every row."""
        if self.segments is not None:
            groups, _, counts = self.segments
            return np.repeat(b[groups], counts)
        return b[self.codes]

    def order_by_group(self) -> Rows:
        """These rows ordered by group (stable), with their segments."""
        order = np.argsort(self.codes, kind="stable")
        codes = self.codes[order]
        counts = np.bincount(codes, minlength=self.n_groups)
        groups = np.flatnonzero(counts)
        starts = np.concatenate([[0], np.cumsum(counts[groups])[:-1]]).astype(np.intp)
        w = None if self.w is None else self.w[order]
        return Rows(self.X[order], codes, self.y[order], w, self.off[order],
                    self.eta_init[order], self.logit, self.n_groups,
                    (groups, starts, counts[groups]))  # fmt: skip


@dataclass(frozen=True)
class Request:
    """What one pass computes. η = eta_init (`beta` None) or o + Xβ + b[g]; `dbeta` (u-only
    start from another linear predictor): Σ_j W·(X dbeta + b[g]); `joint`: the joint step's
    sums; `xsums`: Σ_j W x and X'WX (R_X); `grad`: the gradient's sums; `edge`: rows at the
    edge. `cols`: which columns of X are not all ones (their group sums are needed)."""

    beta: np.ndarray | None
    b: np.ndarray | None
    cols: tuple[int, ...]
    dbeta: np.ndarray | None = None
    joint: bool = False
    xsums: bool = False
    grad: bool = False
    edge: bool = False


def row_pass(rows: Rows, req: Request) -> dict[str, Any]:
    """The sums of one block of rows (see `Request`); add the results of blocks with `add`."""
    X, w, y = rows.X, rows.w, rows.y
    out: dict[str, Any] = {}
    if req.beta is None:
        eta = rows.eta_init.copy()
        out["etamax"] = float(np.max(np.abs(eta), initial=0.0))
    else:
        eta = X @ req.beta
        eta += rows.off
        out["offmax"] = float(np.max(np.abs(eta), initial=0.0))
        if req.b is not None:
            eta += rows.expand(req.b)
        if req.dbeta is not None:
            out["etamax"] = float(np.max(np.abs(eta), initial=0.0))
    mu = special.expit(eta) if rows.logit else np.exp(eta)
    W = mu - mu * mu if rows.logit else mu.copy()
    if w is not None:
        W *= w
    wmu = mu if w is None else w * mu
    # the deviance's μ-dependent part (its data-only constant is added by the caller)
    if rows.logit:
        lm = np.log(mu)
        s = float(lm.sum()) if w is None else float(w @ lm)
        if w is None:  # Σ (1 − y)η without a temporary
            out["dev"] = -2.0 * s + 2.0 * (float(eta.sum()) - float(y @ eta))
        else:
            out["dev"] = -2.0 * s + 2.0 * float((w * (1.0 - y)) @ eta)
    else:
        wy = y if w is None else w * y
        out["dev"] = 2.0 * float(wmu.sum()) - 2.0 * float(wy @ eta)
    out["S"] = rows.gsum(W)
    out["swmu"] = rows.gsum(wmu)
    cols = list(req.cols)
    if req.dbeta is not None:
        base = X @ req.dbeta
        if req.b is not None:
            base += rows.expand(req.b)
        out["swd"] = rows.gsum(W * base)
    if req.joint or req.xsums or req.grad:
        out["sx"] = np.column_stack([rows.gsum(W * X[:, k]) for k in cols]) if cols else None
    if req.joint or req.xsums:
        out["xwx"] = (X * W[:, None]).T @ X
    if req.joint:
        # W z = W (η − o) + w (y − μ)
        wz = eta - rows.off
        wz *= W
        wz += (y if w is None else w * y) - wmu
        out["xwz"] = X.T @ wz
        out["sz"] = rows.gsum(wz)
    if req.grad:
        dW = W * (1.0 - 2.0 * mu) if rows.logit else W
        out["sdW"] = rows.gsum(dW)
        out["sxdW"] = np.column_stack([rows.gsum(dW * X[:, k]) for k in cols]) if cols else None
        r = (y if w is None else w * y) - wmu
        out["xr"] = X.T @ r
    if req.edge:
        if rows.logit:
            out["edge"] = int(np.count_nonzero((mu <= EDGE) | (mu >= 1 - EDGE)))
        else:
            out["edge"] = int(np.count_nonzero(mu <= EDGE))
    return out


def add(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two blocks' sums as one (maxima for the |η| bounds)."""
    out = {}
    for key, va in a.items():
        vb = b[key]
        if key in ("offmax", "etamax"):
            out[key] = max(va, vb)
        elif va is None:
            out[key] = None
        else:
            out[key] = va + vb
    return out


class RowSource(Protocol):
    """Where the rows are: `run(req)` is one pass over all of them (the added sums)."""

    n_groups: int

    def run(self, req: Request) -> dict[str, Any]: ...


class MemoryRows:
    """Rows in memory, as one block."""

    def __init__(self, rows: Rows) -> None:
        self.rows, self.n_groups = rows, rows.n_groups

    def run(self, req: Request) -> dict[str, Any]:
        return row_pass(self.rows, req)


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
    """lme4's joint (β, u) PIRLS step from η = eta_init (`diagonal_canonical.JointStep`)."""

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
    """lme4's u-only PIRLS step at fixed β (`diagonal_canonical.UOnlyStep`), from the linear
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


# ---------------------------------------------------------------------------------------------
# The fit: initial PIRLS, stage 2 by BFGS on the analytic gradient, checks (glmer.fit_spec's
# gradient path, step for step)


@dataclass
class Devfun:
    """The stage-2 deviance function (θ, β) → Laplace deviance, PIRLS restarted from the linear
    predictor lp0 = (β₀, b₀) of the initial fit (`glmer_devfun.Devfun.stage2`)."""

    k: GroupSumKernel
    lp0: tuple[np.ndarray, np.ndarray]
    tol: float
    maxit: int
    pirls_failures: int = 0
    state: PirlsState | None = None
    last: dict[str, Any] = field(default_factory=dict)
    beta: np.ndarray | None = None
    _key: bytes | None = None
    _value: float = float("nan")

    def stage2(self, x: np.ndarray, b_start: np.ndarray | None = None) -> float:
        x = np.asarray(x, dtype=float)
        if b_start is None and self._key == x.tobytes():
            return self._value
        th, beta = float(x[0]), x[1:]
        self._key = None
        # from lp0 (the function's own value): R_X, gradient and edge rows at the end; from a
        # warm start (the gradient phase): the gradient's sums
        flags = {"grad": True} if b_start is not None else {"grad": True, "xsums": True}
        flags["edge"] = b_start is None
        try:
            st, r = self.k.pirls_u(
                th,
                beta,
                start=self.lp0 if b_start is None else None,
                b_start=b_start,
                tol=self.tol,
                maxit=self.maxit,
                flags=flags,
            )
        except OutOfRange:
            if b_start is not None:
                # a far warm start: the in-memory path runs its clamped PIRLS from there; the
                # converged modes do not depend on the start, so restart from lp0 instead
                return self.stage2(x)
            raise ConvergenceError(
                "the linear predictor left |eta| <= 30 (lme4's clamps): the out-of-core glmer "
                "has no clamped PIRLS; compute() the data to fit it in memory"
            ) from None
        if not st.converged:
            self.pirls_failures += 1
        self.state, self.last, self.beta = st, r, beta
        value = self.k.laplace(st)
        self._key = x.tobytes() if b_start is None else None
        self._value = value
        return value

    def adopt(self, st: PirlsState, r: dict[str, Any], beta: np.ndarray) -> None:
        self.state, self.last, self.beta, self._key = st, r, beta, None


def initial_hessian(k: GroupSumKernel, theta: float) -> np.ndarray:
    """`glmer_gradient.initial_hessian` from the initial fit's factorization."""
    f = k.factor
    assert f is not None and f.rx is not None
    th = max(float(theta), 0.1)
    s = f.S
    h = np.zeros((1 + k.p,) * 2)
    h[0, 0] = 4.0 * th * th * float(np.sum((s / (1.0 + th * th * s)) ** 2))
    h[1:, 1:] = 2.0 * f.rx
    return h


def _no_value(x: np.ndarray) -> float:
    raise NotImplementedError


def optimize_stage2(dev: Devfun, x0: np.ndarray, lower: np.ndarray, h0: np.ndarray) -> OptSummary:
    """`glmer_gradient.optimize_stage2` (nAGQ = 1) over group sums."""
    k = dev.k
    count = [0]
    warm: dict[str, Any] = {}

    def fg(x: np.ndarray) -> tuple[float, np.ndarray]:
        count[0] += 1
        th = float(x[0])
        if warm and np.array_equal(x, warm["x"]):
            return warm["f"], warm["g"].copy()
        b0 = None
        if warm and warm["theta"] > 0:
            b0 = warm["b"] * (th / warm["theta"])
        if warm and "du_dx" in warm:
            b0 = th * (warm["u"] + warm["du_dx"] @ (x - warm["x"]))
            res = k.modes(th, x[1:], b0, dev.tol)
            if res is not None:
                st, r = res
                f = k.laplace(st)
                g_theta, g_beta, du_dx = k.gradient_from(th, r, st.u)
                dev.adopt(st, r, x[1:])
                g = np.concatenate([[g_theta], g_beta])
                warm.update(b=th * st.u, theta=th, u=st.u, du_dx=du_dx, x=x.copy())
                warm.update(f=f, g=g.copy())
                return f, g
        try:
            dev.stage2(x, b_start=b0)
            assert dev.state is not None
            if b0 is not None and not dev.state.converged:
                dev.stage2(x)
            assert dev.state is not None
            f = k.laplace(dev.state)
        except (ConvergenceError, np.linalg.LinAlgError):
            return np.inf, np.zeros_like(x)
        if not dev.state.converged or not np.isfinite(f):
            return np.inf, np.zeros_like(x)
        g_theta, g_beta, du_dx = k.gradient_from(th, dev.last, dev.state.u)
        warm.update(u=dev.state.u, du_dx=du_dx)
        g = np.concatenate([[g_theta], g_beta])
        warm.update(b=th * dev.state.u, theta=th, x=x.copy(), f=f, g=g.copy())
        return f, g

    run = optimizers.minimize("BFGS", _no_value, x0, lower, value_grad=fg, h0=h0)
    x, grad, hess = polished_hessian(fg, run.final, lower, 1)
    fx = dev.stage2(x)
    return OptSummary(
        "BFGS, analytic gradient",
        np.asarray(x0, dtype=float),
        x,
        fx,
        count[0] + 1,
        gradient=grad,
        hessian=hess,
    )


def probe_bound(dev: Devfun, opt: OptSummary, lower: np.ndarray, theta0: np.ndarray) -> OptSummary:
    """`glmer_gradient.probe_bound`: an optimum on θ = 0 is checked from inside the bound."""
    x = opt.final
    if not (x[0] - lower[0] < BOUNDARY_TOL):
        return opt
    f = optimizers.safe(dev.stage2)
    best: tuple[np.ndarray, float] | None = None
    n_probes = 0
    for theta in probe_points(x[:1], theta0, lower[:1]):
        xp = np.concatenate([theta, x[1:]])
        fp = f(xp)
        n_probes += 1
        if fp < opt.fval and (best is None or fp < best[1]):
            best = (xp, fp)
    opt.n_evals += n_probes
    if best is None:
        return opt
    alt = optimize_stage2(dev, best[0], lower, initial_hessian(dev.k, float(best[0][0])))
    if alt.fval < opt.fval:
        alt.n_evals += opt.n_evals
        alt.start = opt.start
        alt.status = "restarted from a probe inside the bound"
        return alt
    return opt


@dataclass
class GroupSumFit:
    """What the fit estimated (the caller builds the MixedFit): the optimum x = (θ, β), the
    deviance there and its PIRLS state and sums, the optimizer records."""

    x: np.ndarray
    fval: float
    opt: OptSummary
    info: dict[str, Any]
    dev: Devfun
    grad: np.ndarray
    hess: np.ndarray


def fit_group_sums(
    k: GroupSumKernel, tol: float, maxit: int, boundary: Callable[..., Any]
) -> GroupSumFit:
    """glmer's gradient path (`glmer.fit_spec` with `model.gradient`): the initial joint PIRLS
    at θ = 1, stage 2 from (1, β₀), the bound probes and lme4's boundary check (`boundary`:
    `checkconv.check_boundary`)."""
    theta0 = np.array([1.0])
    lower = np.array([0.0] + [-np.inf] * k.p)
    st0 = k.pirls_joint(1.0, tol, maxit)
    failures = 0 if st0.converged else 1
    assert st0.beta is not None
    beta1 = np.asarray(st0.beta, dtype=float)
    dev = Devfun(k, (beta1, 1.0 * st0.u), tol, maxit, pirls_failures=failures)
    info: dict[str, Any] = {
        "tol_pwrss": tol,
        "stage1": {"start": [1.0], "theta": [1.0], "fval": float("nan"), "n_evals": 0},
    }
    x0 = np.concatenate([theta0, beta1])
    h0 = initial_hessian(k, 1.0)
    opt = probe_bound(dev, optimize_stage2(dev, x0, lower, h0), lower, theta0)
    f2 = optimizers.safe(dev.stage2)
    x, fx = boundary(f2, opt.final, opt.fval, lower, ties=False)
    info["stage2"] = {
        "start": opt.start.tolist(),
        "fval": fx,
        "n_evals": opt.n_evals,
        "method": opt.method,
    }
    return GroupSumFit(x, fx, opt, info, dev, opt.gradient, opt.hessian)


# ---------------------------------------------------------------------------------------------
# Rows in memory, ordered by group and read in chunks of whole groups

# the sums with one row per group (the rest are scalars or p-vectors / p×p matrices)
GROUP_KEYS = ("S", "swmu", "swd", "sx", "sz", "sdW", "sxdW")


class SortedColumns:
    """A `RowSource` over columns held in memory, ordered by group: each pass reads them in
    chunks of about `chunk_rows` rows made of whole groups, so every temporary of the pass is
    chunk-sized (the memory of a pass is O(chunk + G), not O(n)) and the chunk's group sums
    are segment sums written straight into their slice of the result.

    `cols`: X's columns (None: the intercept), `y`, `w` (None: unit), `off` (None: zero) in
    group order; `counts`: rows per group; `init`: (y, w) of a chunk -> η from mustart."""

    def __init__(
        self,
        cols: list[np.ndarray | None],
        y: np.ndarray,
        w: np.ndarray | None,
        off: np.ndarray | None,
        counts: np.ndarray,
        logit: bool,
        init: Callable[[np.ndarray, np.ndarray | None], np.ndarray],
        chunk_rows: int = 1 << 16,
    ) -> None:
        self.cols, self.y, self.w, self.off = cols, y, w, off
        self.counts = np.asarray(counts, dtype=np.intp)
        self.n_groups = int(self.counts.size)
        self.logit, self.init = logit, init
        self.starts = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.intp)
        self.chunks: list[tuple[int, int]] = []
        ga = 0
        while ga < self.n_groups:
            gb = int(np.searchsorted(self.starts, self.starts[ga] + chunk_rows, side="right")) - 1
            gb = min(max(gb, ga + 1), self.n_groups)
            self.chunks.append((ga, gb))
            ga = gb

    def rows(self, ga: int, gb: int, with_init: bool = False) -> Rows:
        """The rows of groups [ga, gb) as a `Rows` block (X assembled chunk-sized)."""
        a, b = int(self.starts[ga]), int(self.starts[gb])
        X = np.empty((b - a, len(self.cols)))
        for k, c in enumerate(self.cols):
            X[:, k] = 1.0 if c is None else c[a:b]
        y = self.y[a:b]
        w = None if self.w is None else self.w[a:b]
        off = np.zeros(b - a) if self.off is None else self.off[a:b]
        eta_init = self.init(y, w) + off if with_init else off
        counts = self.counts[ga:gb]
        starts = self.starts[ga:gb] - a
        segments = (np.arange(gb - ga), starts, counts)
        return Rows(X, np.zeros(0, np.intp), y, w, off, eta_init, self.logit, gb - ga, segments)

    def run(self, req: Request) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for ga, gb in self.chunks:
            sub = replace(req, b=None if req.b is None else req.b[ga:gb])
            r = row_pass(self.rows(ga, gb, with_init=req.beta is None), sub)
            if not out:
                for key, v in r.items():
                    if key in GROUP_KEYS and v is not None:
                        full = np.zeros((self.n_groups, *np.shape(v)[1:]))
                        full[ga:gb] = v
                        out[key] = full
                    else:
                        out[key] = v
                continue
            for key, v in r.items():
                if key in GROUP_KEYS:
                    if v is not None:
                        out[key][ga:gb] = v
                elif key in ("offmax", "etamax"):
                    out[key] = max(out[key], v)
                else:
                    out[key] = out[key] + v
        return out

    def group_sums(self, v: Callable[[int, int], np.ndarray]) -> np.ndarray:
        """Σ_j of a per-row quantity given chunk by chunk (`v(a, b)` for rows [a, b))."""
        out = np.zeros(self.n_groups)
        for ga, gb in self.chunks:
            a, b = int(self.starts[ga]), int(self.starts[gb])
            out[ga:gb] = np.add.reduceat(v(a, b), self.starts[ga:gb] - a)
        return out
