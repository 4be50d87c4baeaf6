"""Profile-likelihood intervals: lme4's `profile.merMod` + `confint.thpr`, with the crossing
solved for instead of interpolated.

lme4 profiles the maximum-likelihood deviance (a REML fit is refitted by ML first, `devfun2`'s
`refitML`) over the parameters it reports: the random-effects standard deviations and
correlations and `.sigma` (lmer), then the fixed effects. For one parameter held at v, every
other one is optimized; ζ(v) = sign(v − v̂)·sqrt(dev(v) − dev(v̂)) and the interval at `level`
is where ζ = ±qnorm((1 + level)/2). lme4 evaluates ζ on a grid and inverts an interpolating
spline; here each bound is a root of ζ(v) ∓ z found by bracketing and Brent's method, so it is
exact up to the inner optimizations (~1e-9 in the deviance).

- lmer, variance parameters: dev(sd, cor, σ) = log|L_θ|² − Σ log w + pwrss(θ)/σ² + n log(2πσ²)
  with θ = Sv_to_Cv(sd, cor)/σ (lme4's devfun2), β profiled out by the PLS solve;
- lmer, fixed effect β_j = b: β_{-j} and u are still profiled out in closed form,
  pwrss_j(θ) = pwrss(θ) + (b − β̂_j(θ))² / [(R_X'R_X)⁻¹]_jj, and σ too:
  dev = log|L_θ|² − Σ log w + n(1 + log(2π pwrss_j/n)), minimized over θ;
- glmer: the Laplace/AGQ deviance of (θ, β) (the fit's objective), every other parameter
  optimized.
A standard deviation whose profile does not reach −z before 0 has the lower bound 0 (as lme4);
a correlation that does not reach ±z before ±1 gets NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, special

from mixbridge.errors import ArgumentError
from mixbridge.inference import params
from mixbridge.results import MixedFit

# the inner optimizations: the deviance to ~1e-9 relative, far below what moves a bound
_INNER_OPTIONS = {"ftol": 1e-13, "gtol": 1e-9, "maxiter": 2000, "maxls": 50}


@dataclass
class Profiled:
    """One parameter's profile: ζ at the values tried (for inspection, like lme4's thpr)."""

    name: str
    estimate: float
    values: list[float] = field(default_factory=list)
    zeta: list[float] = field(default_factory=list)


class _Problem:
    """A deviance over a parameter vector x, with bounds, from which one coordinate at a time is
    profiled (the others optimized, warm-started from the nearest value already profiled)."""

    def __init__(
        self,
        dev: Callable[[np.ndarray], float],
        x_hat: np.ndarray,
        lower: np.ndarray,
        upper: np.ndarray,
        scale: np.ndarray,
    ) -> None:
        self.dev = dev
        self.x_hat = np.asarray(x_hat, float)
        self.lower = lower
        self.upper = upper
        self.scale = scale
        self.base = float(dev(self.x_hat))

    def profile(self, k: int) -> Callable[[float], float]:
        """g(v) = min over x_{-k} of dev(x) with x_k = v."""
        free = np.array([i for i in range(self.x_hat.size) if i != k], int)
        solved: dict[float, np.ndarray] = {float(self.x_hat[k]): self.x_hat[free].copy()}

        def start(v: float) -> np.ndarray:
            """The free parameters at v extrapolated from the two nearest solutions (the
            profile trace is smooth): the inner optimization then starts close."""
            near = sorted(solved, key=lambda t: abs(t - v))[:2]
            if len(near) < 2 or near[0] == near[1]:
                return solved[near[0]]
            v1, v2 = near
            return solved[v1] + (v - v1) * (solved[v1] - solved[v2]) / (v1 - v2)

        def g(v: float) -> float:
            x = self.x_hat.copy()
            x[k] = v
            if free.size == 0:
                return float(self.dev(x))
            sc = self.scale[free]

            def f(y: np.ndarray) -> float:
                x[free] = y * sc
                val = float(self.dev(x))
                return val if math.isfinite(val) else 1e300

            bounds = list(zip(self.lower[free] / sc, self.upper[free] / sc, strict=True))
            lo, hi = [b[0] for b in bounds], [b[1] for b in bounds]
            # the extrapolated start, unless the nearest solution itself is better (an
            # extrapolation clipped at a bound can land where the deviance is huge and flat)
            best_y, best = None, math.inf
            nearest = solved[min(solved, key=lambda t: abs(t - v))]
            for cand in (start(v), nearest):
                y0 = np.clip(cand / sc, lo, hi)
                f0 = f(y0)
                if best_y is None or f0 < best:
                    best_y, best = y0, f0
            for _ in range(2):  # one restart when a numerical gradient stopped L-BFGS-B early
                res = optimize.minimize(
                    f, best_y, method="L-BFGS-B", bounds=bounds, options=_INNER_OPTIONS
                )
                if res.fun < best:
                    best_y, best = np.asarray(res.x, float), float(res.fun)
                if res.success:
                    break
            # A standard deviation (or θ) at its bound 0 is a stationary point of the deviance,
            # which is even in it: L-BFGS-B cannot leave it. Try again from 1 (the scale) there.
            at_zero = (self.lower[free] == 0.0) & (best_y == 0.0)
            if np.any(at_zero):
                y1 = best_y.copy()
                y1[at_zero] = 1.0
                res = optimize.minimize(
                    f, y1, method="L-BFGS-B", bounds=bounds, options=_INNER_OPTIONS
                )
                if res.fun < best:
                    best_y, best = np.asarray(res.x, float), float(res.fun)
            solved[float(v)] = best_y * sc
            return best

        return g


def _crossing(
    zeta: Callable[[float], float],
    est: float,
    direction: int,
    step: float,
    bound: float,
    z: float,
    at_bound: float,
) -> float:
    """v beyond est (in `direction`) where ζ(v) = direction·z; `at_bound` if ζ does not get
    there before `bound`."""
    target = direction * z
    prev_v, prev_z = est, 0.0
    v = est + direction * step
    for _ in range(100):
        if (v - bound) * direction >= 0:
            v = bound
        zv = zeta(v)
        if direction * zv >= z:
            return optimize.brentq(
                lambda t: zeta(t) - target, min(prev_v, v), max(prev_v, v),
                xtol=1e-7 * step, rtol=1e-10, maxiter=200,
            )  # fmt: skip
        if v == bound:
            return at_bound
        slope = (zv - prev_z) / (v - prev_v)
        prev_v, prev_z = v, zv
        jump = (target - zv) / slope if slope * direction > 0 else 4 * direction * step
        jump = direction * min(max(abs(jump) * 1.1, step / 4), 8 * step)
        v = v + jump
    return math.nan


def _zeta(g: Callable[[float], float], base: float, est: float) -> Callable[[float], float]:
    def zeta(v: float) -> float:
        d = g(v) - base
        return math.copysign(math.sqrt(max(d, 0.0)), v - est)

    return zeta


def _interval(
    problem: _Problem, k: int, kind: str, step: float, z: float, prof: Profiled
) -> tuple[float, float]:
    est = float(problem.x_hat[k])
    g = problem.profile(k)
    zeta0 = _zeta(g, problem.base, est)

    def zeta(v: float) -> float:
        out = zeta0(v)
        prof.values.append(float(v))
        prof.zeta.append(out)
        return out

    lo_b, hi_b = float(problem.lower[k]), float(problem.upper[k])
    low_at = 0.0 if kind == "sd" else math.nan  # an sd's profile may end at 0: lme4 says 0
    if kind == "sd" and est <= 0.0:
        lower = 0.0
    else:
        lower = _crossing(zeta, est, -1, min(step, est - lo_b) if math.isfinite(lo_b) else step,
                          lo_b if math.isfinite(lo_b) else -math.inf, z, low_at)  # fmt: skip
    upper = _crossing(zeta, est, +1, min(step, hi_b - est) if math.isfinite(hi_b) else step,
                      hi_b if math.isfinite(hi_b) else math.inf, z, math.nan)  # fmt: skip
    return lower, upper


# ---------------------------------------------------------------------------------------------
# lmer


class _LmerPieces:
    """log|L_θ|², pwrss(θ) and, for the fixed-effect profiles, β̂(θ) and (R_X'R_X)⁻¹ at θ, from
    the blocked core (any random-effects structure)."""

    def __init__(self, terms: Any) -> None:
        from mixbridge.python_impl.lmer_devfun import LmerDevfun

        self.devfun = LmerDevfun(terms, reml=False)
        self.n = int(self.devfun.pred.n)
        self.ldW = float(self.devfun.ldW)
        self.theta_lower = np.asarray(self.devfun.lower, float)

    def basic(self, theta: np.ndarray) -> tuple[float, float]:
        ld, _ldrx, r2 = self.devfun.pred.profile(np.asarray(theta, float), self.devfun.y)
        return float(ld), float(r2)

    def fixed_dev(self, j: int) -> Callable[[np.ndarray, float], float]:
        """dev(θ, b) with β_j = b: the model with X's column j moved into the offset, whose
        profiled ML deviance the augmented factorization gives directly (one Cholesky per θ)."""
        import dataclasses

        from mixbridge.python_impl.pls_blocked import BlockedCore

        terms = self.devfun.terms
        x = np.asarray(terms.X, dtype=float)
        keep = [k for k in range(x.shape[1]) if k != j]
        names = [terms.x_names[k] for k in keep]
        reduced = dataclasses.replace(terms, _x=np.ascontiguousarray(x[:, keep]), x_names=names,
                                      x_columns=None)  # fmt: skip
        core = BlockedCore(reduced)
        xj = x[:, j].copy()
        y0 = self.devfun.y
        n, ldW = self.n, self.ldW
        cache: dict[float, np.ndarray] = {}

        def dev(theta: np.ndarray, b: float) -> float:
            if b not in cache:
                cache.clear()
                cache[b] = y0 - b * xj
            ld, _ldrx, r2 = core.profile(np.asarray(theta, float), cache[b])
            return ld - ldW + n * (1.0 + math.log(2.0 * math.pi * r2 / n))

        return dev


def _lmer_terms(fit: MixedFit) -> Any:
    from mixbridge.python_impl.spec import check_lmer_terms, mixed_terms

    call = _call(fit)
    terms = mixed_terms(
        call.formula, call.data, weights=call.weights, offset=call.offset, model="lmer"
    )
    check_lmer_terms(terms)
    return terms


def _call(fit: MixedFit) -> Any:
    if fit.call is None:
        raise ArgumentError(
            "this fit was not made by mixbridge.lmer/glmer (it has no call): profile intervals "
            "refit the model",
            "fit",
        )
    return fit.call


def _ml_fit(fit: MixedFit, terms: Any) -> MixedFit:
    """The fit itself when it is an ML fit of the Python engine, else lme4's refitML."""
    if not fit.reml and fit.engine == "python":
        return fit
    from mixbridge.python_impl.lmer import fit_terms

    return fit_terms(terms, formula=fit.formula, reml=False)


def _lmer_profile(fit: MixedFit, wanted: list[str], z: float) -> dict[str, tuple[float, float]]:
    from mixbridge.python_impl.pls import blas_single_thread

    terms = _lmer_terms(fit)
    with blas_single_thread():
        scalar = _scalar_pieces(terms)
        pieces = scalar or _LmerPieces(terms)
        ml = scalar.ml_estimates(fit) if scalar is not None else _ml_fit(fit, terms)
        sizes = [t.p for t in terms.reterms]
        kinds = params.sv_kinds(sizes) + ["sigma"]
        n, ldW = pieces.n, pieces.ldW
        two_pi = 2.0 * math.pi
        sigma_hat = float(ml.sigma)
        # σ enters as log σ: unbounded, so no line search runs into σ = 0, where the deviance
        # is infinite (its profile is solved in log σ and mapped back)
        x_hat = np.append(params.theta_to_sv(ml.theta, sizes, sigma_hat), math.log(sigma_hat))

        def dev_var(x: np.ndarray) -> float:
            sigma = math.exp(x[-1])
            theta = params.sv_to_theta(x[:-1], sizes, sigma)
            ld, r2 = pieces.basic(theta)
            return ld - ldW + r2 / (sigma * sigma) + n * math.log(two_pi * sigma * sigma)

        lower = np.array([0.0 if k == "sd" else -1.0 if k == "cor" else -math.inf for k in kinds])
        upper = np.array([math.inf if k != "cor" else 1.0 for k in kinds])
        # a zero sd (singular fit) gets σ̂ as its scale: profiles move it by about that much
        scale = np.array([1.0 if k in ("cor", "sigma") else abs(v) if v > 0 else sigma_hat
                          for k, v in zip(kinds, x_hat, strict=True)])  # fmt: skip
        var_problem = _Problem(dev_var, x_hat, lower, upper, scale)
        names, n_var = _names(fit)
        out: dict[str, tuple[float, float]] = {}
        se = ml.fixef_se.to_numpy()
        for name in wanted:
            k = names.index(name)
            prof = Profiled(name, math.nan)
            if k < n_var:
                kind = kinds[k]
                est = float(x_hat[k])
                if kind == "cor":
                    step = 0.25
                elif kind == "sigma":  # in log σ: its se is about 1/sqrt(2n)
                    step = max(z / math.sqrt(2.0 * n), 1e-3)
                else:
                    step = max(0.5 * est, 0.05 * sigma_hat)
                lo, hi = _interval(var_problem, k, kind, step, z, prof)
                out[name] = (math.exp(lo), math.exp(hi)) if kind == "sigma" else (lo, hi)
            else:
                j = k - n_var
                out[name] = _fixed_interval(pieces, ml, j, float(se[j]), z, prof)
    return out


def _fixed_interval(
    pieces: Any, ml: MixedFit, j: int, se: float, z: float, prof: Profiled
) -> tuple[float, float]:
    """β_j's profile: u, β_{-j} and σ profiled out in closed form, θ optimized."""
    theta_hat = np.asarray(ml.theta, float)
    lower = pieces.theta_lower
    bhat = float(ml.fixef.iloc[j])
    dev = pieces.fixed_dev(j)

    def dev_x(x: np.ndarray) -> float:
        return dev(x[:-1], x[-1])

    x_hat = np.append(theta_hat, bhat)
    scale = np.append(np.maximum(np.abs(theta_hat), 0.1), max(se, 1e-12))
    problem = _Problem(
        dev_x, x_hat, np.append(lower, -math.inf), np.full(x_hat.size, math.inf), scale
    )
    problem.upper[:-1] = math.inf
    return _interval(problem, x_hat.size - 1, "beta", se, z, prof)


def _scalar_pieces(terms: Any) -> Any:
    """The O(G) pieces for a model whose only random term is (1|g) (None otherwise)."""
    from mixbridge.inference.scalar_profile import scalar_pieces

    return scalar_pieces(terms)


def _names(fit: MixedFit) -> tuple[list[str], int]:
    from mixbridge.inference.confint import parameter_names

    return parameter_names(fit)


# ---------------------------------------------------------------------------------------------
# glmer


def _glmer_profile(fit: MixedFit, wanted: list[str], z: float) -> dict[str, tuple[float, float]]:
    if params.has_sigma(fit.model, fit.family):
        raise NotImplementedError(
            f"profile intervals for glmer family {fit.family!r} (a scale parameter) are not "
            "implemented; use method='wald' or 'boot'"
        )
    if fit.methods.objective is None:
        raise ArgumentError(
            "profile intervals need the fit's deviance function (fit.objective); this fit has "
            "none (e.g. unpickled)",
            "fit",
        )
    sizes = _glmer_sizes(fit)
    n_theta = len(fit.theta)
    kinds = params.sv_kinds(sizes)
    beta_hat = fit.fixef.to_numpy(dtype=float)
    x_hat = np.concatenate([params.theta_to_sv(fit.theta, sizes), beta_hat])

    def dev(x: np.ndarray) -> float:
        theta = params.sv_to_theta(x[: len(kinds)], sizes)
        return float(fit.objective(theta, x[len(kinds) :]))

    lower = np.concatenate(
        [[0.0 if k == "sd" else -1.0 for k in kinds], np.full(beta_hat.size, -math.inf)]
    )
    upper = np.concatenate(
        [[math.inf if k == "sd" else 1.0 for k in kinds], np.full(beta_hat.size, math.inf)]
    )
    se = fit.fixef_se.to_numpy()
    sv_hat = x_hat[: len(kinds)]
    sv_scale = [
        1.0 if k == "cor" else max(abs(v), 0.05) for k, v in zip(kinds, sv_hat, strict=True)
    ]
    scale = np.concatenate([sv_scale, np.maximum(se, 1e-8)])
    problem = _Problem(dev, x_hat, lower, upper, scale)
    names, n_var = _names(fit)
    assert n_var == n_theta
    out = {}
    for name in wanted:
        k = names.index(name)
        prof = Profiled(name, float(x_hat[k]))
        if k < n_var:
            kind = kinds[k]
            step = 0.25 if kind == "cor" else max(0.5 * float(x_hat[k]), 0.05)
        else:
            kind, step = "beta", float(se[k - n_var])
        out[name] = _interval(problem, k, kind, step, z, prof)
    return out


def _glmer_sizes(fit: MixedFit) -> list[int]:
    from mixbridge.python_impl.spec import mixed_terms

    call = _call(fit)
    terms = mixed_terms(
        call.formula, call.data, weights=call.weights, offset=call.offset, model="glmer",
        family=call.family,
    )  # fmt: skip
    return [t.p for t in terms.reterms]


def profile_confint(fit: MixedFit, level: float, wanted: list[str]) -> pd.DataFrame:
    """confint(fit, method = "profile") for the Python engine (see the module docstring)."""
    from mixbridge.inference.confint import frame

    z = float(special.ndtri((1.0 + level) / 2.0))
    if fit.model == "lmer":
        found = _lmer_profile(fit, wanted, z)
    else:
        found = _glmer_profile(fit, wanted, z)
    lower = [found[n][0] for n in wanted]
    upper = [found[n][1] for n in wanted]
    return frame(wanted, lower, upper)
