"""Penalized iteratively reweighted least squares (PIRLS) for glmer, as lme4 runs it: ONE loop
over a PLS core and a GLM response (spec §3.2; src/external.cpp `pwrssUpdate`,
`internal_glmerWrkIter`).

    run_pirls(step, tol, maxit, strict) -> PirlsState

`step` (a `PirlsStep`) owns the linear predictor η and μ: `solve()` factorizes at the working
weights of the current μ and returns the new modes ũ (and β in the joint stage) with log|L|² of
that factorization; `update(u, β)` moves η, μ there and returns the penalized deviance. Two
kinds of steps: `CoreStep` (any core: `core.update(θ, √W)` + `solve`/`solve_u` with the
response's working quantities) and the fused (1|g) canonical-link steps of
`diagonal_canonical`, which compute the same quantities from group sums.

lme4 details reproduced exactly by the loop:
* the convergence test |pdev_old − pdev|/pdev < tolPwrss comes *before* step halving;
* step halving averages the new and previous (u, β) up to 20 times; NaN is an error;
* not lme4 (it errors): when the halvings stall within rounding of the previous iterate
  (`stalled`), the loop stops there, converged: see `PDEV_NOISE_REL`;
* the Laplace deviance uses log|L|² from the factorization made at the *start* of the last
  iteration (the weights of the previous μ), ‖ũ‖² and the family's aic at the final μ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from mixbridge.errors import ConvergenceError
from mixbridge.python_impl.pls import PlsCore
from mixbridge.python_impl.response import GlmResponse

DBL_MAX = float(np.finfo(float).max)
MAX_STEP_HALVINGS = 20
# After MAX_STEP_HALVINGS halvings the step is 2^-20 of a PIRLS step: the penalized deviance there
# differs from the previous iterate's only by the evaluation's rounding, which on some designs is
# ~5e-14 relative (sums of large deviance terms), above a tight tol_pwrss (1e-14, absolute in
# lme4's halving test). lme4 then errors ("step-halvings failed") or not by the luck of its
# rounding; we stop at the previous iterate, which is the optimum to rounding. A real failure
# (an ascent at step 2^-20, or NaN) is orders of magnitude above this bound and still an error.
PDEV_NOISE_REL = 1e-10


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

    def lin_pred(self, core: PlsCore) -> np.ndarray:
        """lme4's pp$linPred(1): Xβ + ZΛu (Xβ only in the joint stage)."""
        lp = core.Zb(self.u)
        return lp if self.beta is None else lp + core.Xb(self.beta)


class PirlsStep(Protocol):
    """One PIRLS problem (θ, start, offset fixed) as the loop sees it; see the module."""

    eta: np.ndarray
    mu: np.ndarray

    def solve(self) -> tuple[np.ndarray, np.ndarray | None, float]: ...

    def update(self, u: np.ndarray, beta: np.ndarray | None) -> float: ...

    def finish(self) -> None: ...


def run_pirls(step: PirlsStep, tol: float, maxit: int, strict: bool) -> PirlsState:
    """lme4's `pwrssUpdate` loop. Not `strict`: an iteration limit hands back the last iterate,
    flagged (converged=False), so that a fit on separated data (estimates drifting to ±∞) can
    finish with a warning instead of an error."""
    oldpdev = DBL_MAX
    u_old: np.ndarray | None = None
    beta_old: np.ndarray | None = None
    u = np.zeros(0)
    beta: np.ndarray | None = None
    pdev, ldL2, converged, it = oldpdev, 0.0, False, 0
    for it in range(1, maxit + 1):  # noqa: B007 (it is reported)
        u, beta, ldL2 = step.solve()  # ldL2: weights at the start of this iteration (lme4)
        pdev = step.update(u, beta)
        if abs((oldpdev - pdev) / pdev) < tol:
            converged = True
            break
        if np.isnan(pdev) or pdev > oldpdev:
            # step halving towards the previous iterate (lme4 averages delu/delb)
            for _ in range(MAX_STEP_HALVINGS):
                if not (np.isnan(pdev) or pdev > oldpdev):
                    break
                u = 0.5 * ((np.zeros_like(u) if u_old is None else u_old) + u)
                if beta is not None and beta_old is not None:
                    beta = 0.5 * (beta_old + beta)
                pdev = step.update(u, beta)
            if np.isnan(pdev):
                raise ConvergenceError("PIRLS loop resulted in NaN value")
            if stalled(pdev, oldpdev, tol) and u_old is not None:
                u, beta = u_old, beta_old
                pdev = step.update(u, beta)  # back at the previous iterate
                converged = True
                break
            if pdev - oldpdev > tol:
                raise ConvergenceError(
                    "PIRLS step-halvings failed to reduce the penalized deviance"
                )
        oldpdev = pdev
        u_old, beta_old = u, beta
    if not converged and strict:
        raise ConvergenceError(f"PIRLS (pwrssUpdate) did not converge in {maxit} iterations")
    step.finish()
    return PirlsState(u, beta, step.eta, step.mu, ldL2, pdev, it, converged)


def stalled(pdev: float, oldpdev: float, tol: float) -> bool:
    """Step halving ended above the previous iterate by more than `tol` but within the rounding
    of the penalized deviance (`PDEV_NOISE_REL`)."""
    return tol < pdev - oldpdev <= PDEV_NOISE_REL * abs(oldpdev)


class CoreStep:
    """A PIRLS step on any PLS core: working weights and response from the GLM response,
    `core.update(θ, √W)`, then `solve_u` (u-only stage: `offset` already holds Xβ) or the joint
    `solve` (nAGQ = 0 stage / stage 1: η = offset + Xβ + ZΛu)."""

    def __init__(
        self,
        core: PlsCore,
        resp: GlmResponse,
        theta: np.ndarray,
        eta_start: np.ndarray,
        offset: np.ndarray,
        u_only: bool,
    ) -> None:
        self.core, self.resp, self.theta = core, resp, theta
        self.offset, self.u_only = offset, u_only
        self.eta = np.asarray(eta_start, dtype=float)
        self.mu = resp.linkinv(self.eta)

    def solve(self) -> tuple[np.ndarray, np.ndarray | None, float]:
        sqrt_w, z = self.resp.working(self.eta, self.mu, self.offset)
        self.core.update(self.theta, sqrt_w)
        ldL2 = self.core.ldL2
        if self.u_only:
            return self.core.solve_u(z), None, ldL2
        beta, u = self.core.solve(z)
        return u, beta, ldL2

    def update(self, u: np.ndarray, beta: np.ndarray | None) -> float:
        eta = self.offset + self.core.Zb(u)
        if beta is not None:
            eta = eta + self.core.Xb(beta)
        self.eta = eta
        self.mu = self.resp.linkinv(eta)
        return float(np.sum(self.resp.dev_resids(self.mu)) + u @ u)

    def finish(self) -> None:
        """The core keeps the factorization of the last `solve` (cond_var, AGQ's sd)."""


def pirls(
    core: PlsCore,
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
    """lme4's `pwrssUpdate` from the linear predictor `eta_start` on any core (`CoreStep`).

    Joint stage (`u_only=False`, lme4's nAGQ = 0 / stage 1): (β, u) solved together and η =
    offset + Xβ + ZΛu. u-only stage (stage 2): `offset` already contains Xβ and η = offset + ZΛu.
    """
    step = CoreStep(core, resp, theta, eta_start, offset, u_only)
    return run_pirls(step, tol, maxit, strict)
