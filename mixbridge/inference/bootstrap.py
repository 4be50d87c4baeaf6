"""Parametric bootstrap intervals: lme4's `confint(method = "boot")`, i.e. `bootMer(fit, FUN,
nsim, type = "parametric", use.u = FALSE)` then `boot.ci(type = "perc")` per parameter.

Each replicate draws a new response from the fitted model (`fit.simulate`: new random effects,
new noise), refits the same model to it (same REML setting, same data otherwise) and records
lme4's parameters: the standard deviations and correlations (`.sig01`, …), `.sigma`, the fixed
effects. The percentile interval at `level` is boot's `norm.inter` quantile of the replicates
(order statistics (R + 1)α interpolated on the normal scale), replicates whose refit failed
left out as bootMer does.

The `(1|g)` model refits on the group sums of the simulated response (one pass over the rows,
then the O(G) 1-D search of `lmm_scalar`): 1000 replicates of 1e5 rows take seconds.
`seed` makes a run reproducible (numpy's generator; R's random numbers cannot be matched, so the
comparison with bootMer is within Monte Carlo error: `BOOT_MC_K` in the tolerance policy).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy import special  # not scipy.stats: its import alone takes seconds

from mixbridge.errors import ArgumentError
from mixbridge.inference import params
from mixbridge.results import MixedFit

_CHUNK_ROWS = 5_000_000  # simulated responses held at once (rows x replicates)


def percentile_interval(t: np.ndarray, level: float) -> tuple[float, float]:
    """boot's percentile interval (`norm.inter`): (R + 1)α-th order statistics, interpolated
    on the normal quantile scale between neighbours; non-finite replicates dropped."""
    t = np.sort(np.asarray(t, float)[np.isfinite(t)])
    r = t.size
    if r == 0:
        return math.nan, math.nan
    out = []
    for alpha in ((1.0 - level) / 2.0, (1.0 + level) / 2.0):
        rk = (r + 1) * alpha
        k = int(math.trunc(rk))
        if k == rk and 0 < k <= r:
            out.append(float(t[k - 1]))
        elif k <= 0:
            out.append(float(t[0]))
        elif k >= r:
            out.append(float(t[r - 1]))
        else:
            q = special.ndtri
            z, z1, z2 = q(alpha), q(k / (r + 1)), q((k + 1) / (r + 1))
            tk, tk1 = float(t[k - 1]), float(t[k])
            out.append(tk + (z - z1) / (z2 - z1) * (tk1 - tk))
    return out[0], out[1]


def quantile_mc_se(t: np.ndarray, alpha: float) -> float:
    """Monte Carlo standard error of the α sample quantile of the replicates t:
    sqrt(α(1 − α)/R)/f(q_α), f taken as the normal density with the replicates' sd."""
    t = np.asarray(t, float)[np.isfinite(t)]
    if t.size < 2:
        return math.nan
    sd = float(np.std(t, ddof=1))
    z = float(special.ndtri(alpha))
    return (
        sd
        * math.sqrt(alpha * (1.0 - alpha) / t.size)
        / (math.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi))
    )


class Progress:
    """Progress of a long run: `progress` True prints "bootstrap: k/n replicates" to stderr
    (every 2 s); None does so only once the run has taken 5 s; a callable gets (done, total)."""

    def __init__(self, progress: bool | Callable[[int, int], None] | None, total: int) -> None:
        self.callback = progress if callable(progress) else None
        self.mode = progress
        self.total = total
        self.start = time.monotonic()
        self.last = self.start
        self.printed = False

    def update(self, done: int) -> None:
        if self.callback is not None:
            self.callback(done, self.total)
            return
        if self.mode is False:
            return
        now = time.monotonic()
        due = now - self.last >= 2.0 or done == self.total
        if self.mode is None and now - self.start < 5.0:
            due = False
        if due and (done < self.total or self.printed):
            rate = done / max(now - self.start, 1e-9)
            left = (self.total - done) / rate if rate > 0 else math.nan
            sys.stderr.write(
                f"\rbootstrap: {done}/{self.total} replicates ({left:.0f} s left)  "
                if done < self.total
                else f"\rbootstrap: {done}/{self.total} replicates, {now - self.start:.1f} s\n"
            )
            sys.stderr.flush()
            self.printed = True
            self.last = now


def boot_replicates(
    fit: MixedFit,
    nsim: int,
    seed: int | None = None,
    progress: bool | Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """nsim × parameters: lme4's confint parameters of each refit (NaN rows for failed refits),
    columns named as confint's rows."""
    from mixbridge.inference.confint import parameter_names

    if fit.methods.simulate is None:
        raise ArgumentError(
            "bootstrap intervals need the fit's simulate(); this fit has none (e.g. unpickled)",
            "fit",
        )
    names, _ = parameter_names(fit)
    refit, draw = _refitter(fit)
    n = int(fit.nobs)
    chunk = max(1, min(nsim, _CHUNK_ROWS // max(n, 1)))
    seeds = np.random.SeedSequence(seed).spawn(math.ceil(nsim / chunk))
    out = np.full((nsim, len(names)), np.nan)
    bar = Progress(progress, nsim)
    done = 0
    for s in seeds:
        k = min(chunk, nsim - done)
        rng = np.random.default_rng(s)
        ys = None if draw is not None else fit.simulate(k, seed=rng.integers(2**63))
        for i in range(k):
            y = draw(rng) if draw is not None else np.asarray(ys[:, i], float)  # type: ignore[index]
            try:
                out[done + i] = refit(y)
            except (ArithmeticError, ValueError, np.linalg.LinAlgError):
                pass  # bootMer keeps a failed refit as NA
        done += k
        bar.update(done)
    return pd.DataFrame(out, columns=names)


def boot_confint(
    fit: MixedFit,
    level: float,
    *,
    nsim: int,
    seed: int | None,
    progress: bool | Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """confint(fit, method = "boot"): percentile intervals of `boot_replicates`."""
    from mixbridge.inference.confint import frame

    reps = boot_replicates(fit, nsim, seed, progress)
    bounds = [percentile_interval(reps[c].to_numpy(), level) for c in reps.columns]
    table = frame(list(reps.columns), [b[0] for b in bounds], [b[1] for b in bounds])
    table.attrs["replicates"] = reps
    return table


# ---------------------------------------------------------------------------------------------
# Refitting a simulated response


Draw = Callable[[np.random.Generator], np.ndarray] | None


def _refitter(fit: MixedFit) -> tuple[Callable[[np.ndarray], np.ndarray], Draw]:
    """The refit of one simulated response, and (for the (1|g) path) a draw of one response
    minus its offset (None: responses come from fit.simulate)."""
    if fit.call is None:
        raise ArgumentError(
            "this fit was not made by mixbridge.lmer/glmer (it has no call): the bootstrap "
            "refits the model",
            "fit",
        )
    if fit.model == "lmer":
        return _lmer_refitter(fit)
    return _glmer_refitter(fit), None


def _lmer_refitter(fit: MixedFit) -> tuple[Callable[[np.ndarray], np.ndarray], Draw]:
    from mixbridge.python_impl.lmer import fit_terms
    from mixbridge.python_impl.lmm_scalar import scalar_ri_fit
    from mixbridge.python_impl.pls import blas_single_thread, select_core
    from mixbridge.python_impl.pls_diagonal import DiagonalCore
    from mixbridge.python_impl.spec import check_lmer_terms, mixed_terms

    call = fit.call
    assert call is not None
    terms = mixed_terms(
        call.formula, call.data, weights=call.weights, offset=call.offset, model="lmer"
    )
    check_lmer_terms(terms)
    sizes = [t.p for t in terms.reterms]
    reml = bool(fit.reml)
    core = select_core(terms, weights_vary=False)
    if isinstance(core, DiagonalCore):
        w = None if terms.weights is None else np.asarray(terms.weights, float)
        if w is not None and np.all(w == 1.0):
            w = None
        # simulate.merMod for (1|g), without the offset (the refit would only subtract it):
        # y = Xβ̂ + σθ·z[g] + σ/√w·ε, z and ε standard normal
        beta = fit.fixef.to_numpy(float)
        pop = terms.x_times(beta)
        codes = np.asarray(terms.reterms[0].codes)
        n_groups = terms.reterms[0].n_levels
        sd_b = float(fit.sigma) * float(fit.theta[0])
        sd_e = float(fit.sigma) / np.sqrt(w) if w is not None else float(fit.sigma)

        def draw(rng: np.random.Generator) -> np.ndarray:
            y = rng.standard_normal(pop.size)
            y *= sd_e
            y += pop
            y += (sd_b * rng.standard_normal(n_groups))[codes]
            return y

        def scalar(y: np.ndarray) -> np.ndarray:
            with blas_single_thread():
                res = scalar_ri_fit(core.group_stats(y, w), reml)
            sv = params.theta_to_sv(np.array([res.theta]), sizes, res.sigma)
            return np.concatenate([sv, [res.sigma], np.asarray(res.beta, float)])

        return scalar, draw

    def general(y: np.ndarray) -> np.ndarray:
        refit = fit_terms(dataclasses.replace(terms, y=y), formula=fit.formula, reml=reml)
        sv = params.theta_to_sv(refit.theta, sizes, refit.sigma)
        return np.concatenate([sv, [refit.sigma], refit.fixef.to_numpy(float)])

    return general, None


def _glmer_refitter(fit: MixedFit) -> Callable[[np.ndarray], np.ndarray]:
    from mixbridge.python_impl.glmer import fit_spec
    from mixbridge.python_impl.spec import glmer_spec

    call = fit.call
    spec0 = glmer_spec(
        call.formula, call.data, family=call.family, link=call.link, nagq=call.nagq,
        weights=call.weights, offset=call.offset, nb_theta=call.nb_theta,
    )  # fmt: skip
    terms0 = spec0.terms
    fam = spec0.family
    sizes = [t.p for t in terms0.reterms]
    trials = None if terms0.n_trials is None else np.asarray(terms0.n_trials, float)
    w0 = np.asarray(terms0.weights, float)
    sigma = params.has_sigma(fit.model, fit.family)

    def refit(ysim: np.ndarray) -> np.ndarray:
        # simulate gives binomial successes: the response glmer sees is their proportion
        y = ysim
        if fam.family == "binomial":
            y = ysim / (trials if trials is not None and np.any(trials > 1) else np.maximum(w0, 1))
        terms = dataclasses.replace(terms0, y=y)
        init = fam.initialize(y, w0, n_trials=terms.n_trials, response=terms.response_name)
        spec = dataclasses.replace(
            spec0, terms=terms, y=np.asarray(init.y), weights=np.asarray(init.weights),
            n_trials=np.asarray(init.n),
            eta_init=spec0.offset + np.asarray(fam.linkfun(init.mustart), dtype=float),
            messages=[],
        )  # fmt: skip
        f = fit_spec(spec)
        sv = params.theta_to_sv(f.theta, sizes, f.sigma if sigma else 1.0)
        extra = [f.sigma] if sigma else []
        return np.concatenate([sv, extra, f.fixef.to_numpy(float)])

    return refit
