"""A convergence verdict: refit a model with several optimizers and starts, score every optimum
with the same deviance function, and say whether a convergence warning matters (issue 16).

    res = mixbridge.allfit(fit)        # or fit.allfit()
    print(res.verdict)                 # "false alarm: ..." or "real: ..."
    res.table                          # one row per optimum

Optima come from two places:

* the Python engine: its own fit, and scipy's L-BFGS-B, Nelder–Mead and Powell (all bounded)
  from lme4's default start, and Nelder–Mead restarted from the engine's optimum, on the
  Python deviance function (lmer: θ, β profiled; glmer: (θ, β), Laplace/AGQ);
* the R engine (when R is there): every optimizer of `lme4::allFit` (optimizers whose packages
  are missing are skipped with a note, as allFit does).

Every optimum is scored by the Python deviance function (`criterion_python`) and, where R is
there, by lme4's (`criterion_r`); `criterion` is the function of the fit's own engine, and the
verdict compares the optima on it with the thresholds of `ALLFIT_TOLERANCES`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mixbridge.errors import ArgumentError, ConvergenceError, RNotAvailableError

if TYPE_CHECKING:
    from mixbridge.results import MixedFit


@dataclass(frozen=True)
class AllfitTolerances:
    """When optima "agree". One place, each threshold with its reason.

    deviance: 1e-3 in the deviance (-2 logLik or the REML criterion). A likelihood-ratio
        statistic, AIC or BIC moves by that much at most: below the precision anyone reports
        them at (lme4's own optimizers stop 1e-5..1e-4 apart on well-posed models, e.g.
        sleepstudy's allFit spans 2e-7).
    fixef_se: 0.01 standard errors in each fixed effect (the SE from the fit's vcov). A move
        that small changes no z or t statistic in its second digit, so no inference; a relative
        threshold would flag a coefficient near zero whose change is irrelevant.
    theta: 0.01 in each θ (a relative SD: σ_b/σ for lmer, σ_b for glmer), or 1% of |θ| where
        that is larger: below the two digits VarCorr's standard deviations are read at.
    """

    deviance: float = 1e-3
    fixef_se: float = 0.01
    theta: float = 0.01


ALLFIT_TOLERANCES = AllfitTolerances()

# the Python engine's optimizers (scipy, bounded), each from lme4's default start, plus a
# Nelder–Mead restart from the engine's optimum (a second start)
PYTHON_OPTIMIZERS = ("L-BFGS-B", "Nelder-Mead", "Powell", "Nelder-Mead (restart)")
MAX_EVALS = 20_000  # per scipy run; lme4's allFit gives each optimizer maxfun = 1e5
# the Python optimizers minimize the converged glmer deviance (PIRLS to 1e-12): lme4's 1e-7
# early stop makes the function rough at the scale of finite differences; every optimum is
# then scored with the fit's own function
_TIGHT_PIRLS = {"tol_pwrss": 1e-12}


@dataclass(eq=False)  # compared by identity (θ and fixef are arrays)
class Optimum:
    """One optimizer's optimum, scored by the deviance functions."""

    optimizer: str
    engine: str
    start: str
    theta: np.ndarray | None
    fixef: pd.Series | None
    criterion: float = float("nan")
    criterion_python: float = float("nan")
    criterion_r: float = float("nan")
    converged: bool = False
    messages: list[str] = field(default_factory=list)
    seconds: float = float("nan")
    agrees: bool | None = None  # with the best optimum, within ALLFIT_TOLERANCES


@dataclass
class AllfitResult:
    """The optima (`optima`, `table`), the verdict (`kind`: "false alarm" or "real"; `verdict`:
    the sentence), the best optimum, and what moves between optima beyond the tolerances."""

    optima: list[Optimum]
    reference: str
    kind: str
    verdict: str
    best: Optimum
    deviance_spread: float
    estimate_spread: dict[str, float]
    moves: dict[str, float]
    notes: list[str]
    fit_gap: float
    fit_at_best: bool
    tolerances: AllfitTolerances = ALLFIT_TOLERANCES

    @property
    def table(self) -> pd.DataFrame:
        """One row per optimum: optimizer, engine, start, criterion (the fit engine's deviance
        function), gap to the best, criterion_python, criterion_r, θ, fixef, agrees (with the
        best optimum, within ALLFIT_TOLERANCES), converged (the optimizer's own report),
        messages, seconds."""
        best = self.best.criterion
        rows = []
        for o in self.optima:
            rows.append(
                {
                    "optimizer": o.optimizer,
                    "engine": o.engine,
                    "start": o.start,
                    "criterion": o.criterion,
                    "gap": o.criterion - best,
                    "criterion_python": o.criterion_python,
                    "criterion_r": o.criterion_r,
                    "theta": None if o.theta is None else np.asarray(o.theta),
                    "fixef": None if o.fixef is None else o.fixef.to_dict(),
                    "agrees": o.agrees,
                    "converged": o.converged,
                    "messages": "; ".join(o.messages),
                    "seconds": o.seconds,
                }
            )
        return pd.DataFrame(rows)

    def _repr_html_(self) -> str:
        import html

        cols = ["optimizer", "engine", "start", "criterion", "gap", "agrees", "converged"]
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in self.notes)
        return (
            f"<div><p><b>allfit</b> ({html.escape(self.reference)} deviance function)</p>"
            f"{self.table[cols].to_html(index=False)}<p>{html.escape(self.verdict)}</p>"
            f"{f'<ul>{notes}</ul>' if notes else ''}</div>"
        )

    def __str__(self) -> str:
        with pd.option_context("display.width", 140, "display.max_colwidth", 40):
            shown = self.table[
                ["optimizer", "engine", "start", "criterion", "gap", "agrees", "converged"]
            ]
            lines = [f"allfit ({self.reference} deviance function)", shown.to_string(), ""]
        lines.append(self.verdict)
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def allfit(
    fit: MixedFit,
    *,
    engines: Sequence[str] | None = None,
    python_optimizers: Sequence[str] = PYTHON_OPTIMIZERS,
    transport: str | None = None,
    timeout: float | None = None,
) -> AllfitResult:
    """Refit `fit`'s model with several optimizers and starts and give a verdict on whether
    the optimizers agree (see the module docstring).

    engines: ("python", "r") by default: R's rows when R is available (a note says when it is
    not; an R-engine fit needs R). python_optimizers: a subset of PYTHON_OPTIMIZERS.
    transport, timeout: for the R call (as in `mixbridge.lmer`). The refits use each engine's
    default settings (a `control=` of the fit is not carried over; lme4::allFit sets each
    optimizer's evaluation limit to 1e5).
    """
    from mixbridge.results import MixedFit

    if not isinstance(fit, MixedFit):
        raise ArgumentError(f"allfit needs a MixedFit, got {type(fit).__name__}", "fit")
    call = fit.call
    if call is None:
        raise ArgumentError(
            "allfit needs a fit made by mixbridge.lmer or mixbridge.glmer (fit.call is None)",
            "fit",
        )
    from mixbridge.data_input import is_dask

    if is_dask(call.data):
        raise ArgumentError(
            "allfit refits the model in memory: fit it on a pandas DataFrame (data.compute())",
            "fit",
        )
    if call.model == "glmer" and call.nagq == 0:
        raise ArgumentError("allfit needs nagq >= 1 (nAGQ = 0 has no deviance in β)", "fit")
    if fit.engine not in ("python", "r"):
        raise ArgumentError(f"allfit supports the python and r engines, not {fit.engine!r}", "fit")
    if engines is None:
        engines = ("python", "r")
    engines = tuple(engines)
    bad = [e for e in engines if e not in ("python", "r")] or (not engines and ["(none)"])
    if bad:
        raise ArgumentError(f"engines must be 'python' and/or 'r', got {bad[0]!r}", "engines")
    unknown = [o for o in python_optimizers if o not in PYTHON_OPTIMIZERS]
    if unknown:
        raise ArgumentError(
            f"unknown Python optimizer {unknown[0]!r}; known: {', '.join(PYTHON_OPTIMIZERS)}",
            "python_optimizers",
        )
    if fit.engine == "r" and "r" not in engines:
        raise ArgumentError("an R-engine fit is scored by lme4's function: engines needs 'r'",
                            "engines")  # fmt: skip
    notes: list[str] = []
    py = _PythonModel(fit, call)
    from mixbridge.python_impl.pls import blas_single_thread

    optima: list[Optimum] = []
    if "python" in engines:
        with blas_single_thread():  # as the engine's fits: threads only cost on small solves
            optima += py.optima(python_optimizers)
    if "r" in engines:
        optima += _r_optima(py, optima, fit, transport, timeout, notes)
    with blas_single_thread():
        for o in optima:
            if o.engine == "r" and np.isnan(o.criterion_python) and o.theta is not None:
                o.criterion_python = py.score(o.theta, o.fixef)
            o.criterion = o.criterion_r if fit.engine == "r" else o.criterion_python
    return _verdict(fit, optima, notes)


class _PythonModel:
    """The Python deviance function of the fit's model, and the Python engine's optima."""

    def __init__(self, fit: MixedFit, call: Any) -> None:
        import mixbridge

        self.call = call
        self.model = call.model
        args = {"weights": call.weights, "offset": call.offset}
        if fit.engine == "python":
            self.fit = fit
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if call.model == "lmer":
                    self.fit = mixbridge.lmer(call.formula, call.data, reml=call.reml, **args)
                else:
                    self.fit = mixbridge.glmer(
                        call.formula, call.data, family=call.family, link=call.link,
                        nagq=call.nagq, theta=call.nb_theta, **args,
                    )  # fmt: skip
        from mixbridge.python_impl.pls import lower_bounds, theta_start
        from mixbridge.python_impl.spec import mixed_terms

        terms = mixed_terms(
            call.formula, call.data, model=call.model,
            family=call.family if call.model == "glmer" else None, **args,
        )  # fmt: skip
        self.lower_theta = lower_bounds(terms.reterms)
        self.theta0 = theta_start(terms.reterms)
        self.names = list(self.fit.fixef.index)
        if call.model == "lmer":
            from mixbridge.python_impl.lmer_devfun import LmerDevfun
            from mixbridge.python_impl.spec import check_lmer_terms

            check_lmer_terms(terms)
            self.devfun = LmerDevfun(terms, call.reml)

    # lmer: x = θ; glmer: x = (θ, β)
    def lower(self) -> np.ndarray:
        if self.model == "lmer":
            return self.lower_theta
        return np.concatenate([self.lower_theta, np.full(len(self.names), -np.inf)])

    def split(self, x: np.ndarray) -> tuple[np.ndarray, pd.Series]:
        nth = self.lower_theta.size
        if self.model == "lmer":
            try:
                beta = self.devfun.state(np.asarray(x, dtype=float)).beta
            except (np.linalg.LinAlgError, FloatingPointError, ValueError):
                beta = np.full(len(self.names), np.nan)  # the PLS system fails there
            return np.asarray(x, dtype=float), pd.Series(beta, index=self.names)
        return np.asarray(x[:nth], dtype=float), pd.Series(x[nth:], index=self.names)

    def params(self, theta: np.ndarray, fixef: pd.Series | None) -> np.ndarray:
        if self.model == "lmer":
            return np.asarray(theta, dtype=float)
        assert fixef is not None
        return np.concatenate([theta, fixef.reindex(self.names).to_numpy(dtype=float)])

    def score(self, theta: np.ndarray, fixef: pd.Series | None) -> float:
        """The Python engine's deviance function at an optimum (the fit's `objective`); NaN
        where it cannot be evaluated (the row then counts as failed)."""
        try:
            if self.model == "lmer":
                return float(self.devfun(np.asarray(theta, dtype=float)))
            if fixef is None or list(fixef.index) != self.names:
                return float("nan")
            return float(self.fit.objective(theta, fixef.to_numpy(dtype=float)))
        except (ConvergenceError, np.linalg.LinAlgError, FloatingPointError, ValueError):
            return float("nan")

    def criterion_for_optimizers(self) -> Callable[[np.ndarray], float]:
        if self.model == "lmer":
            f = self.devfun.profiled
        else:
            nth = self.lower_theta.size
            obj = self.fit.objective

            def f(x: np.ndarray) -> float:
                return obj(x[:nth], x[nth:], control=_TIGHT_PIRLS)

        def safe(x: np.ndarray) -> float:
            try:
                v = float(f(np.asarray(x, dtype=float)))
            except (ConvergenceError, np.linalg.LinAlgError, FloatingPointError, ValueError):
                return 1e300
            return v if np.isfinite(v) else 1e300

        return safe

    def optima(self, methods: Sequence[str]) -> list[Optimum]:
        from scipy import optimize as sopt

        fit = self.fit
        engine_row = Optimum(
            optimizer=f"mixbridge ({fit.optimizer.get('name', 'default')})"
            if isinstance(fit.optimizer, dict) and fit.optimizer.get("name")
            else "mixbridge (default)",
            engine="python",
            start="lme4's",
            theta=np.asarray(fit.theta, dtype=float),
            fixef=fit.fixef.copy(),
            converged=bool(fit.converged),
            messages=[m.text for m in fit.messages if m.code == "convergence"],
        )
        engine_row.criterion_python = self.score(engine_row.theta, engine_row.fixef)
        out = [engine_row]
        crit = self.criterion_for_optimizers()
        # glmer: the optimizers see β in units of its standard error (the fit's vcov). A badly
        # scaled covariate makes the raw coordinates' curvatures differ by 1e6 and more, where
        # L-BFGS-B's finite differences stop short (cbpp with period in thousands: 2.4 above
        # the optimum); θ keeps its own unit (lme4's optimizers see it so too).
        scale = np.ones(self.lower().size)
        if self.model == "glmer":
            se = fit.fixef_se.reindex(self.names).to_numpy(dtype=float)
            scale[self.lower_theta.size :] = np.where(np.isfinite(se) & (se > 0), se, 1.0)

        def f(z: np.ndarray) -> float:
            return crit(z * scale)

        lower = self.lower() / scale
        bounds = [(lo if np.isfinite(lo) else None, None) for lo in lower]
        beta = fit.fixef.to_numpy(dtype=float)
        default = self.theta0 if self.model == "lmer" else np.concatenate([self.theta0, beta])
        at_opt = self.params(engine_row.theta, engine_row.fixef)
        for method in methods:
            restart = method.endswith("(restart)")
            x0 = at_opt if restart else default
            t0 = time.perf_counter()
            name = method.split(" ")[0]
            opts: dict[str, Any] = {"maxiter": MAX_EVALS}
            if name == "Nelder-Mead":
                opts.update(maxfev=MAX_EVALS, xatol=1e-8, fatol=1e-10, adaptive=x0.size > 4)
            elif name == "Powell":
                opts.update(maxfev=MAX_EVALS, xtol=1e-8, ftol=1e-12)
            else:
                opts.update(maxfun=MAX_EVALS, ftol=1e-14, gtol=1e-8)
            with np.errstate(all="ignore"):
                res = sopt.minimize(f, x0 / scale, method=name, bounds=bounds, options=opts)
            theta, fixef = self.split(np.asarray(res.x, dtype=float) * scale)
            o = Optimum(
                optimizer=f"scipy {name}",
                engine="python",
                start="engine's optimum"
                if restart
                else "lme4's default θ" + ("" if self.model == "lmer" else ", engine's β"),
                theta=theta,
                fixef=fixef,
                converged=bool(res.success),
                messages=[] if res.success else [str(res.message)],
                seconds=time.perf_counter() - t0,
            )
            o.criterion_python = self.score(theta, fixef)
            out.append(o)
        return out


def _r_optima(
    py: _PythonModel,
    optima: list[Optimum],
    fit: MixedFit,
    transport: str | None,
    timeout: float | None,
    notes: list[str],
) -> list[Optimum]:
    """lme4::allFit's optima, and lme4's deviance function at the Python optima."""
    from mixbridge.bridge.allfit import run_allfit

    scored = [o for o in optima if o.theta is not None]
    try:
        res = run_allfit(
            py.call,
            score=[py.params(o.theta, o.fixef) for o in scored],  # type: ignore[arg-type]
            transport=transport,
            timeout=timeout,
        )
    except RNotAvailableError as exc:
        if fit.engine == "r":
            raise
        notes.append(f"R is not available, lme4's optimizers were not run: {exc}")
        return []
    for o, value in zip(scored, res.scores, strict=True):
        o.criterion_r = float(value)
    notes += [f"lme4::allFit skipped {s}" for s in res.skipped]
    out = []
    for r in res.fits:
        msgs = list(r.messages)
        out.append(
            Optimum(
                optimizer=f"lme4 {r.name}",
                engine="r",
                start="lme4's",
                theta=r.theta,
                fixef=r.fixef,
                criterion_r=r.criterion,
                converged=r.ok and r.opt_code == 0 and not msgs,
                messages=msgs,
                seconds=r.seconds,
            )
        )
    return out


def _estimates(o: Optimum) -> dict[str, float]:
    out: dict[str, float] = {}
    if o.theta is not None:
        out.update({f"theta[{i}]": float(v) for i, v in enumerate(o.theta)})
    if o.fixef is not None:
        out.update({str(k): float(v) for k, v in o.fixef.items()})
    return out


def _verdict(fit: MixedFit, optima: list[Optimum], notes: list[str]) -> AllfitResult:
    tol = ALLFIT_TOLERANCES
    reference = fit.engine
    usable = [o for o in optima if np.isfinite(o.criterion) and o.theta is not None]
    if not usable:
        raise ConvergenceError("allfit: no optimizer produced an optimum the deviance scores")
    best = min(usable, key=lambda o: o.criterion)
    spread = max(o.criterion for o in usable) - best.criterion
    se = fit.fixef_se
    ref = _estimates(best)
    names = list(ref)
    theta_names = list(fit.theta_names) if len(fit.theta_names) == len(best.theta) else []
    label = {f"theta[{i}]": f"θ {n}" for i, n in enumerate(theta_names)}
    unit = {n: _unit(n, ref, se, tol) for n in names}

    def agrees(gap: float, est: dict[str, float]) -> bool:
        return gap <= tol.deviance and all(
            abs(est.get(n, np.nan) - ref[n]) <= unit[n] for n in names
        )

    for o in optima:
        o.agrees = bool(o in usable and agrees(o.criterion - best.criterion, _estimates(o)))
    estimate_spread: dict[str, float] = {}
    moves: dict[str, float] = {}
    for n in names:
        values = [v for v in (_estimates(o).get(n, np.nan) for o in usable) if np.isfinite(v)]
        span = max(values) - min(values) if values else 0.0
        estimate_spread[label.get(n, n)] = span
        if span > unit[n]:
            moves[label.get(n, n)] = span
    fit_gap, fit_est = _fit_point(fit, usable, best)
    fit_at_best = bool(np.isfinite(fit_gap) and agrees(fit_gap, fit_est))
    n_agree = sum(bool(o.agrees) for o in usable)
    failed = [o.optimizer for o in optima if o not in usable]
    failed_txt = f" ({', '.join(failed)} failed: see messages)" if failed else ""
    if n_agree == len(usable):
        kind = "false alarm"
        est = max((estimate_spread[label.get(n, n)] / unit[n] for n in names), default=0.0)
        verdict = (
            f"false alarm: all {len(usable)} optima{failed_txt} agree to {spread:.2g} in deviance "
            f"(tolerance {tol.deviance:g}) and in the estimates to {est:.2g} of their "
            f"tolerance (fixef {tol.fixef_se:g} SE, θ {tol.theta:g}); the fit's estimates "
            "can be used"
        )
    else:
        kind = "real"
        moved = ", ".join(f"{k} (by {v:.3g})" for k, v in moves.items())
        moved = moved or "none beyond the tolerances"
        where = f"{best.optimizer} ({best.engine}, start: {best.start})"
        fixef_txt = ", ".join(f"{k} = {v:.6g}" for k, v in best.fixef.items())
        theta_txt = ", ".join(f"{v:.6g}" for v in best.theta)
        verdict = (
            f"real: optimizers disagree by {spread:.3g} in deviance (tolerance {tol.deviance:g}); "
            f"the best optimum is {where} at criterion {best.criterion:.6f}, θ = [{theta_txt}], "
            f"{fixef_txt}; {n_agree} of {len(usable)} optima{failed_txt} agree with it; these "
            "estimates "
            f"move: {moved}. "
        )
        if fit_at_best:
            verdict += (
                "The fit itself is at the best optimum (within the tolerances): its estimates "
                "can be used; the optimizers that stop elsewhere show the problem is hard "
                "(rescaling predictors helps)."
            )
        else:
            verdict += (
                f"The fit itself is {fit_gap:.3g} above the best optimum"
                + (" with other estimates" if fit_gap <= tol.deviance else "")
                + ": use the best optimum's estimates"
                + (" (lmer: control={'start': θ})" if fit.model == "lmer" else "")
                + " or rescale the predictors and refit."
            )
    return AllfitResult(
        optima=optima,
        reference=reference,
        kind=kind,
        verdict=verdict,
        best=best,
        deviance_spread=spread,
        estimate_spread=estimate_spread,
        moves=moves,
        notes=notes,
        fit_gap=fit_gap,
        fit_at_best=fit_at_best,
    )


def _unit(name: str, ref: dict[str, float], se: pd.Series, tol: AllfitTolerances) -> float:
    """How far an estimate may move and still agree (ALLFIT_TOLERANCES)."""
    if name.startswith("theta["):
        return max(tol.theta, tol.theta * abs(ref[name]))
    s = float(se.get(name, np.nan))
    return tol.fixef_se * s if np.isfinite(s) and s > 0 else tol.theta


def _fit_point(
    fit: MixedFit, usable: list[Optimum], best: Optimum
) -> tuple[float, dict[str, float]]:
    """The fit's own optimum: its gap above the best on the reference function, and its
    estimates."""
    if fit.engine == "python":
        for o in usable:
            if o.optimizer.startswith("mixbridge"):
                return o.criterion - best.criterion, _estimates(o)
    own = Optimum("fit", fit.engine, "", np.asarray(fit.theta, dtype=float), fit.fixef)
    try:
        value = float(fit.objective(*_own_params(fit)))
    except Exception:  # noqa: BLE001 - the gap is informative only
        value = float("nan")
    return value - best.criterion, _estimates(own)


def _own_params(fit: MixedFit) -> tuple[Any, ...]:
    if fit.model == "lmer":
        return (np.asarray(fit.theta, dtype=float),)
    return (np.asarray(fit.theta, dtype=float), fit.fixef.to_numpy(dtype=float))
