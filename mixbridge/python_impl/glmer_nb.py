"""lme4's glmer.nb in pure Python: a negative-binomial GLMM with its θ estimated.

lme4 1.1-31 (R/nbinom.R) does, and so do we:

    1. a poisson glmer with the same formula (skipped when `theta_start` is given: lme4 cannot
       set the start, its issues #319, #423 ask for it);
    2. θ₀ = MASS::theta.ml(y, fitted, weights, limit = 20, eps = 1e-4) (`theta_ml`);
    3. R's optimize() (Brent's fmin) over t = log θ on log θ₀ ± 3 with tol 5e-5, minimizing
       -2 logLik of glmer(family = negative.binomial(exp(t))) -- the profile of the Laplace
       criterion in the NB θ;
    4. the result is the glmer fit at the final θ (`fit.nb_theta`).

lme4 refits each trial θ from the previous fit (refit() on the modified response), so its
profile depends on the path. Ours is a function of θ alone:
  * lme4's deviance function (tolPwrss 1e-7, PIRLS restarted from lp0; below GRADIENT_MIN_ROWS
    rows by default): each trial θ is a fresh glmer fit from lme4's usual start (the fused
    `diagonal_nb` kernel for (1|g): the same function, fewer passes);
  * the converged deviance (from GRADIENT_MIN_ROWS rows, or tol_pwrss ≤ TIGHT_TOL) for (1|g):
    `ProfileFast`, the optimum's value at each trial θ by BFGS on the analytic gradient, started
    from the optimum at the nearest trial θ (the optimizer's start only: the converged optimum
    does not depend on it), and the full fit (`fit_model`) at the final θ alone.
scipy's bounded `minimize_scalar` is the same fmin algorithm (golden section + parabolic steps,
tol1 = √ε|x| + tol/3).

A θ that runs to the end of the interval is reported in `fit.messages` (the upper end: the data
show no overdispersion beyond Poisson -- the Poisson limit), never an error.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import optimize, special

from mixbridge.python_impl import optimizers
from mixbridge.python_impl.diagonal_nb import NbKernel
from mixbridge.python_impl.family_nb import NegativeBinomial
from mixbridge.python_impl.glmer import fit_model, fit_spec, glmer
from mixbridge.python_impl.glmer_devfun import GlmerModel
from mixbridge.python_impl.glmer_gradient import (
    ModesValue,
    WarmStartedStage2,
    central_hessian,
    initial_hessian_from,
    polish,
)
from mixbridge.python_impl.spec import GlmerSpec, check_nb_theta, glmer_spec
from mixbridge.results import Message, MixedFit

NB_TOL = 5e-5  # glmer.nb's tol (optimize() on log θ)
NB_HALF_WIDTH = 3.0  # glmer.nb's interval = log(th) + c(-3, 3)
THETA_ML_LIMIT = 20  # initCtrl$limit
THETA_ML_EPS = 2 * NB_TOL  # initCtrl$eps
# the warm-started profile on the gradient path (`ProfileFast`); False: a full glmer fit from
# lme4's start at every trial θ (the tests compare the two)
PROFILE_FAST = True


def theta_ml(
    y: np.ndarray, mu: np.ndarray, weights: np.ndarray, limit: int = THETA_ML_LIMIT,
    eps: float = THETA_ML_EPS,
) -> tuple[float, list[str]]:  # fmt: skip
    """MASS::theta.ml: Newton steps on the NB score for θ at fixed μ, from the moment
    estimate n / Σ w (y/μ − 1)²; returns (θ, warnings) with MASS's warnings."""
    w = np.asarray(weights, dtype=float)
    y = np.asarray(y, dtype=float)
    n = float(np.sum(w))
    t0 = n / float(np.sum(w * (y / mu - 1.0) ** 2))
    # the digamma/trigamma terms depend on y alone: summed over the distinct counts (few, for
    # count data), the same sums as MASS's per row up to the order of addition
    y_vals, inverse = np.unique(y, return_inverse=True)
    w_vals = np.bincount(inverse, weights=w, minlength=y_vals.size)
    it, delta = 0, 1.0
    while True:
        it += 1
        if not (it < limit and abs(delta) > eps):
            break
        t0 = abs(t0)
        tm = mu + t0
        ratio = (y + t0) / tm
        score = (
            float(w_vals @ special.digamma(t0 + y_vals))
            + n * (-special.digamma(t0) + math.log(t0) + 1.0)
            - float(w @ (np.log(tm) + ratio))
        )
        info = (
            -float(w_vals @ special.polygamma(1, t0 + y_vals))
            + n * (special.polygamma(1, t0) - 1.0 / t0)
            + float(w @ ((2.0 - ratio) / tm))
        )
        delta = float(score / info)
        t0 += delta
    warnings: list[str] = []
    if t0 < 0:
        t0 = 0.0
        warnings.append("theta.ml: estimate truncated at zero")
    if it == limit:
        warnings.append("theta.ml: iteration limit reached")
    return float(t0), warnings


def glmer_nb(
    formula: str,
    data: Any,
    *,
    link: str | None = None,
    nagq: int = 1,
    weights: Any = None,
    offset: Any = None,
    control: Mapping[str, Any] | None = None,
    frame: Any = None,
    theta_start: float | None = None,
    **_: Any,
) -> MixedFit:
    """glmer.nb(formula, data, nAGQ = nagq, ...) (module docstring); `theta_start` replaces
    the poisson fit + theta.ml start."""
    common = dict(
        link=link, nagq=nagq, weights=weights, offset=offset, control=control, frame=frame
    )
    messages: list[Message] = []
    g0: MixedFit | None = None
    # one spec; each trial θ swaps the family (the start η depends only on y: MASS's mustart)
    base = glmer_spec(formula, data, family="negative.binomial", nb_theta=1.0, **common)  # type: ignore[arg-type]
    if theta_start is None:
        # glmer's own poisson fit (big (1|g) data: the lean group-sum path)
        g0 = glmer(formula, data, family="poisson", **common)  # type: ignore[arg-type]
        th0, warns = theta_ml(base.y, np.asarray(g0.fitted), base.weights)
        for text in warns:
            messages.append(Message("warning", text, "python", code="nb_theta_start"))
        if not (math.isfinite(th0) and th0 > 0):
            # theta.ml failed (no overdispersion at all): start at a large θ, the Poisson side
            th0 = 1e4
        start_how = "theta.ml on the poisson fit"
    else:
        th0 = check_nb_theta(theta_start, "theta_start")
        start_how = "theta_start"
    base = dataclasses.replace(base, family=NegativeBinomial(th0))
    model0 = GlmerModel.build(base)
    fast = ProfileFast.applies(model0)
    fits: dict[float, MixedFit] = {}
    profile_values: dict[float, float] = {}

    def fit_at(t: float) -> MixedFit:
        if t not in fits:
            if fast is not None:  # the optimum at the nearest trial θ as the start
                x0, h0 = fast.start_for(t)
                fits[t] = fit_model(model0.with_nb_theta(math.exp(t)), start=x0, h0=h0)
            else:
                spec: GlmerSpec = dataclasses.replace(base, family=NegativeBinomial(math.exp(t)))
                fits[t] = fit_spec(spec)
        return fits[t]

    def profile(t: float) -> float:
        t = float(t)
        if t not in profile_values:
            crit = None
            if fast is not None:
                if not fast.starts:
                    # the poisson fit's (θ, β) (or the NB θ0 model's initial fit) as the start
                    x0 = None if g0 is None else np.r_[g0.theta, g0.fixef.to_numpy()]
                    fast.first_start(model0, x0)
                crit = fast.criterion(model0.with_nb_theta(math.exp(t)), t)
            if crit is None:
                crit = fit_at(t).criterion
            profile_values[t] = crit if math.isfinite(crit) else float("inf")
        return profile_values[t]

    lo, hi = math.log(th0) - NB_HALF_WIDTH, math.log(th0) + NB_HALF_WIDTH
    res = optimize.minimize_scalar(
        profile, bounds=(lo, hi), method="bounded", options={"xatol": NB_TOL}
    )
    t_hat = float(res.x)
    fit = fit_at(t_hat)
    if fast is not None:  # the profile's value at t_hat, to the final fit's
        profile_values[t_hat] = fit.criterion
    edge = 2.0 * NB_TOL + 1.5e-8 * abs(t_hat)
    if hi - t_hat <= edge:
        messages.append(
            Message(
                "warning",
                f"glmer_nb: the negative binomial theta ran to the upper end of its search "
                f"interval (theta = {math.exp(t_hat):.6g} = {th0:.6g}·e^3): no overdispersion "
                "beyond Poisson is detected (the Poisson limit, theta → ∞); consider "
                "family='poisson', or theta_start= a larger value",
                "python",
                code="nb_theta_bound",
            )
        )
    elif t_hat - lo <= edge:
        messages.append(
            Message(
                "warning",
                f"glmer_nb: the negative binomial theta ran to the lower end of its search "
                f"interval (theta = {math.exp(t_hat):.6g} = {th0:.6g}·e^-3); the estimate may "
                "lie below it: try theta_start= a smaller value",
                "python",
                code="nb_theta_bound",
            )
        )
    fit.messages = list(fit.messages) + messages
    fit.optimizer["nb"] = {
        "theta_start": th0,
        "start": start_how,
        "interval": [math.exp(lo), math.exp(hi)],
        "n_evals": len(profile_values),
        "profile": sorted((math.exp(t), f) for t, f in profile_values.items()),
        "path": "fused (1|g) profile" if fast is not None else "glmer per trial theta",
        "profile_evaluations": None if fast is None else fast.n_evals,  # value + gradient
    }
    return fit


class ProfileFast:
    """The profile of the converged Laplace deviance in the NB θ for `(1|g)` models on the
    gradient path (`GlmerModel.gradient`: the fused NB kernel, converged PIRLS), where the
    fitted criterion does not depend on where the optimizer starts: at each trial θ only the
    optimum's value, by BFGS with the analytic gradient (`NbKernel.modes`,
    `NbKernel.gradient_from`) from the optimum (θ, β, modes) and BFGS metric at the nearest
    trial θ, then Newton steps to the optimum itself (`glmer_gradient.polish`) -- no Hessian,
    convergence checks or fit object per trial; `fit_model` builds the full fit at the final θ
    only. A trial whose modes leave the fused kernel's range falls back to a full fit."""

    def __init__(self) -> None:
        # t -> (x, BFGS metric, modes b) at each trial's optimum
        self.starts: dict[float, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.n_evals = 0

    @staticmethod
    def applies(model: GlmerModel) -> ProfileFast | None:
        ok = isinstance(model.kernel, NbKernel) and model.gradient and model.nagq == 1
        ok = ok and PROFILE_FAST
        return ProfileFast() if ok else None

    def first_start(self, model: GlmerModel, x0: np.ndarray | None) -> None:
        """The start of the first trial: `x0` (the poisson fit's (θ, β)) or the initial PIRLS
        fit's; its metric by central differences of the analytic gradient there."""
        if x0 is None:
            from mixbridge.python_impl.glmer_devfun import Devfun

            dev = Devfun(model)
            x0 = np.r_[model.theta0, np.asarray(dev.state.beta, dtype=float)]
        x0 = np.asarray(x0, dtype=float).copy()
        x0[0] = max(x0[0], 0.1)
        b0 = np.zeros(model.core.n_levels)
        self._pending: tuple[np.ndarray, np.ndarray, np.ndarray | None] = (x0, b0, None)
        kernel = model.kernel
        assert isinstance(kernel, NbKernel)
        th = float(x0[0])
        r = kernel.modes(th, model.resp.offset + model.X @ x0[1:], b0, model.tol)
        if r is None:
            return  # the metric by central differences in `criterion`
        st, W, S, _ = r
        # the BFGS metric glmer's gradient path starts from (`initial_hessian_from`), at the
        # NB weights of these modes: R_X'R_X of the factorization a joint PIRLS step makes
        X = model.X
        d = 1.0 + th * th * S
        XW = X * W[:, None]
        sx = np.column_stack(
            [S if one else kernel.gsum(XW[:, j]) for j, one in enumerate(kernel.ones_cols)]
        )
        rx = XW.T @ X - sx.T @ (sx * (th * th / d)[:, None])
        self._pending = (x0, th * st.u, initial_hessian_from(th, S, rx))

    def start_for(self, t: float) -> tuple[np.ndarray | None, np.ndarray | None]:
        if not self.starts:
            return None, None
        near = min(self.starts, key=lambda s: abs(s - t))
        x, metric, _ = self.starts[near]
        return x, metric

    def _predict(self, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The start at t: the optimum (θ, β, modes) at the nearest trial, moved along the
        line through the two nearest trials when t is not far outside them (x*(t) is smooth:
        Brent's later trials fall between earlier ones), and the nearest trial's metric."""
        near = sorted(self.starts, key=lambda s: abs(s - t))
        x0, h0, b0 = self.starts[near[0]]
        if len(near) >= 2:
            ta, tb = near[0], near[1]
            if abs(t - ta) <= 2.0 * abs(tb - ta):
                (xa, _, ba), (xb, _, bb) = self.starts[ta], self.starts[tb]
                c = (t - ta) / (tb - ta)
                x1 = xa + c * (xb - xa)
                if x1[0] > 0:
                    x0, b0 = x1, ba + c * (bb - ba)
        return x0, h0, b0

    def criterion(self, model: GlmerModel, t: float) -> float | None:
        """min over (θ, β) of the converged Laplace deviance at NB θ = e^t, or None (the
        caller fits the full model) when the fused kernel cannot evaluate it. The evaluations
        are glmer's warm-started ones (`glmer_gradient.WarmStartedStage2`) on `_ModesPath`."""
        lower = np.r_[model.theta_lower, np.full(model.X.shape[1], -np.inf)]
        if self.starts:
            x0, h0, b0 = self._predict(t)
        else:
            x0, b0, h0 = self._pending
        path = _ModesPath(model, b0)
        evaluate = WarmStartedStage2(path)

        def fg(x: np.ndarray) -> tuple[float, np.ndarray]:
            return evaluate(x, False)

        try:
            if h0 is None:
                h0 = central_hessian(fg, x0, lower, model.n_theta)
            run = optimizers.minimize("BFGS", _no_value, x0, lower, value_grad=fg, h0=h0)
            x = polish(fg, run.final, run.hessian, model.n_theta)
            f, _ = fg(x)  # the last evaluation when polish ended there (warm cache)
        except _OutOfKernel:
            return None
        finally:
            self.n_evals += path.n_evals
        if not math.isfinite(f) or x[0] <= 1e-4:
            return None  # near θ = 0: the full fit (its boundary checks and probes)
        self.starts[t] = (x, run.hessian, float(x[0]) * evaluate.warm["u"])
        return float(f)


class _OutOfKernel(Exception):
    """The NB kernel's Newton modes did not converge at some trial point."""


class _ModesPath:
    """`glmer_gradient.Stage2Path` of the profile: every value and gradient from the NB
    kernel's Newton-converged modes (`NbKernel.modes`, `gradient_from`), no PIRLS from lp0
    (the optimum's value does not depend on the start); the first evaluation starts the modes
    at `b_init`, the optimum modes at the nearest trial θ."""

    def __init__(self, model: GlmerModel, b_init: np.ndarray) -> None:
        kernel = model.kernel
        assert isinstance(kernel, NbKernel)
        self.model, self.kernel, self.b_init = model, kernel, b_init
        self.n_evals = 0
        self._last: ModesValue | None = None

    def stage2(self, x: np.ndarray, b_start: np.ndarray | None = None) -> float:
        raise NotImplementedError  # the profile reports the warm-started optimum's value

    def warm_modes(
        self, x: np.ndarray, b0: np.ndarray, agq: bool, laplace_gradient: bool
    ) -> ModesValue | None:
        m, k = self.model, self.kernel
        self.n_evals += 1
        th = float(x[0])
        r = k.modes(th, m.resp.offset + m.X @ x[m.n_theta :], b0, m.tol)
        if r is None:
            return None
        st, W, S, extra = r
        g_t, g_b, du = k.gradient_from(th, W, S, extra, st.mu, st.u)
        return ModesValue(st.laplace(m.resp), np.r_[g_t, g_b], st.u, du)

    def pirls_value(self, x: np.ndarray, b0: np.ndarray | None) -> tuple[float, bool]:
        self._last = self.warm_modes(x, self.b_init if b0 is None else b0, False, False)
        if self._last is None:
            raise _OutOfKernel
        return self._last.f, True

    def pirls_gradient(self, theta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        assert self._last is not None
        return self._last.g, self._last.u, self._last.du_dx


def _no_value(x: np.ndarray) -> float:  # "BFGS" works on value_grad alone
    raise NotImplementedError
