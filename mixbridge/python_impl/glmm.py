"""lme4's glmer in pure Python (engine="python"): Laplace and adaptive Gauss–Hermite GLMMs.

Pipeline (spec §3):

    formula, data -> MixedTerms (mixbridge.formula) -> GlmResponse + predictor
        -> deviance functions (PIRLS -> Laplace / AGQ), pure functions of their parameters
        -> stage 1: θ with β inside PIRLS;  stage 2: (θ, β) with u-only PIRLS
        -> MixedFit

A single scalar random-effects term (`(1|g)`) uses `ScalarPredictor` (O(n) per PIRLS step, L
diagonal); with a canonical link its PIRLS runs in the fused group-level form of
`ScalarCanonicalKernel` and AGQ in the hoisted node loop of `agq.py`. Big data (≥
GRADIENT_MIN_ROWS rows) get rows ordered by group and an analytic-gradient stage 2 (Laplace, then
for nAGQ > 1 the AGQ deviance with its exact gradient). Several scalar terms (crossed, nested,
`||`) use the blocked `ScalarTermsPredictor`; vector-valued terms use the shared `Predictor`. Every
deviance evaluation restarts PIRLS from the stored linear predictor lp0, as lme4 does, so the
objective is deterministic and reproduces lme4's devfun including its PIRLS stopping quirk (the
gradient phase alone warm-starts the modes: it works on the fully converged deviance, which does
not depend on the start).

One function per fit: the deviance function is lme4's at the model's PIRLS tolerance `tol_pwrss`
(lme4's default 1e-7 below GRADIENT_MIN_ROWS rows; TIGHT_TOL, the converged Laplace/AGQ deviance,
from there on; or what `control` says). The fit minimizes it, reports it at its estimates
(-2 logLik, up to the saturated constant for nAGQ > 1), `fit.objective` and `glmer_objective`
evaluate it (same start lp0, same tolerance). The converged deviance is the one to optimize on big
data: lme4's stopping rule (|Δpdev|/pdev < 1e-7) leaves log|L|² from the previous iteration's
weights, an error that grows with the number of groups (+0.38 at 20,000) and bends its optimum.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize as sopt

from mixbridge.errors import ArgumentError, ConvergenceError, DataError
from mixbridge.python_impl.agq import (
    MAX_NAGQ,
    agq_deviance,
    agq_deviance_fast,
    agq_value_gradient,
)
from mixbridge.python_impl.pirls import (
    CANONICAL,
    GlmResponse,
    PirlsState,
    ScalarCanonicalKernel,
    ScalarPredictor,
    ScalarTermsPredictor,
    pirls,
    saturated_log_lik,
    scalar_laplace_gradient,
)
from mixbridge.results import Message, MixedFit

SUPPORTED = {"binomial": ("logit", "probit", "cloglog"), "poisson": ("log",)}
AGQ_SCALAR_ONLY = "nAGQ > 1 is only available for models with a single, scalar random-effects term"
SINGULAR_TEXT = "boundary (singular) fit: see help('isSingular')"
BOUNDARY_TOL = 1e-5  # glmerControl boundary.tol


# ---------------------------------------------------------------------------------------------
# Model setup: terms -> response + predictor


@dataclass
class GlmerModel:
    """Everything fixed for a fit: terms, response, predictor, θ layout and the PIRLS controls."""

    terms: Any
    resp: GlmResponse
    pred: Any
    scalar: bool
    theta0: np.ndarray
    theta_lower: np.ndarray
    eta_init: np.ndarray
    nagq: int
    tol: float
    maxit: int
    messages: list[Message]
    # big (1|g) models are fitted with their rows ordered by group (`_group_order`): resp, pred
    # and eta_init hold the ordered rows, `rows` the order and `x_rows` the ordered X
    rows: np.ndarray | None = None
    x_rows: np.ndarray | None = None
    # the structure allows the analytic-gradient stage 2 (one scalar term, canonical link)
    gradient_capable: bool = False

    @property
    def gradient(self) -> bool:
        """Stage 2 by the analytic gradient (no stage-1 optimization): its gradient is that of
        the converged deviance, so only when the deviance function is the converged one."""
        return self.gradient_capable and self.nagq >= 1 and self.tol <= TIGHT_TOL

    @property
    def n_theta(self) -> int:
        return self.theta0.size

    @property
    def X(self) -> np.ndarray:
        return self.terms.X if self.x_rows is None else self.x_rows

    def unsort(self, a: np.ndarray) -> np.ndarray:
        """A row vector of the fit back in the data's row order."""
        if self.rows is None:
            return a
        out = np.empty_like(a)
        out[self.rows] = a
        return out

    def lambda_blocks(self, theta: np.ndarray) -> list[np.ndarray]:
        if self.scalar:
            return [np.array([[float(theta[0])]])]
        return self.pred.lambda_blocks(theta)


def _control(control: dict[str, Any] | None) -> tuple[float | None, int]:
    """(tol_pwrss or None for the default, maxit) from `control`."""
    control = dict(control or {})
    tol = control.pop("tol_pwrss", None)
    tol = None if tol is None else float(tol)
    maxit = int(control.pop("maxit", 100))
    if control:
        raise ArgumentError(
            f"unknown glmer control option(s): {', '.join(sorted(control))}; "
            "supported: tol_pwrss, maxit",
            "control",
        )
    if tol is not None and not tol > 0:
        raise ArgumentError(f"control tol_pwrss must be > 0, got {tol}", "control")
    return tol, maxit


def default_tol_pwrss(n_rows: int) -> float:
    """The PIRLS tolerance of the deviance function when `control` sets none: lme4's below
    GRADIENT_MIN_ROWS rows, the converged deviance's (TIGHT_TOL) from there on."""
    return TIGHT_TOL if n_rows >= GRADIENT_MIN_ROWS else LME4_TOL_PWRSS


def build_model(
    formula: str,
    data: pd.DataFrame,
    *,
    family: str,
    link: str | None,
    nagq: int,
    weights: Any,
    offset: Any,
    control: dict[str, Any] | None,
    frame: Any = None,
) -> GlmerModel:
    """The model terms (from the input checks' evaluated `frame` when given), family and
    starting values."""
    from mixbridge.formula import build_mixed_terms
    from mixbridge.python_impl.families import get_family

    tol_given, maxit = _control(control)
    if family not in SUPPORTED:
        raise ArgumentError(
            f"glmer (engine='python') supports families {', '.join(SUPPORTED)}, not {family!r}",
            "family",
        )
    link = SUPPORTED[family][0] if link is None else link
    if link not in SUPPORTED[family]:
        raise ArgumentError(
            f"link {link!r} is not supported for glmer {family}; use one of "
            f"{', '.join(SUPPORTED[family])}",
            "link",
        )
    if not 0 <= nagq <= MAX_NAGQ:
        raise ArgumentError(f"nagq must be an integer from 0 to {MAX_NAGQ}, got {nagq}", "nagq")
    fam = get_family(family, link)
    terms = build_mixed_terms(
        formula, data, weights=weights, offset=offset, model="glmer", family=family, frame=frame
    )
    messages = list(terms.messages)
    y = np.asarray(terms.y, dtype=float)
    w = np.asarray(terms.weights, dtype=float)
    off = np.asarray(terms.offset, dtype=float)
    _check_response(terms, fam, y, w, off, messages)
    init = fam.initialize(y, w, n_trials=terms.n_trials, response=terms.response_name)
    for text in init.warnings:
        messages.append(Message("warning", text, "python", code="non_integer"))
    y0, w0, n0 = np.asarray(init.y), np.asarray(init.weights), np.asarray(init.n)
    eta_init = off + np.asarray(fam.linkfun(init.mustart), dtype=float)

    reterms = list(terms.reterms)
    scalar = len(reterms) == 1 and reterms[0].p == 1
    if nagq > 1 and not scalar:
        raise ArgumentError(AGQ_SCALAR_ONLY, "nagq")
    rows, x_rows = None, None
    if scalar:
        t = reterms[0]
        zcol = np.asarray(t.Z, dtype=float)[:, 0]
        zvals = None if np.all(zcol == 1.0) else zcol
        codes = np.asarray(t.codes)
        rows = _group_order(codes, t.n_levels, zvals is None and (family, link) in CANONICAL)
        if rows is not None:
            # every group's rows contiguous: per-group sums become np.add.reduceat over
            # segments and ZΛu an np.repeat (no scattered memory access in the O(n) passes)
            X = np.asarray(terms.X, dtype=float)
            x_rows = np.empty(X.shape, order="F")
            for k in range(X.shape[1]):
                np.take(X[:, k], rows, out=x_rows[:, k])
            counts = np.bincount(codes, minlength=t.n_levels)
            codes = np.repeat(np.arange(t.n_levels), counts)  # = codes[rows], without a gather
            y0, w0, n0, off, eta_init = (_rows_of(a, rows) for a in (y0, w0, n0, off, eta_init))
        pred: Any = ScalarPredictor(terms.X if x_rows is None else x_rows, codes, t.n_levels, zvals)
        theta0, lower = np.ones(1), np.zeros(1)
    elif all(t.p == 1 for t in reterms) and sum(t.n_levels for t in reterms[1:]) <= (
        ScalarTermsPredictor.MAX_Q2
    ):
        # crossed/nested scalar terms of moderate size: dense PLS, cheap per PIRLS iteration
        pred = ScalarTermsPredictor(terms.X, reterms)
        theta0, lower = np.ones(len(reterms)), np.zeros(len(reterms))
    else:
        from mixbridge.python_impl.predictor import Predictor, lower_bounds, theta_start

        pred = Predictor(terms)
        theta0, lower = theta_start(reterms), lower_bounds(reterms)
    resp = GlmResponse(fam, y0, w0, off, n0)
    tol = default_tol_pwrss(terms.n) if tol_given is None else tol_given
    gradient_capable = (
        scalar
        and (nagq <= 1 or pred.zvals is None)  # AGQ: the fused (1|g) kernel
        and (family, link) in CANONICAL
    )
    return GlmerModel(
        terms,
        resp,
        pred,
        scalar,
        theta0,
        lower,
        eta_init,
        nagq,
        tol,
        maxit,
        messages,
        rows,
        x_rows,
        bool(gradient_capable),
    )


def _rows_of(a: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """a[rows], except that a constant column (unit weights, a zero offset, single trials)
    stays what it is: reordering it is a no-op, and a gather costs a pass over n rows."""
    if a.strides == (0,) or (a.size and a[0] == a[-1] and np.all(a == a[0])):
        return np.broadcast_to(a[:1], a.shape) if a.size else a
    return a[rows]


def _group_order(codes: np.ndarray, n_levels: int, fused: bool) -> np.ndarray | None:
    """The rows ordered by group (stable) for a big (1|g) model with a canonical link (`fused`)
    whose levels all have rows; None otherwise, or when the rows already are in that order."""
    if not fused or codes.size < max(2, GRADIENT_MIN_ROWS):
        return None
    if np.all(codes[1:] >= codes[:-1]):
        return None
    if np.any(np.bincount(codes, minlength=n_levels) == 0):
        return None
    # small integer keys sort by radix sort, ~3x faster than the generic stable sort
    keys = codes.astype(np.uint16) if n_levels <= 65536 else codes
    return np.argsort(keys, kind="stable")


def _check_response(
    terms: Any, fam: Any, y: np.ndarray, w: np.ndarray, off: np.ndarray, messages: list[Message]
) -> None:
    """Bad input becomes a DataError naming the column; doubtful input a warning Message."""
    name = terms.response_name
    if not np.all(np.isfinite(y)):
        raise DataError(f"response {name!r} has non-finite values", name)
    if np.any(w < 0) or not np.all(np.isfinite(w)):
        raise DataError(
            f"weights must be finite and >= 0 ({int(np.sum(w < 0))} negative)", "weights"
        )
    if not np.all(np.isfinite(off)):
        raise DataError("offset has non-finite values", "offset")
    if fam.family == "binomial" and (np.any(y < 0) or np.any(y > 1)):
        bad = np.flatnonzero((y < 0) | (y > 1))
        raise DataError(
            f"binomial response {name!r} must be 0/1, a proportion in [0, 1] or cbind(successes,"
            f" failures) with non-negative counts; {bad.size} rows outside (first: row "
            f"{int(bad[0])}, value {y[bad[0]]:g})",
            name,
        )
    if fam.family == "binomial" and terms.n_trials is not None:
        n = np.asarray(terms.n_trials, dtype=float)
        if np.any(n < 0):
            raise DataError(f"cbind() response {name!r} has negative counts", name)
    if np.ptp(y) == 0:
        raise DataError(f"response {name!r} is constant", name)
    if fam.family == "poisson" and np.any(y < 0):
        raise DataError(f"poisson response {name!r} has negative values", name)


# ---------------------------------------------------------------------------------------------
# The deviance functions (lme4's devfun for stage 1 and stage 2)


class Devfun:
    """lme4's glmer deviance functions over one model, restarting PIRLS from lp0 every time.

    `stage1(theta)`: joint (u, β) PIRLS, Laplace deviance (lme4's nAGQ = 0 devfun).
    `stage2(params)`: params = (θ, β); u-only PIRLS with offset o + Xβ; Laplace or AGQ.
    After any call, `self.state` and the predictor hold that evaluation's PIRLS state.
    """

    def __init__(self, model: GlmerModel) -> None:
        self.m = model
        self.pirls_failures = 0
        self.base_offset = model.resp.offset
        # (1|g) with a canonical link: stage-2 PIRLS in fused group-level form (same function)
        self.kernel: ScalarCanonicalKernel | None = None
        if (
            model.scalar
            and model.pred.zvals is None
            and (model.resp.family_name, model.resp.link) in CANONICAL
        ):
            self.kernel = ScalarCanonicalKernel(model.pred, model.resp)
        self._last_key: tuple[Any, ...] | None = None
        self._last_value = float("nan")
        # initial joint PIRLS at θ0 from mustart (mkGlmerDevfun) gives the first lp0
        st = self._joint(model.theta0, model.eta_init)
        self.lp0 = st.lin_pred(model.pred)
        self.state: PirlsState = st
        self.n_evals = 0

    def _pirls(
        self,
        theta: np.ndarray,
        eta: np.ndarray,
        offset: np.ndarray,
        u_only: bool,
        tol: float | None = None,
    ) -> PirlsState:
        m = self.m
        st = pirls(
            m.pred,
            m.resp,
            theta,
            eta,
            offset,
            u_only=u_only,
            tol=m.tol if tol is None else tol,
            maxit=m.maxit,
            strict=False,
        )
        if not st.converged:
            self.pirls_failures += 1
        return st

    def _joint(self, theta: np.ndarray, eta0: np.ndarray) -> PirlsState:
        """Joint (β, u) PIRLS from η = eta0 (fused when the model allows it)."""
        m = self.m
        if self.kernel is not None:
            st = self.kernel.pirls_joint(float(theta[0]), eta0, self.base_offset, m.tol, m.maxit)
            if st is not None:
                if not st.converged:
                    self.pirls_failures += 1
                return st
        return self._pirls(theta, eta0, self.base_offset, u_only=False)

    def stage1(self, theta: np.ndarray) -> float:
        self._last_key = None
        self.n_evals += 1
        theta = np.asarray(theta, dtype=float)
        st = self._joint(theta, self.base_offset + self.lp0)
        self.state = st
        return st.laplace(self.m.resp)

    @property
    def lp0(self) -> np.ndarray:
        """The linear predictor every lme4-style evaluation restarts PIRLS from."""
        return self._lp0

    @lp0.setter
    def lp0(self, value: np.ndarray) -> None:
        self._lp0 = value
        self._last_key = None  # the remembered evaluation started from the old lp0

    def start_stage2(self) -> None:
        """lp0 <- the linear predictor of the last evaluation (the stage-1 optimum)."""
        self.lp0 = self.state.lin_pred(self.m.pred)

    def stage2(
        self, params: np.ndarray, tol: float | None = None, b_start: np.ndarray | None = None
    ) -> float:
        """`b_start` (group effects Λu to start PIRLS from, instead of lp0) is for the
        converged-Laplace gradient phase only, where the start does not change the value."""
        self.n_evals += 1
        m = self.m
        params = np.asarray(params, dtype=float)
        key = (params.tobytes(), tol)
        if b_start is None and key == self._last_key:
            # the same evaluation as the last one (e.g. the re-evaluation at the optimum): the
            # state and the predictor's factorization still belong to it
            return self._last_value
        theta, beta = params[: m.n_theta], params[m.n_theta :]
        offset = self.base_offset + m.X @ beta
        st = None
        if self.kernel is not None:
            st = self.kernel.pirls_u(
                float(theta[0]),
                offset,
                eta_start=self.base_offset + self.lp0 if b_start is None else None,
                b_start=b_start,
                tol=m.tol if tol is None else tol,
                maxit=m.maxit,
                strict=False,
            )
            if st is not None and not st.converged:
                self.pirls_failures += 1
        from_kernel = st is not None
        if st is None:
            if b_start is None:
                eta0 = self.base_offset + self.lp0
            else:  # one scalar term: b_start[g] times the term's values
                zb = np.asarray(b_start, dtype=float)[m.pred.codes]
                eta0 = offset + (zb if m.pred.zvals is None else zb * m.pred.zvals)
            st = self._pirls(theta, eta0, offset, u_only=True, tol=tol)
        self.state = st
        self.offset = offset
        if m.nagq <= 1:
            value = st.laplace(m.resp)
        else:
            value = None
            if self.kernel is not None and from_kernel:
                value = agq_deviance_fast(self.kernel, st, float(theta[0]), m.nagq)
            if value is None:
                value = agq_deviance(m.pred, m.resp, st, offset, m.nagq)
        self._last_key = key if b_start is None else None
        self._last_value = value
        return value


def _safe(f: Callable[[np.ndarray], float]) -> Callable[[np.ndarray], float]:
    """Inside an optimizer a failed PIRLS (lme4 would stop) is an infinitely bad point."""

    def g(x: np.ndarray) -> float:
        try:
            v = f(x)
        except (ConvergenceError, np.linalg.LinAlgError, FloatingPointError):
            return np.inf
        return v if np.isfinite(v) else np.inf

    return g


# ---------------------------------------------------------------------------------------------
# Optimization


def _nelder_mead(
    f: Callable[[np.ndarray], float],
    x0: np.ndarray,
    step: np.ndarray,
    lower: np.ndarray,
    maxfev: int,
) -> tuple[np.ndarray, float, int]:
    """Bounded Nelder–Mead from a lme4-style axis simplex, restarted until it stops improving.

    lme4's stage 2 stops at FtolAbs = 1e-5; we stop at a spread of 1e-9·|f| (|f| ~ 1e2..1e6, so
    at least as tight for the data sets that matter, and scale-free for big ones) and restart with
    a fresh, smaller simplex (a standard guard against NM's premature collapse) until a restart
    gains less than that, so our optimum is at least as good as lme4's.
    """
    bounds = [(lo if np.isfinite(lo) else None, None) for lo in lower]
    x, fx, nfev = np.asarray(x0, dtype=float), f(x0), 1
    ftol = 1e-9 * max(1.0, abs(fx)) if np.isfinite(fx) else 1e-8
    for _ in range(2):
        simplex = np.vstack([x] + [x + step[i] * np.eye(x.size)[i] for i in range(x.size)])
        simplex = np.maximum(simplex, np.where(np.isfinite(lower), lower, -np.inf))
        res = sopt.minimize(
            f,
            x,
            method="Nelder-Mead",
            bounds=bounds,
            options={
                "initial_simplex": simplex,
                "xatol": 1e-5,
                "fatol": ftol,
                "maxfev": maxfev,
                "adaptive": False,
            },
        )
        nfev += int(res.nfev)
        improved = fx - float(res.fun)
        if float(res.fun) <= fx:
            x, fx = np.asarray(res.x, dtype=float), float(res.fun)
        step = step * 0.1
        if improved < ftol:
            break
    return x, fx, nfev


def _optimize_stage1(dev: Devfun, model: GlmerModel) -> tuple[np.ndarray, float, int]:
    f = _safe(dev.stage1)
    if model.scalar:
        # 1-D: bounded Brent on [0, hi] (expanding hi when the minimum sits at its end), and θ = 0
        hi, nfev = 10.0, 0
        xatol = 1e-10
        while True:
            res = sopt.minimize_scalar(
                lambda t: f(np.array([t])),
                bounds=(0.0, hi),
                method="bounded",
                options={"xatol": xatol, "maxiter": 500},
            )
            nfev += int(res.nfev)
            if res.x < 0.99 * hi or hi > 1e4:
                break
            hi *= 10.0
        theta, fval = np.array([float(res.x)]), float(res.fun)
        f0 = f(np.zeros(1))
        if f0 <= fval:
            theta, fval = np.zeros(1), f0
        return theta, fval, nfev + 1
    step = 0.2 * np.maximum(np.abs(model.theta0), 1.0)
    return _nelder_mead(f, model.theta0, step, model.theta_lower, 10000)


# From this many rows the default deviance function is the converged one (tol_pwrss =
# TIGHT_TOL): lme4's stopping rule leaves an error in log|L|² that grows with the number of groups
# (spec §3.2: ~1e-3 on small data; +0.38 on 200,000 rows in 20,000 groups) and moves the optimum.
# A single scalar term with a canonical link is then optimized with the analytic Laplace (and AGQ)
# gradient: a few dozen O(n) evaluations instead of hundreds of Nelder–Mead ones. A module
# setting: lower it to get the big-data path (and function) on smaller data.
GRADIENT_MIN_ROWS = 50_000
LME4_TOL_PWRSS = 1e-7  # glmerControl()$tolPwrss
# PIRLS tolerance at which the Laplace (AGQ) value is converged, from any start: smooth in (θ, β).
# Not 1e-10: pdev settles quadratically but log|L|² (from the weights of the iteration before)
# only linearly, so PIRLS restarted from lp0 and stopped at 1e-10 can still be 1.5e-3 off
# (60,000 rows); at 1e-12 the start moves it by ~3e-11 relative (8e-6 at 200,000 rows).
TIGHT_TOL = 1e-12


def _initial_hessian(model: GlmerModel, theta: np.ndarray) -> np.ndarray:
    """A cheap approximation of the stage-2 Hessian from the initial PIRLS fit: 2 R_X'R_X for β
    (lme4's R_X-based vcov is its inverse) and, for θ, twice the Fisher information of the
    normal approximation, 4θ² Σ_j (S_j/d_j)². Only the optimizer's starting metric."""
    pred = model.pred
    th = max(float(theta[0]), 0.1)
    s = pred._s
    h = np.zeros((1 + model.X.shape[1],) * 2)
    h[0, 0] = 4.0 * th * th * float(np.sum((s / (1.0 + th * th * s)) ** 2))
    h[1:, 1:] = 2.0 * pred._rx_matrix()
    return h


def _quasi_newton(
    fg: Callable[[np.ndarray], tuple[float, np.ndarray]],
    x0: np.ndarray,
    h0: np.ndarray,
    maxiter: int = 60,
) -> tuple[np.ndarray, np.ndarray] | None:
    """BFGS from the metric h0 with backtracking, for the smooth converged Laplace deviance.

    With a good h0 the first step is already Newton-like, so this needs about half of
    L-BFGS-B's evaluations (which starts from the identity). Stops when the Newton decrement
    g'B⁻¹g < 1e-11 (f within ~5e-12 of the optimum of the local quadratic model) and returns
    (x, B), B the final BFGS matrix. Returns None
    (the caller then runs L-BFGS-B) when a step would cross θ = 0 or the search stalls: near the
    boundary the bounded method is the right tool.
    """
    x = np.asarray(x0, dtype=float)
    f, g = fg(x)
    if not np.isfinite(f):
        return None
    B = np.array(h0, dtype=float)
    for _ in range(maxiter):
        try:
            p = -np.linalg.solve(B, g)
        except np.linalg.LinAlgError:
            return None
        slope = float(g @ p)
        if not slope < 0:
            return None
        if -slope < 1e-11:
            return x, B
        alpha = 1.0
        for _ in range(30):
            xn = x + alpha * p
            if xn[0] <= 0:
                return None
            fn, gn = fg(xn)
            # Armijo, with an allowance for rounding in f (~1e-13 relative for sums over 1e6 rows)
            if np.isfinite(fn) and fn <= f + 1e-4 * alpha * slope + 1e-13 * abs(f):
                break
            alpha *= 0.5
        else:
            return None
        sk, yk = xn - x, gn - g
        sy = float(sk @ yk)
        if sy > 1e-12 * float(np.linalg.norm(sk) * np.linalg.norm(yk)):
            bs = B @ sk
            B = B - np.outer(bs, bs) / float(sk @ bs) + np.outer(yk, yk) / sy
        x, f, g = xn, fn, gn
    return None


class _NoFastPath(Exception):
    """The fused AGQ path does not apply at some trial point (|η| beyond lme4's clamps)."""


def _optimize_stage2_gradient(
    dev: Devfun, model: GlmerModel, x0: np.ndarray, lower: np.ndarray, h0: np.ndarray
) -> tuple[np.ndarray, float, int, tuple[np.ndarray, np.ndarray]]:
    """Stage 2 by quasi-Newton (BFGS from an approximate Hessian; L-BFGS-B near the boundary)
    on the converged Laplace deviance with its analytic gradient; the Hessian (for vcov and the
    convergence checks) by central differences of that gradient.

    nAGQ > 1: the same, first on the Laplace deviance (cheap), then on the AGQ deviance with its
    exact gradient (`agq_value_gradient`) from the Laplace optimum and the Laplace BFGS metric,
    which is close to the AGQ optimum and Hessian, so that few AGQ evaluations are needed.
    """
    nth = model.n_theta
    count = [0]
    warm: dict[str, Any] = {}
    kernel = dev.kernel
    want_laplace_grad = [False]

    def evaluate(x: np.ndarray, agq: bool) -> tuple[float, np.ndarray]:
        count[0] += 1
        th = float(x[0])
        if warm and warm["agq"] == agq and np.array_equal(x, warm["x"]):
            return warm["f"], warm["g"].copy()
        b0 = None
        if warm and warm["theta"] > 0:  # previous modes, rescaled to the new θ
            b0 = warm["b"] * (th / warm["theta"])
        if kernel is not None and warm and "du_dx" in warm:
            # warm start to first order: ũ(x) ≈ ũ(x_prev) + dũ/dx·(x − x_prev), so that a
            # single Newton step usually converges (at θ = 0 the modes are 0: b0 = 0)
            b0 = th * (warm["u"] + warm["du_dx"] @ (x - warm["x"]))
            offset = dev.base_offset + model.X @ x[nth:]
            r = kernel.modes(th, offset, b0, model.tol)
            res = None
            if r is not None:
                st, W, S, swmu = r
                if agq:
                    res = agq_value_gradient(kernel, st, th, W, S, swmu, model.nagq)
                    if res is None:
                        raise _NoFastPath
                    if want_laplace_grad[0]:  # for the Hessian: the Laplace one at these modes
                        gl = kernel._gradient_from(th, W, S, swmu, st.mu, st.u)
                        warm["g_laplace"] = np.concatenate([[gl[0]], gl[1]])
                else:
                    res = (
                        st.laplace(model.resp),
                        *kernel._gradient_from(th, W, S, swmu, st.mu, st.u),
                    )
            if res is not None:
                f, g_theta, g_beta = res
                dev.state, dev.offset, dev._last_key = st, offset, None
                g = np.concatenate([[g_theta], g_beta])
                warm.update(b=th * st.u, theta=th, u=st.u, du_dx=kernel.du_dx, x=x.copy())
                warm.update(f=f, g=g.copy(), agq=agq)
                return f, g
        if agq:
            raise _NoFastPath
        try:
            dev.stage2(x, b_start=b0)
            if b0 is not None and not dev.state.converged:
                dev.stage2(x)  # a far jump: restart from lp0 instead
            f = dev.state.laplace(model.resp)
        except (ConvergenceError, np.linalg.LinAlgError):
            return np.inf, np.zeros_like(x)
        if not dev.state.converged or not np.isfinite(f):
            return np.inf, np.zeros_like(x)
        if kernel is not None:
            g_theta, g_beta = kernel.gradient(dev.state, th)
            warm.update(u=dev.state.u, du_dx=kernel.du_dx)
        else:
            g_theta, g_beta = scalar_laplace_gradient(model.pred, model.resp, dev.state, th)
        g = np.concatenate([[g_theta], g_beta])
        warm.update(b=th * dev.state.u, theta=th, x=x.copy(), f=f, g=g.copy(), agq=agq)
        return f, g

    def minimize(fg: Callable[[np.ndarray], tuple[float, np.ndarray]], xs, hs) -> tuple:
        r = _quasi_newton(fg, xs, hs)
        if r is not None:
            return r
        bounds = [(lo if np.isfinite(lo) else None, None) for lo in lower]
        res = sopt.minimize(
            fg,
            xs,
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"ftol": 1e-15, "gtol": 1e-7, "maxiter": 500, "maxcor": 20},
        )
        return np.asarray(res.x, dtype=float), hs

    def fg(x: np.ndarray) -> tuple[float, np.ndarray]:
        return evaluate(x, False)

    x, metric = minimize(fg, x0, h0)
    if model.nagq > 1:

        def fg(x: np.ndarray) -> tuple[float, np.ndarray]:
            return evaluate(x, True)

        want_laplace_grad[0] = True  # at every AGQ point: the Hessian needs it at the optimum
        x, _ = minimize(fg, x, metric)
    _, grad = fg(x)
    hess = np.zeros((x.size, x.size))
    if model.nagq > 1:
        # H_AGQ = H_Laplace (central differences, cheap evaluations) + H_R, R = AGQ − Laplace
        # by forward differences: R is the small quadrature correction, so its third
        # derivatives — the forward-difference error — are far below the Laplace ones
        if "g_laplace" not in warm or not np.array_equal(warm["x"], x):
            warm["agq"] = None  # evaluate again, with the Laplace gradient
            evaluate(x, True)
        r0 = grad - warm["g_laplace"]
    for i in range(x.size):
        h = 1e-4 * max(1.0, abs(x[i]))
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] = max(x[i] - h, lower[i]) if i < nth else x[i] - h
        if model.nagq > 1:
            ga = evaluate(xp, True)[1]
            gl = warm["g_laplace"]
            hess[:, i] = (gl - evaluate(xm, False)[1]) / (xp[i] - xm[i])
            hess[:, i] += (ga - gl - r0) / (xp[i] - x[i])
        else:
            hess[:, i] = (fg(xp)[1] - fg(xm)[1]) / (xp[i] - xm[i])
    hess = 0.5 * (hess + hess.T)
    # the value of the deviance function itself (PIRLS from lp0, as fit.objective and
    # glmer_objective evaluate it), not the warm-started one: equal to ~tol_pwrss·pdev
    fx = dev.stage2(x)
    return x, fx, count[0] + 1, (grad, hess)


def _probe_theta_bounds(
    f: Callable[[np.ndarray], float],
    x: np.ndarray,
    fx: float,
    model: GlmerModel,
    restart: Callable[[np.ndarray], tuple[np.ndarray, float, int]],
) -> tuple[np.ndarray, float, int, bool]:
    """lmer's two-basin guard (`optimize.probe_points`) on stage 2's θ, β held: each variance
    parameter probed at and near its bound, across it for a correlated term (a binomial (x | g)
    design stopped at θ = [0, 0.53, 0.15], 0.83 above lme4's [0.38, -0.19, 0.44]); Nelder–Mead
    restarts from the best probe that beats the optimum, for up to MAX_PROBE_ROUNDS rounds.

    Returns (x, criterion, evaluations, settled): settled is False when the last round still
    found a better probe."""
    from mixbridge.python_impl.optimize import MAX_PROBE_ROUNDS, probe_points

    nth = model.n_theta
    nfev = 0
    for _ in range(MAX_PROBE_ROUNDS):
        best: tuple[np.ndarray, float] | None = None
        for theta in probe_points(x[:nth], model.theta0, model.theta_lower):
            xp = np.concatenate([theta, x[nth:]])
            fp = f(xp)
            nfev += 1
            if fp < fx and (best is None or fp < best[1]):
                best = (xp, fp)
        if best is None:
            return x, fx, nfev, True
        x2, f2, n2 = restart(best[0])
        nfev += n2
        if f2 < fx:
            x, fx = x2, f2
    return x, fx, nfev, False


def _check_boundary(
    f: Callable[[np.ndarray], float], x: np.ndarray, fx: float, lower: np.ndarray
) -> tuple[np.ndarray, float]:
    """lme4's check.boundary: θ_i within 1e-5 of a zero bound is set to the bound if that helps."""
    for i in np.flatnonzero((lower == 0) & (x > 0) & (x < BOUNDARY_TOL)):
        xx = x.copy()
        xx[i] = 0.0
        fxx = f(xx)
        if fxx < fx:
            x, fx = xx, fxx
    return x, fx


# ---------------------------------------------------------------------------------------------
# Entry points


def glmer(
    formula: str,
    data: pd.DataFrame,
    *,
    family: str = "binomial",
    link: str | None = None,
    nagq: int = 1,
    weights: Any = None,
    offset: Any = None,
    control: dict[str, Any] | None = None,
    frame: Any = None,
) -> MixedFit:
    """Fit `glmer(formula, data, family, nAGQ = nagq)` (spec §3.4) and build the MixedFit.
    `frame`: the evaluated model frame from the input checks (None: evaluate here)."""
    model = build_model(
        formula,
        data,
        family=family,
        link=link,
        nagq=nagq,
        weights=weights,
        offset=offset,
        control=control,
        frame=frame,
    )
    dev = Devfun(model)
    theta1, f1, nfev1 = _stage1(dev, model)
    beta1 = np.asarray(dev.state.beta, dtype=float)
    rx_se = np.sqrt(np.diag(model.pred.rx_inverse()))
    info: dict[str, Any] = {
        "tol_pwrss": model.tol,
        "stage1": {"theta": theta1.tolist(), "fval": f1, "n_evals": nfev1},
    }
    if nagq == 0:
        return _finish_stage1(model, dev, theta1, f1, info)

    dev.start_stage2()
    lp0 = dev.lp0
    lower = np.concatenate([model.theta_lower, np.full(beta1.size, -np.inf)])
    x0 = np.concatenate([theta1, beta1])
    f2 = _safe(dev.stage2)
    derivs = None
    fast = model.gradient
    if fast:
        h0 = _initial_hessian(model, theta1)
        derivs_at: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}  # each optimum's derivatives

        def gradient_restart(start: np.ndarray) -> tuple[np.ndarray, float, int]:
            xr, fr, nr, derivs_at[xr.tobytes()] = _optimize_stage2_gradient(
                dev, model, start, lower, h0
            )
            return xr, fr, nr

        try:
            x, fx, nfev2 = gradient_restart(x0)
            # the bound probes as on the Nelder-Mead path: θ = 0 is stationary for the gradient
            # too (a binomial (1|g) design stopped there 0.05 above lme4's optimum)
            x, fx, nfev_probe, settled = _probe_theta_bounds(f2, x, fx, model, gradient_restart)
            derivs = derivs_at[x.tobytes()]
            info["stage2"] = {
                "fval": fx,
                "n_evals": nfev2 + nfev_probe,
                "method": "BFGS, analytic gradient",
            }
        except _NoFastPath:
            fast = False
            dev.lp0 = lp0  # the stage-2 start that glmer_objective uses too
    if not fast:
        step = 0.2 * np.concatenate([np.full(theta1.size, 0.1), np.minimum(rx_se, 10.0)])

        def nelder_mead_restart(start: np.ndarray) -> tuple[np.ndarray, float, int]:
            return _nelder_mead(f2, start, step, lower, 10000)

        x, fx, nfev2 = nelder_mead_restart(x0)
        x, fx, nfev_probe, settled = _probe_theta_bounds(f2, x, fx, model, nelder_mead_restart)
        info["stage2"] = {"fval": fx, "n_evals": nfev2 + nfev_probe, "method": "Nelder-Mead"}
    x, fx = _check_boundary(f2, x, fx, lower)
    info["stage2"]["fval"] = fx  # the criterion at the returned (θ, β)
    return _finish_stage2(model, dev, x, fx, lower, info, derivs, settled)


def glmer_objective(
    formula: str,
    data: pd.DataFrame,
    *,
    theta: np.ndarray,
    beta: np.ndarray,
    family: str = "binomial",
    link: str | None = None,
    nagq: int = 1,
    weights: Any = None,
    offset: Any = None,
    control: dict[str, Any] | None = None,
    frame: Any = None,
) -> float:
    """lme4's `glmer(..., devFunOnly = TRUE)` evaluated at (θ, β): the stage-2 deviance function
    (after stage 1 as glmer runs it, which sets its starting linear predictor); for nagq = 0 the
    stage-1 function of θ (β is ignored).

    It is the function `glmer` with the same arguments minimizes and reports (-2 logLik at its
    estimates; nAGQ > 1: plus 2·fit.extra["lme4_loglik_constant"]), and `fit.objective`: PIRLS at
    `control["tol_pwrss"]`, by default lme4's 1e-7 below GRADIENT_MIN_ROWS rows and TIGHT_TOL (the
    converged Laplace/AGQ deviance) from there on. lme4's own function at the converged
    tolerance: `engine="r", control={"tol_pwrss": 1e-12}`."""
    model = build_model(
        formula,
        data,
        family=family,
        link=link,
        nagq=nagq,
        weights=weights,
        offset=offset,
        control=control,
        frame=frame,
    )
    theta = np.asarray(theta, dtype=float).reshape(-1)
    beta = np.asarray(beta, dtype=float).reshape(-1)
    if theta.size != model.n_theta:
        raise ArgumentError(f"theta must have length {model.n_theta}, got {theta.size}", "theta")
    dev = Devfun(model)
    if nagq == 0:
        return dev.stage1(theta)
    if beta.size != model.X.shape[1]:
        raise ArgumentError(f"beta must have length {model.X.shape[1]}, got {beta.size}", "beta")
    _stage1(dev, model)
    dev.start_stage2()
    return dev.stage2(np.concatenate([theta, beta]))


def _stage1(dev: Devfun, model: GlmerModel) -> tuple[np.ndarray, float, int]:
    """Stage 1 as glmer runs it, leaving `dev` in the state its stage 2 starts from (so that
    glmer, fit.objective and glmer_objective restart PIRLS from the same lp0).

    Gradient path: no stage-1 optimization (the converged deviance does not depend on the
    start, and the gradient-based stage 2 converges from lme4's initial PIRLS fit at θ = 1
    directly; a stage-1 optimization would cost more, in joint PIRLS, than it saves)."""
    if model.gradient:
        return model.theta0.copy(), float("nan"), 0
    theta1, f1, nfev1 = _optimize_stage1(dev, model)
    dev.stage1(theta1)  # re-evaluate at the optimum: sets lp0 and the stage-1 state (lme4 too)
    return theta1, f1, nfev1


# ---------------------------------------------------------------------------------------------
# Building the result


def _vcov_from_hessian(hess: np.ndarray, n_theta: int) -> np.ndarray | None:
    """lme4's default glmer vcov: 2·[H⁻¹]_ββ, symmetrized; None if not positive definite."""
    try:
        hinv = np.linalg.inv(hess)
    except np.linalg.LinAlgError:
        return None
    v = 2.0 * hinv[n_theta:, n_theta:]
    v = 0.5 * (v + v.T)
    if not np.all(np.isfinite(v)):
        return None
    try:
        np.linalg.cholesky(v)
    except np.linalg.LinAlgError:
        return None
    return v


def _finish_stage2(
    model: GlmerModel,
    dev: Devfun,
    x: np.ndarray,
    fx: float,
    lower: np.ndarray,
    info: dict[str, Any],
    derivs: tuple[np.ndarray, np.ndarray] | None = None,
    settled: bool = True,
) -> MixedFit:
    from mixbridge.python_impl.optimize import check_conv, deriv12, optimum_doubts

    nth = model.n_theta
    f2 = _safe(dev.stage2)
    # lme4's deriv12 (finite differences of the deviance) unless the gradient path has them
    grad, hess = deriv12(f2, x, fx, lower) if derivs is None else derivs
    messages = list(model.messages)
    singular, converged, conv_msgs = check_conv(grad, hess, x, lower)
    doubts = optimum_doubts(grad, hess, x, lower, singular, settled=settled)
    converged = converged and not doubts
    messages += conv_msgs + doubts
    vcov = _vcov_from_hessian(hess, nth)
    fval = dev.stage2(x)  # lme4 re-evaluates at the optimum: the state below belongs to it
    state = dev.state
    vcov_rx = model.pred.rx_inverse()
    if vcov is None:
        vcov = vcov_rx
        messages.append(
            Message(
                "warning",
                "the Hessian-based vcov is not positive definite; using the R_X-based one",
                "python",
                code="vcov_fallback",
            )
        )
    info.update({"gradient": grad.tolist(), "hessian": hess.tolist()})
    return _build_fit(
        model,
        dev,
        state,
        x[:nth],
        x[nth:],
        fval,
        vcov,
        vcov_rx,
        singular,
        converged,
        messages,
        info,
    )


def _finish_stage1(
    model: GlmerModel, dev: Devfun, theta: np.ndarray, fx: float, info: dict[str, Any]
) -> MixedFit:
    f1 = _safe(dev.stage1)
    theta, fx = _check_boundary(f1, theta, fx, model.theta_lower)
    fval = dev.stage1(theta)
    state = dev.state
    vcov = model.pred.rx_inverse()
    singular = bool(np.any((model.theta_lower == 0) & (theta < 1e-4)))
    messages = list(model.messages)
    if singular:
        messages.append(Message("message", SINGULAR_TEXT, "python", code="singular"))
    dev.offset = model.resp.offset + model.X @ state.beta
    return _build_fit(
        model,
        dev,
        state,
        theta,
        np.asarray(state.beta),
        fval,
        vcov,
        vcov,
        singular,
        True,
        messages,
        info,
    )


def _build_fit(
    model: GlmerModel,
    dev: Devfun,
    state: PirlsState,
    theta: np.ndarray,
    beta: np.ndarray,
    fval: float,
    vcov: np.ndarray,
    vcov_rx: np.ndarray,
    singular: bool,
    converged: bool,
    messages: list[Message],
    info: dict[str, Any],
) -> MixedFit:
    from mixbridge.python_impl import output

    terms, resp, pred = model.terms, model.resp, model.pred
    reterms = list(terms.reterms)
    names = list(terms.x_names)
    tks = model.lambda_blocks(theta)
    gp = np.concatenate([[0], np.cumsum([t.n_levels * t.p for t in reterms])]).astype(int)
    b = _b_from_u(reterms, tks, state.u)
    if model.scalar:
        cv = {reterms[0].group: pred.cond_var_scalar().reshape(-1, 1, 1)}
    else:
        cv = pred.cond_var_by_factor(1.0)

    mu = state.mu
    devres = resp.dev_resids(mu)
    residuals = model.unsort(np.sign(resp.y - mu) * np.sqrt(np.maximum(devres, 0.0)))
    # lme4 1.1's AGQ deviance leaves out the saturated constant; we report the normalized one
    const = saturated_log_lik(resp) if model.nagq > 1 else 0.0
    criterion = fval - 2.0 * const
    df = len(names) + theta.size
    lik = output.likelihood_summary(criterion, terms.n, df)
    messages += _divergence_messages(model, dev, state, beta, converged)
    if any(m.code == "pirls" for m in messages):
        converged = False
    if singular and not any(m.code == "singular" for m in messages):
        messages.append(Message("message", SINGULAR_TEXT, "python", code="singular"))
    extra: dict[str, Any] = {"vcov_rx": pd.DataFrame(vcov_rx, index=names, columns=names)}
    if model.nagq > 1:
        extra["lme4_loglik_constant"] = const
        extra["lme4_deviance"] = fval
    extra["u"] = state.u
    base_eta = model.unsort(resp.offset + model.X @ beta)
    mu_rows = model.unsort(mu)

    fit = MixedFit(
        model="glmer",
        formula=terms.formula,
        family=resp.family_name,
        link=resp.family.link,
        reml=False,
        fixef=pd.Series(beta, index=names),
        vcov=pd.DataFrame(vcov, index=names, columns=names),
        theta=np.asarray(theta, dtype=float),
        theta_names=output.theta_names(reterms),
        varcorr=output.varcorr_frame(reterms, tks, None),
        sigma=1.0,
        ranef=output.ranef_frames(reterms, b, gp),
        cond_var=cv,
        loglik=lik["loglik"],
        df=df,
        deviance=float(np.sum(devres)),
        reml_criterion=None,
        aic=lik["aic"],
        bic=lik["bic"],
        nobs=int(terms.n),
        ngroups=output.ngroups(reterms),
        fitted=mu_rows,
        residuals=residuals,
        singular=bool(singular),
        converged=bool(converged),
        messages=messages,
        engine="python",
        versions=output.versions(),
        nagq=int(model.nagq),
        optimizer={"name": "brent/nelder_mead", **info},
        dropped_columns=list(terms.dropped_columns),
        extra=extra,
    )
    fit._objective = _make_objective(model, dev)
    fit._predict = _make_predict(model, beta, tks, b, gp, model.unsort(state.eta), mu_rows)
    fit._simulate = _make_simulate(model, base_eta, tks)
    return fit


def _make_objective(model: GlmerModel, dev: Devfun) -> Callable[..., float]:
    """fit.objective: the fit's deviance function (`dev`, as left by the fit: its stage-2 start
    lp0 and tolerance). `control` (tol_pwrss, maxit) evaluates the function glmer_objective
    gives for the same model with that control instead."""
    others: dict[tuple[Any, ...], Devfun] = {}

    def devfun_for(control: dict[str, Any] | None) -> Devfun:
        if control is None:
            return dev
        tol, maxit = _control(control)
        key = (tol, maxit)
        if key not in others:
            tol = default_tol_pwrss(model.terms.n) if tol is None else tol
            other = replace(model, tol=tol, maxit=maxit)
            others[key] = d = Devfun(other)
            if other.nagq >= 1:
                _stage1(d, other)
                d.start_stage2()
        return others[key]

    def objective(theta_: Any, beta_: Any = None, *, control: Any = None) -> float:
        d = devfun_for(None if control is None else dict(control))
        theta_ = np.ravel(np.asarray(theta_, dtype=float))
        if model.nagq == 0:
            return d.stage1(theta_)
        return d.stage2(np.concatenate([theta_, np.ravel(np.asarray(beta_, dtype=float))]))

    return objective


def _divergence_messages(
    model: GlmerModel, dev: Devfun, state: PirlsState, beta: np.ndarray, converged: bool
) -> list[Message]:
    """Warnings for separated / degenerate data: PIRLS that never settled, and fitted values
    pinned at the edge of the parameter space (glm's "fitted probabilities numerically 0 or 1")."""
    out = []
    if not state.converged:
        out.append(
            Message(
                "warning",
                f"PIRLS did not converge in {model.maxit} iterations at the final estimates: "
                "some estimates diverge (complete or quasi-complete separation, or a group whose "
                "responses are all at one extreme); lme4 stops with 'pwrssUpdate did not "
                "converge in (maxit) iterations' here",
                "python",
                code="pirls",
            )
        )
    elif dev.pirls_failures:
        out.append(
            Message(
                "note",
                f"PIRLS hit its iteration limit at {dev.pirls_failures} trial parameter values "
                "during optimization",
                "python",
                code="pirls_trial",
            )
        )
    mu, resp = state.mu, model.resp
    edge = (mu <= 1e-10) | (mu >= 1 - 1e-10) if resp.family_name == "binomial" else mu <= 1e-10
    if np.any(edge):
        what = "probabilities" if resp.family_name == "binomial" else "means"
        out.append(
            Message(
                "warning",
                f"fitted {what} numerically 0 or 1 occurred in {int(edge.sum())} rows: "
                "estimates may be diverging (separation)",
                "python",
                code="separation",
            )
        )
    return out


def _b_from_u(reterms: list[Any], tks: list[np.ndarray], u: np.ndarray) -> np.ndarray:
    """b = Λu, term by term (level-major blocks: B_k = U_k T_kᵀ)."""
    out, pos = [], 0
    for t, tk in zip(reterms, tks, strict=True):
        size = t.n_levels * t.p
        uk = np.asarray(u[pos : pos + size]).reshape(t.n_levels, t.p)
        out.append((uk @ tk.T).reshape(-1))
        pos += size
    return np.concatenate(out)


def _re_contribution(
    reterms: list[Any], bmats: list[np.ndarray], codes: list[np.ndarray], zs: list[np.ndarray]
) -> np.ndarray:
    """Σ_k Σ_c Z_k[i, c]·B_k[code_k(i), c], with unseen levels (code −1) contributing 0."""
    total = np.zeros(len(codes[0]) if codes else 0)
    for bk, ck, zk in zip(bmats, codes, zs, strict=True):
        ok = ck >= 0
        rows = np.where(ok, ck, 0)
        total += np.where(ok, np.sum(np.asarray(zk, float) * bk[rows], axis=1), 0.0)
    return total


def _make_predict(
    model: GlmerModel,
    beta: np.ndarray,
    tks: list[np.ndarray],
    b: np.ndarray,
    gp: np.ndarray,
    eta_fit: np.ndarray,
    mu_fit: np.ndarray,
) -> Callable[..., np.ndarray]:
    terms, resp = model.terms, model.resp
    reterms = list(terms.reterms)
    bmats = [b[gp[k] : gp[k + 1]].reshape(t.n_levels, t.p) for k, t in enumerate(reterms)]

    def predict(
        newdata: pd.DataFrame | None = None,
        re_form: str | None = None,
        allow_new_levels: bool = False,
        type: str = "link",
    ) -> np.ndarray:
        if type not in ("link", "response"):
            raise ArgumentError(f"type must be 'link' or 'response', got {type!r}", "type")
        no_re = re_form is not None
        if re_form is not None and str(re_form).replace(" ", "") not in ("~0", "NA"):
            raise ArgumentError(
                f"re_form must be None (all random effects) or '~0' (none), got {re_form!r}",
                "re_form",
            )
        if newdata is None:
            if not no_re:
                return eta_fit.copy() if type == "link" else mu_fit.copy()
            eta = model.unsort(resp.offset + model.X @ beta)
        else:
            eta = (
                np.asarray(terms.offset_for(newdata), float)
                + np.asarray(terms.fixed_matrix(newdata), float) @ beta
            )
            if not no_re:
                codes = [np.asarray(t.codes_for(newdata)) for t in reterms]
                for t, c in zip(reterms, codes, strict=True):
                    if np.any(c < 0) and not allow_new_levels:
                        bad = int(np.sum(c < 0))
                        raise DataError(
                            f"newdata has {bad} rows with levels of grouping factor {t.group!r} "
                            "not in the fit (or NA); use allow_new_levels=True to predict them at "
                            "the population level",
                            t.group,
                        )
                zs = [np.asarray(t.Z_for(newdata), float) for t in reterms]
                eta = eta + _re_contribution(reterms, bmats, codes, zs)
        return eta if type == "link" else resp.linkinv(eta)

    return predict


def _make_simulate(
    model: GlmerModel, base_eta: np.ndarray, tks: list[np.ndarray]
) -> Callable[[int, int | None], np.ndarray]:
    """simulate.merMod's default (use.u = FALSE): new random effects b ~ N(0, ΛΛ'), then y | b.

    Binomial: the number of successes out of the trials of each row (0/1 for a Bernoulli
    response); poisson: counts.
    """
    terms, resp = model.terms, model.resp
    reterms = list(terms.reterms)
    zs = [np.asarray(t.Z, float) for t in reterms]
    codes = [np.asarray(t.codes) for t in reterms]

    def simulate(nsim: int = 1, seed: int | None = None) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = np.empty((base_eta.size, int(nsim)))
        trials = np.round(model.unsort(resp.n_trials) if resp.n_trials is not None else 1.0)
        if resp.family_name == "binomial" and not np.any(resp.n_trials > 1):
            trials = np.round(model.unsort(resp.weights))
        for s in range(int(nsim)):
            bmats = [
                rng.standard_normal((t.n_levels, t.p)) @ tk.T
                for t, tk in zip(reterms, tks, strict=True)
            ]
            mu = resp.linkinv(base_eta + _re_contribution(reterms, bmats, codes, zs))
            if resp.family_name == "binomial":
                out[:, s] = rng.binomial(trials.astype(np.int64), mu)
            else:
                out[:, s] = rng.poisson(mu)
        return out

    return simulate
