"""lme4's glmer.nb in pure Python: a negative-binomial GLMM with its θ estimated.

lme4 1.1-31 (R/nbinom.R) does, and so do we:

    1. a poisson glmer with the same formula (skipped when `theta_start` is given: lme4 cannot
       set the start, its issues #319, #423 ask for it);
    2. θ₀ = MASS::theta.ml(y, fitted, weights, limit = 20, eps = 1e-4) (`theta_ml`);
    3. R's optimize() (Brent's fmin) over t = log θ on log θ₀ ± 3 with tol 5e-5, minimizing
       -2 logLik of glmer(family = negative.binomial(exp(t))) -- the profile of the Laplace
       criterion in the NB θ;
    4. the result is the glmer fit at the final θ (`fit.nb_theta`).

lme4 refits each trial θ from the previous fit (refit() on the modified response); we fit each
trial θ from lme4's usual start, so the profile is a function of θ alone (same optimum up to the
glmer optimizer's own tolerance). scipy's bounded `minimize_scalar` is the same fmin algorithm
(golden section + parabolic steps, tol1 = √ε|x| + tol/3).

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

from mixbridge.python_impl.families import NegativeBinomial
from mixbridge.python_impl.glmer import fit_spec
from mixbridge.python_impl.spec import GlmerSpec, check_nb_theta, glmer_spec
from mixbridge.results import Message, MixedFit

NB_TOL = 5e-5  # glmer.nb's tol (optimize() on log θ)
NB_HALF_WIDTH = 3.0  # glmer.nb's interval = log(th) + c(-3, 3)
THETA_ML_LIMIT = 20  # initCtrl$limit
THETA_ML_EPS = 2 * NB_TOL  # initCtrl$eps


def theta_ml(
    y: np.ndarray, mu: np.ndarray, weights: np.ndarray, limit: int = THETA_ML_LIMIT,
    eps: float = THETA_ML_EPS,
) -> tuple[float, list[str]]:  # fmt: skip
    """MASS::theta.ml: Newton steps on the NB score for θ at fixed μ, from the moment
    estimate n / Σ w (y/μ − 1)²; returns (θ, warnings) with MASS's warnings."""
    w = np.asarray(weights, dtype=float)
    n = float(np.sum(w))
    t0 = n / float(np.sum(w * (y / mu - 1.0) ** 2))
    it, delta = 0, 1.0
    while True:
        it += 1
        if not (it < limit and abs(delta) > eps):
            break
        t0 = abs(t0)
        score = np.sum(
            w * (special.digamma(t0 + y) - special.digamma(t0) + math.log(t0) + 1.0
                 - np.log(t0 + mu) - (y + t0) / (mu + t0))
        )  # fmt: skip
        info = np.sum(
            w * (-special.polygamma(1, t0 + y) + special.polygamma(1, t0) - 1.0 / t0
                 + 2.0 / (mu + t0) - (y + t0) / (mu + t0) ** 2)
        )  # fmt: skip
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
    if theta_start is None:
        spec0 = glmer_spec(formula, data, family="poisson", **common)  # type: ignore[arg-type]
        g0 = fit_spec(spec0)
        th0, warns = theta_ml(spec0.y, np.asarray(g0.fitted), spec0.weights)
        for text in warns:
            messages.append(Message("warning", text, "python", code="nb_theta_start"))
        if not (math.isfinite(th0) and th0 > 0):
            # theta.ml failed (no overdispersion at all): start at a large θ, the Poisson side
            th0 = 1e4
        start_how = "theta.ml on the poisson fit"
    else:
        th0 = check_nb_theta(theta_start, "theta_start")
        start_how = "theta_start"
    # one spec; each trial θ swaps the family (the start η depends only on y: MASS's mustart)
    base = glmer_spec(formula, data, family="negative.binomial", nb_theta=th0, **common)  # type: ignore[arg-type]
    fits: dict[float, MixedFit] = {}

    def fit_at(t: float) -> MixedFit:
        if t not in fits:
            spec: GlmerSpec = dataclasses.replace(base, family=NegativeBinomial(math.exp(t)))
            fits[t] = fit_spec(spec)
        return fits[t]

    def profile(t: float) -> float:
        crit = fit_at(float(t)).criterion
        return crit if math.isfinite(crit) else float("inf")

    lo, hi = math.log(th0) - NB_HALF_WIDTH, math.log(th0) + NB_HALF_WIDTH
    res = optimize.minimize_scalar(
        profile, bounds=(lo, hi), method="bounded", options={"xatol": NB_TOL}
    )
    t_hat = float(res.x)
    fit = fit_at(t_hat)
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
        "n_evals": len(fits),
        "profile": sorted((math.exp(t), f.criterion) for t, f in fits.items()),
    }
    return fit
