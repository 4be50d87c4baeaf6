"""glmer's gradient path over group sums (`glmer.fit_spec` with `model.gradient`, step for
step): the initial joint PIRLS at θ = 1, stage 2 by `glmer_gradient.minimize_stage2` (BFGS on
the converged Laplace deviance with its analytic gradient, the same optimizer as for rows in
memory) on `GroupSumDevfun`, the bound probes and lme4's boundary check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mixbridge.errors import ConvergenceError
from mixbridge.python_impl import optimizers
from mixbridge.python_impl.glmer_gradient import (
    ModesValue,
    initial_hessian_from,
    minimize_stage2,
    probe_bound_from_inside,
)
from mixbridge.python_impl.group_sum_kernel import GroupSumKernel, OutOfRange
from mixbridge.python_impl.optsummary import OptSummary
from mixbridge.python_impl.pirls import PirlsState


@dataclass
class GroupSumDevfun:
    """The stage-2 deviance function (θ, β) → Laplace deviance, PIRLS restarted from the linear
    predictor lp0 = (β₀, b₀) of the initial fit (`glmer_devfun.Devfun.stage2`); with the
    warm-started modes and gradient of the group-sum kernel, it is the `Stage2Path` of
    `glmer_gradient.minimize_stage2`."""

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

    # -- glmer_gradient.Stage2Path --
    def warm_modes(
        self, x: np.ndarray, b0: np.ndarray, agq: bool, laplace_gradient: bool
    ) -> ModesValue | None:
        assert not agq  # the group-sum kernel has no AGQ (nAGQ = 1)
        k, th = self.k, float(x[0])
        res = k.modes(th, x[1:], b0, self.tol)
        if res is None:
            return None
        st, r = res
        f = k.laplace(st)
        g_theta, g_beta, du_dx = k.gradient_from(th, r, st.u)
        self.adopt(st, r, x[1:])
        return ModesValue(f, np.concatenate([[g_theta], g_beta]), st.u, du_dx)

    def pirls_value(self, x: np.ndarray, b0: np.ndarray | None) -> tuple[float, bool]:
        self.stage2(x, b_start=b0)
        assert self.state is not None
        if b0 is not None and not self.state.converged:
            self.stage2(x)
        assert self.state is not None
        return self.k.laplace(self.state), self.state.converged

    def pirls_gradient(self, theta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        assert self.state is not None
        g_theta, g_beta, du_dx = self.k.gradient_from(theta, self.last, self.state.u)
        return np.concatenate([[g_theta], g_beta]), self.state.u, du_dx


def initial_hessian(k: GroupSumKernel, theta: float) -> np.ndarray:
    """`glmer_gradient.initial_hessian_from` the initial fit's factorization."""
    f = k.factor
    assert f is not None and f.rx is not None
    return initial_hessian_from(theta, f.S, f.rx)


def optimize_stage2(
    dev: GroupSumDevfun, x0: np.ndarray, lower: np.ndarray, h0: np.ndarray
) -> OptSummary:
    """`glmer_gradient.minimize_stage2` (nAGQ = 1) over group sums."""
    return minimize_stage2(dev, x0, lower, h0, 1)


def probe_bound(
    dev: GroupSumDevfun, opt: OptSummary, lower: np.ndarray, theta0: np.ndarray
) -> OptSummary:
    """`glmer_gradient.probe_bound_from_inside`: an optimum on θ = 0 is checked from inside."""

    def restart(x: np.ndarray) -> OptSummary:
        return optimize_stage2(dev, x, lower, initial_hessian(dev.k, float(x[0])))

    return probe_bound_from_inside(dev.stage2, opt, theta0, lower[:1], restart)


@dataclass
class GroupSumFit:
    """What the fit estimated (the caller builds the MixedFit): the optimum x = (θ, β), the
    deviance there and its PIRLS state and sums, the optimizer records."""

    x: np.ndarray
    fval: float
    opt: OptSummary
    info: dict[str, Any]
    dev: GroupSumDevfun
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
    dev = GroupSumDevfun(k, (beta1, 1.0 * st0.u), tol, maxit, pirls_failures=failures)
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
