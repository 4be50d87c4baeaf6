"""Known divergences between engines: the registry (divergences.toml) and the checks behind it.

A divergence is never a silent pass. `compare` asks every entry matching a row's model and
quantity to run its check, which recomputes the expected difference from the fits themselves:
- the check holds  -> the row is "explained", with the entry's id, explanation and the numbers;
- the check fails  -> the row is a FAIL ("known divergence no longer holds");
- not applicable   -> the row is judged on its tolerance alone.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


@dataclass(frozen=True)
class CheckOutcome:
    """What a divergence check found: it applies or not, and whether the difference matches."""

    applies: bool
    holds: bool = False
    detail: str = ""


@dataclass(frozen=True)
class RowContext:
    """What a check may use about the row being judged."""

    quantity: str
    signed_diff: float | None  # a - b for scalar rows, None for vector rows
    bound: float  # the row's tolerance: the residual after the divergence must stay within it
    policy: Any = None
    failed: bool = False  # the row is beyond its tolerance (before any explanation)


@dataclass(frozen=True)
class Divergence:
    id: str
    models: tuple[str, ...]
    quantities: tuple[str, ...]
    condition: str
    explanation: str
    check: str
    versions: dict[str, str] = field(default_factory=dict)
    reference: str = ""

    def matches(self, model: str, quantity: str) -> bool:
        return model in self.models and quantity in self.quantities

    def versions_apply(self, *fits: Any) -> bool:
        """True when every listed package's version (from any fit that reports it) matches.

        A package no fit reports does not exclude the entry: the check still has to hold.
        """
        for package, requirement in self.versions.items():
            found = [f.versions.get(package) for f in fits if getattr(f, "versions", None)]
            found = [v for v in found if v]
            if found and not all(version_matches(v, requirement) for v in found):
                return False
        return True

    def run(self, a: Any, b: Any, ctx: RowContext) -> CheckOutcome:
        fn = CHECKS.get(self.check)
        if fn is None:
            return CheckOutcome(True, False, f"check function {self.check!r} is not defined")
        try:
            return fn(a, b, ctx)
        except Exception as exc:  # a broken check must surface as a FAIL, not crash compare
            return CheckOutcome(True, False, f"check {self.check} raised {exc!r}")


def _parse_version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", str(text)))


def version_matches(version: str, requirement: str) -> bool:
    """`requirement` like "<2.0", ">=1.1-31", or several joined by commas."""
    have = _parse_version(version)
    for clause in str(requirement).split(","):
        m = re.match(r"\s*(<=|>=|==|!=|<|>)\s*(\S+)\s*$", clause)
        if not m:
            raise ValueError(f"bad version requirement {clause!r}")
        op, want = m.group(1), _parse_version(m.group(2))
        n = max(len(have), len(want))
        h, w = have + (0,) * (n - len(have)), want + (0,) * (n - len(want))
        ok = {
            "<": h < w,
            "<=": h <= w,
            ">": h > w,
            ">=": h >= w,
            "==": h == w,
            "!=": h != w,
        }[op]
        if not ok:
            return False
    return True


def load_divergences(path: str | Path | None = None) -> list[Divergence]:
    """Read the registry (the packaged divergences.toml unless `path` is given)."""
    if path is None:
        return list(_packaged())
    return _parse(Path(path).read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def _packaged() -> tuple[Divergence, ...]:
    text = resources.files("mixbridge.conformance").joinpath("divergences.toml").read_text("utf-8")
    return tuple(_parse(text))


def _parse(text: str) -> list[Divergence]:
    data = tomllib.loads(text)
    out = []
    for entry in data.get("divergence", []):
        missing = [
            k for k in ("id", "models", "quantities", "explanation", "check") if k not in entry
        ]
        if missing:
            raise ValueError(f"divergence entry {entry.get('id', '?')!r} lacks {missing}")
        out.append(
            Divergence(
                id=entry["id"],
                models=tuple(entry["models"]),
                quantities=tuple(entry["quantities"]),
                condition=entry.get("condition", ""),
                explanation=" ".join(entry["explanation"].split()),
                check=entry["check"],
                versions=dict(entry.get("versions", {})),
                reference=entry.get("reference", ""),
            )
        )
    return out


# ---------------------------------------------------------------------------------------------
# Checks: each recomputes the expected difference from the fits (never trusts the row alone).


def check_agq_saturated_constant(a: Any, b: Any, ctx: RowContext) -> CheckOutcome:
    """logLik(a) - logLik(b) == c_a - c_b, c = fit.loglik_constant."""
    if max(getattr(a, "nagq", 1), getattr(b, "nagq", 1)) <= 1:
        return CheckOutcome(False)
    c_a = float(a.loglik_constant)
    c_b = float(b.loglik_constant)
    shift = c_a - c_b
    if shift == 0.0 or ctx.signed_diff is None:
        return CheckOutcome(False)
    factor = 1.0 if ctx.quantity == "loglik" else -2.0  # criterion/AIC/BIC are -2 logLik + const
    expected = factor * shift
    # the objective (deviance function) may follow lme4's convention even when logLik does not
    candidates = [expected, 0.0] if ctx.quantity == "objective" else [expected]
    residual = min((ctx.signed_diff - e for e in candidates), key=abs)
    holds = abs(residual) <= ctx.bound
    detail = (
        f"a - b = {ctx.signed_diff:.10g}, expected {expected:.10g} "
        f"(saturated constant {shift:.10g}); residual {residual:.3g} vs tolerance {ctx.bound:.3g}"
    )
    return CheckOutcome(True, holds, detail)


def _binomial_aic(y: np.ndarray, m: np.ndarray | float, wt: np.ndarray, mu: np.ndarray) -> float:
    """R's binomial()$aic(y, n, mu, wt, dev) given the resolved m (R: n if any(n > 1) else wt).

    `ifelse(m > 0, wt/m, 0)` takes the shape of `m`: for a scalar m (arm's n.ok) it is the
    single number wt[1]/m, recycled over all observations. R's quirk, reproduced.
    """
    from scipy.stats import binom

    if np.ndim(m) == 0:
        m = float(m)
        coef = np.full_like(y, wt[0] / m if m > 0 else 0.0)
        m_arr = np.full_like(y, m)
    else:
        m_arr = np.asarray(m, dtype=float)
        coef = np.where(m_arr > 0, wt / np.where(m_arr > 0, m_arr, 1.0), 0.0)
    logp = binom.logpmf(np.rint(m_arr * y), np.rint(m_arr), mu)
    return float(-2.0 * np.sum(np.where(coef > 0, coef * logp, 0.0)))


def _bayesglm_data(fit: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(y as proportions, prior weights, trials) from a fit's extra, if the engine stores them."""
    y = fit.extra.get("y")
    w = fit.extra.get("prior_weights", fit.extra.get("weights"))
    if y is None or w is None:
        return None
    n = fit.extra.get("n_trials")
    w = np.asarray(w, dtype=float)
    return np.asarray(y, dtype=float), w, (w if n is None else np.asarray(n, dtype=float))


def check_arm_binomial_aic(a: Any, b: Any, ctx: RowContext) -> CheckOutcome:
    """One fit reports arm's aic (family aic with n = n.ok), the other glm's (n = trials)."""
    if a.family != "binomial" or b.family != "binomial" or ctx.signed_diff is None:
        return CheckOutcome(False)
    data = _bayesglm_data(a) or _bayesglm_data(b)
    if data is None:
        if abs(ctx.signed_diff) <= ctx.bound:
            return CheckOutcome(False)
        return CheckOutcome(
            True, False, "cannot verify: neither fit stores extra['y'] and extra['prior_weights']"
        )
    y, wt, trials = data
    if not np.any(trials > 1):
        return CheckOutcome(False)  # 0/1 data: arm's and glm's aic coincide
    mu = np.asarray(a.fitted, dtype=float)
    n_ok = float(np.sum(wt > 0))
    rank = len(a.coef)
    # R's binomial()$aic: m = n if any(n > 1) else wt; arm passes n = n.ok, glm the trials
    aic_arm = _binomial_aic(y, n_ok if n_ok > 1 else wt, wt, mu) + 2 * rank
    aic_glm = _binomial_aic(y, trials, wt, mu) + 2 * rank
    expected = {  # a - b for each way the two engines can report it
        "a glm, b arm": aic_glm - aic_arm,
        "a arm, b glm": aic_arm - aic_glm,
    }
    label, e = min(expected.items(), key=lambda kv: abs(ctx.signed_diff - kv[1]))
    residual = ctx.signed_diff - e
    holds = abs(residual) <= max(ctx.bound, 1e-8 * abs(aic_glm))
    detail = (
        f"arm aic (n = n.ok = {n_ok:g}) = {aic_arm:.10g}, glm aic (n = trials) = {aic_glm:.10g}; "
        f"{label}: a - b = {ctx.signed_diff:.10g}, residual {residual:.3g}"
    )
    return CheckOutcome(True, holds, detail)


def check_bayesglm_own_dispersion(bayes: Any, mixed: Any, ctx: RowContext) -> CheckOutcome:
    """Closed form at bayesglm's own dispersion reproduces its coefficients (spec §12)."""
    if bayes.family != "gaussian":
        return CheckOutcome(False)
    from mixbridge.conformance.shrinkage import closed_form_group_means, one_way_pieces

    pieces = one_way_pieces(mixed)
    sigma2 = pieces["sigma"] ** 2
    phi = float(bayes.dispersion)
    if abs(phi - sigma2) <= 1e-12 * sigma2:
        return CheckOutcome(False)  # same dispersion: nothing to explain
    predicted = closed_form_group_means(pieces, dispersion=phi)
    coef = _aligned_coef(bayes, pieces["levels"], pieces["factor"])
    worst = float(np.max(np.abs(coef - predicted) / np.maximum(np.abs(predicted), 1.0)))
    holds = worst <= ctx.bound
    detail = (
        f"bayesglm dispersion {phi:.12g} vs mixed σ² {sigma2:.12g}; closed form at bayesglm's "
        f"dispersion reproduces its coefficients to {worst:.2e} (tolerance {ctx.bound:.0e})"
    )
    return CheckOutcome(True, holds, detail)


def _aligned_coef(bayes: Any, levels: list[str], factor: str) -> np.ndarray:
    from mixbridge.conformance.shrinkage import level_names

    mapping = level_names(list(bayes.coef.index), levels, factor)
    return np.array([float(bayes.coef[mapping[lv]]) for lv in levels])


def _rank_deficient(fit: Any) -> bool:
    return bool(getattr(fit, "dropped_columns", None)) or any(
        "rank deficient" in m.text.lower() or m.code == "rank_deficient"
        for m in getattr(fit, "messages", [])
    )


def check_other_column_dropped(a: Any, b: Any, ctx: RowContext) -> CheckOutcome:
    """Two fits of a rank-deficient X that kept different (equally valid) columns.

    Applies when the fixef names differ but their number is the same and a fit reports the rank
    deficiency. fixef/fixef_se: the same column space shows as the same fitted values (relative
    to their spread, within the policy's fixef tolerance). Criteria: ML ones agree (not this
    entry's business); REML's log det(X'V⁻¹X) depends on the kept columns, and from
    vcov = σ² (X'V⁻¹X)⁻¹ the REML criterion differs by exactly
    Δ = [p log σ_a² - log det vcov_a] - [p log σ_b² - log det vcov_b] (loglik by -Δ/2).
    """
    la, lb = set(map(str, a.fixef.index)), set(map(str, b.fixef.index))
    if la == lb or len(la) != len(lb) or not (_rank_deficient(a) or _rank_deficient(b)):
        return CheckOutcome(False)
    kept = f"a kept {sorted(la - lb)}, b kept {sorted(lb - la)}"
    if ctx.quantity in ("fixef", "fixef_se"):
        fa, fb = np.asarray(a.fitted, dtype=float), np.asarray(b.fitted, dtype=float)
        tol = ctx.policy["fixef"].rel if ctx.policy is not None else 1e-4
        if fa.shape != fb.shape or not np.all(np.isfinite(fa)) or not np.all(np.isfinite(fb)):
            return CheckOutcome(True, False, f"{kept}; fitted values not comparable")
        worst = float(np.max(np.abs(fa - fb)) / max(float(np.std(fb)), 1e-300))
        detail = (
            f"{kept}: same column space, fitted values agree to {worst:.2e} of their spread "
            f"(tolerance {tol:.0e})"
        )
        return CheckOutcome(True, worst <= tol, detail)
    if a.model != "lmer" or not (a.reml and b.reml) or ctx.signed_diff is None:
        return CheckOutcome(False)

    def logdet_rx(fit: Any) -> float:
        sign, logdet = np.linalg.slogdet(fit.vcov.to_numpy(dtype=float))
        return len(fit.fixef) * np.log(fit.sigma**2) - logdet if sign > 0 else np.nan

    delta = logdet_rx(a) - logdet_rx(b)
    expected = -delta / 2 if ctx.quantity == "loglik" else delta
    residual = ctx.signed_diff - expected
    detail = (
        f"{kept}; REML log det(X'V⁻¹X) differs by {delta:.10g}: a - b = {ctx.signed_diff:.10g}, "
        f"expected {expected:.10g}, residual {residual:.3g} vs tolerance {ctx.bound:.3g}"
    )
    return CheckOutcome(True, bool(abs(residual) <= ctx.bound), detail)


# ---------------------------------------------------------------------------------------------
# glmer: lme4's PIRLS tolerance against the converged deviance

CONVERGED_TOL_PWRSS = 1e-12  # lme4's tolPwrss at which its deviance function is converged
_CRITERION_ROWS = ("criterion", "loglik", "aic", "bic")


def _tol_pwrss(fit: Any) -> float | None:
    value = (getattr(fit, "optimizer", None) or {}).get("tol_pwrss")
    return None if value is None else float(value)


def _is_lme4(fit: Any) -> bool:
    return str(getattr(fit, "engine", "")).split("/")[0].lower() == "r"


def _lme4_scale(fit: Any) -> float:
    """The criterion as lme4's deviance function gives it (nAGQ > 1: without the saturated
    constant the fit may have put in)."""
    return float(fit.criterion) + 2.0 * float(fit.loglik_constant)


def _params_like(fit: Any, like: Any) -> tuple[np.ndarray, np.ndarray]:
    """(θ, β) of `fit` in `like`'s order (by θ names and coefficient names)."""
    names = list(like.theta_names) or [f"theta[{i}]" for i in range(len(like.theta))]
    own = list(fit.theta_names) or [f"theta[{i}]" for i in range(len(fit.theta))]
    theta = dict(zip(own, np.asarray(fit.theta, dtype=float), strict=True))
    th = np.array([theta.get(n, np.nan) for n in names], dtype=float)
    beta = fit.fixef.reindex(like.fixef.index).to_numpy(dtype=float)
    if np.isnan(th).any() or np.isnan(beta).any():
        raise ValueError("the fits' θ or coefficient names differ")
    return th, beta


class _Evaluations:
    """Deviance-function values already computed, so that the rows of one comparison (and the
    comparisons of the same fits) evaluate each (fit, control, parameters) once. Entries hold a
    weak reference to their fit: a value is reused only for the very object that produced it."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self.values: dict[tuple[Any, ...], tuple[Any, float]] = {}

    def __call__(self, fit: Any, params: tuple[np.ndarray, np.ndarray], tol: float | None) -> float:
        key = (id(fit), tol, params[0].tobytes(), params[1].tobytes())
        hit = self.values.get(key)
        if hit is not None and hit[0]() is fit:
            return hit[1]
        control = None if tol is None else {"tol_pwrss": tol}
        value = float(fit.objective(*params, control=control))
        if len(self.values) >= self.size:
            self.values.pop(next(iter(self.values)))
        self.values[key] = (weakref.ref(fit), value)
        return value


_EVALUATE = _Evaluations()


@dataclass(frozen=True)
class _PirlsEvidence:
    """lme4's deviance at the converged tolerance (t) and at the loose fit's tolerance (d), at
    both fits' estimates, and the tight fit's own objective there."""

    tight: str  # "a" or "b": the fit whose PIRLS tolerance is the tighter one
    tol: dict[str, float]
    t: dict[str, float]
    d: dict[str, float]
    own_tight: dict[str, float | None]
    reported: dict[str, float]  # criteria on lme4's scale


def _pirls_evidence(a: Any, b: Any) -> _PirlsEvidence:
    lme4 = b if _is_lme4(b) else a
    tol = {"a": _tol_pwrss(a), "b": _tol_pwrss(b)}
    tight = "a" if tol["a"] < tol["b"] else "b"
    loose = "b" if tight == "a" else "a"
    fits = {"a": a, "b": b}
    params = {k: _params_like(f, lme4) for k, f in fits.items()}
    lme4_tol = _tol_pwrss(lme4)

    def lme4_at(k: str, at_tol: float) -> float:
        # lme4's own function without an override when it already is the one asked for
        return _EVALUATE(lme4, params[k], None if at_tol == lme4_tol else at_tol)

    tight_fit = fits[tight]
    own: dict[str, float | None] = {}
    for k in fits:
        try:
            own[k] = _EVALUATE(tight_fit, _params_like(fits[k], tight_fit), None)
        except NotImplementedError:
            own[k] = None
    return _PirlsEvidence(
        tight=tight,
        tol={k: float(v) for k, v in tol.items() if v is not None},
        t={k: lme4_at(k, CONVERGED_TOL_PWRSS) for k in fits},
        d={k: lme4_at(k, tol[loose]) for k in fits},
        own_tight=own,
        reported={k: _lme4_scale(f) for k, f in fits.items()},
    )


def check_pirls_tolerance(a: Any, b: Any, ctx: RowContext) -> CheckOutcome:
    """Two glmer fits of one model whose deviance functions differ in PIRLS tolerance: one at
    lme4's default tolPwrss (1e-7), one converged (the Python engine on big data, or any fit
    with control={"tol_pwrss": 1e-12}). lme4's stopping rule leaves log|L|² from the weights of
    the iteration before, an error growing with the number of groups (spec §3.2) that also moves
    the optimum. Recomputed from lme4's own deviance function (the R fit's objective) at both
    estimates, at tolPwrss = 1e-12 (t) and at the loose fit's tolerance (d):
    - every fit reports its own function at its estimate: |criterion - t| (tight fit) and
      |criterion - d| (loose fit) within the objective tolerance;
    - the tight fit is not worse where it matters: t(tight) <= t(loose) + criterion tolerance;
    - objective rows: the tight fit's objective is lme4's at 1e-12 at both estimates;
    - parameter rows (only when beyond tolerance): the tight fit's estimate is no worse under t,
      so the gap is the loose fit's optimum of its PIRLS-error-laden function.
    """
    if a.model != "glmer" or b.model != "glmer" or min(a.nagq, b.nagq) < 1:
        return CheckOutcome(False)
    tol_a, tol_b = _tol_pwrss(a), _tol_pwrss(b)
    if tol_a is None or tol_b is None or tol_a == tol_b or not (_is_lme4(a) or _is_lme4(b)):
        return CheckOutcome(False)
    parameter = ctx.quantity not in _CRITERION_ROWS and ctx.quantity != "objective"
    if parameter and not ctx.failed:
        return CheckOutcome(False)  # a parameter gap within tolerance needs no explanation
    ev = _pirls_evidence(a, b)
    tight, loose = ev.tight, ("b" if ev.tight == "a" else "a")
    policy = ctx.policy
    obj_bound = policy["objective"].bound(abs(ev.t[loose])) if policy is not None else ctx.bound
    crit_bound = policy["criterion"].bound(abs(ev.t[loose])) if policy is not None else ctx.bound
    gap = ev.t[tight] - ev.t[loose]  # < 0: the tight fit's optimum is lower under t
    own_gap = ev.d[loose] - ev.d[tight]  # <= 0: the loose fit's estimate optimizes d
    excess = {k: ev.reported[k] - (ev.t[k] if k == tight else ev.d[k]) for k in ("a", "b")}
    pirls_error = {k: ev.d[k] - ev.t[k] for k in ("a", "b")}
    head = (
        f"lme4's deviance at tolPwrss={CONVERGED_TOL_PWRSS:g}: a {ev.t['a']:.12g}, "
        f"b {ev.t['b']:.12g}; at tolPwrss={ev.tol[loose]:g}: a {ev.d['a']:.12g}, "
        f"b {ev.d['b']:.12g} (PIRLS error {pirls_error[loose]:+.4g} at {loose}'s estimate); "
        f"{tight} is the converged fit (tol_pwrss {ev.tol[tight]:g})"
    )
    # what each row rests on: the functions (objective), the criteria reported at the estimates
    # and the optimum gap (criterion rows), the optimum gap (parameter rows)
    reported: list[str] = []
    if abs(excess[tight]) > obj_bound:
        reported.append(
            f"{tight}'s criterion is {excess[tight]:+.4g} from lme4's converged deviance at its "
            f"estimate (tolerance {obj_bound:.1e})"
        )
    if abs(excess[loose]) > obj_bound:
        reported.append(
            f"{loose}'s criterion is {excess[loose]:+.4g} from lme4's tolPwrss={ev.tol[loose]:g} "
            f"deviance at its estimate (tolerance {obj_bound:.1e})"
        )
    optimum: list[str] = []
    if gap > crit_bound:
        optimum.append(
            f"{tight}'s estimate is worse than {loose}'s under the converged deviance by "
            f"{gap:.4g} (tolerance {crit_bound:.1e})"
        )
    if ctx.quantity == "objective":
        problems: list[str] = []
        for k in ("a", "b"):
            own = ev.own_tight[k]
            if own is None:
                problems.append(f"{tight} does not expose its objective")
            elif abs(own - ev.t[k]) > obj_bound:
                problems.append(
                    f"{tight}'s objective at {k}'s estimate is {own - ev.t[k]:+.4g} from lme4's "
                    f"converged deviance (tolerance {obj_bound:.1e})"
                )
        diffs = [ev.own_tight[k] - ev.t[k] for k in ("a", "b") if ev.own_tight[k] is not None]
        detail = (
            f"{head}; {tight}'s objective agrees with lme4's converged deviance to "
            f"{max(map(abs, diffs), default=float('nan')):.2e}"
        )
    elif ctx.quantity in _CRITERION_ROWS:
        problems = reported + optimum
        if ctx.quantity in ("aic", "bic") and (a.df != b.df or a.nobs != b.nobs):
            problems.append(f"df or nobs differ (a {a.df}/{a.nobs}, b {b.df}/{b.nobs})")
        diff = ev.reported["a"] - ev.reported["b"]
        from_pirls = pirls_error[loose] if loose == "a" else -pirls_error[loose]
        optimum_gap = ev.t["a"] - ev.t["b"]
        detail = (
            f"{head}; criteria a - b on lme4's scale {diff:+.6g} = {from_pirls:+.6g} (PIRLS "
            f"error at {loose}'s estimate) {optimum_gap:+.4g} (optimum gap under the converged "
            f"deviance) {diff - from_pirls - optimum_gap:+.1e} (each fit's criterion against its "
            "function)"
        )
        shift = _lme4_scale(a) - a.criterion - (_lme4_scale(b) - b.criterion)
        if shift:
            detail += f"; the reported criteria also differ by the saturated constant {-shift:+.6g}"
    else:
        problems = optimum
        which = (
            f"each estimate optimizes its own function ({loose}'s lower by {-own_gap:.4g} under "
            f"tolPwrss={ev.tol[loose]:g})"
            if own_gap <= 0
            else f"{loose}'s estimate is worse under both functions"
        )
        detail = (
            f"{head}; {tight}'s estimate is lower by {-gap:.4g} under the converged deviance, "
            + which
        )
    if problems:
        detail += "; but " + "; ".join(problems)
    return CheckOutcome(True, not problems, detail)


def check_glmer_nb_refit_chain(a: Any, b: Any, ctx: RowContext) -> CheckOutcome:
    """One fit is lme4's glmer.nb (R engine, `nb_theta` estimated: `extra["nb_evals"]`), whose
    reported -2 logLik is that of its refit chain (each trial θ's PIRLS restarted from the
    previous trial's fit), not of its deviance function evaluated afresh at its estimates
    (grouseticks: 2.8e-3 below it). Recomputed: lme4's fresh deviance function at lme4's
    estimates (the R fit's objective, lme4's mkGlmerDevfun at the final θ); with it in place of
    the reported value the row must be within its tolerance."""
    if ctx.signed_diff is None or ctx.quantity not in _CRITERION_ROWS:
        return CheckOutcome(False)

    def is_nb_chain(fit: Any) -> bool:
        extra = getattr(fit, "extra", None) or {}
        return _is_lme4(fit) and getattr(fit, "nb_theta", None) is not None and "nb_evals" in extra

    if is_nb_chain(a) == is_nb_chain(b):
        return CheckOutcome(False)
    lme4 = a if is_nb_chain(a) else b
    if getattr(lme4, "objective", None) is None or int(getattr(lme4, "nagq", 1)) != 1:
        return CheckOutcome(False)
    fresh = float(lme4.objective(lme4.theta, lme4.fixef.to_numpy(dtype=float)))
    shift = float(lme4.criterion) - fresh  # reported minus fresh, criterion units
    if shift == 0.0:
        return CheckOutcome(False)
    factor = -0.5 if ctx.quantity == "loglik" else 1.0  # criterion/AIC/BIC: -2 logLik + const
    sign = 1.0 if lme4 is b else -1.0  # a - b moves by -shift when b's value is shifted
    expected = -sign * factor * shift
    residual = ctx.signed_diff - expected
    holds = abs(residual) <= ctx.bound
    detail = (
        f"lme4's glmer.nb reports {float(lme4.criterion):.10g}, its deviance function afresh at "
        f"the same estimates gives {fresh:.10g} (refit chain {shift:+.4g}); a - b = "
        f"{ctx.signed_diff:.6g}, expected {expected:.6g}; residual {residual:.3g} vs tolerance "
        f"{ctx.bound:.3g}"
    )
    return CheckOutcome(True, holds, detail)


CHECKS: dict[str, Callable[[Any, Any, RowContext], CheckOutcome]] = {
    "check_agq_saturated_constant": check_agq_saturated_constant,
    "check_pirls_tolerance": check_pirls_tolerance,
    "check_arm_binomial_aic": check_arm_binomial_aic,
    "check_bayesglm_own_dispersion": check_bayesglm_own_dispersion,
    "check_other_column_dropped": check_other_column_dropped,
    "check_glmer_nb_refit_chain": check_glmer_nb_refit_chain,
}


def explain(
    model: str, quantity: str, a: Any, b: Any, ctx: RowContext, registry: list[Divergence] | None
) -> tuple[Divergence, CheckOutcome] | None:
    """The first applicable divergence for this row and its outcome, or None."""
    for d in registry if registry is not None else load_divergences():
        if not d.matches(model, quantity) or not d.versions_apply(a, b):
            continue
        outcome = d.run(a, b, ctx)
        if outcome.applies:
            return d, outcome
    return None
