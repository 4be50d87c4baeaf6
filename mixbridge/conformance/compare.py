"""Compare two fits of the same model, quantity by quantity, under the one tolerance policy.

    cmp = mixbridge.compare(py_fit, r_fit)      # a = candidate, b = reference
    print(cmp); cmp.assert_ok()

Pipeline: align each quantity by label (coefficient, θ name, group level) -> differences scaled
the way the policy says (fixef by SE, ranef by the term's sd, ...) -> rows beyond tolerance are
offered first to the flat-optimum evidence (each engine's objective at the other's parameters),
then to the known-divergence registry -> status ok / explained / FAIL with the reason.
The result types and the element-wise rows are `mixbridge.conformance.rows`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mixbridge.conformance import divergences as div
from mixbridge.conformance.rows import (
    EXPLAINED,
    FAIL,
    OK,
    Comparison,
    Row,
    RowElements,
    aligned_row,
    element_row,
    scalar_row,
)
from mixbridge.conformance.tolerance import (
    A_EARLY,
    B_EARLY,
    CRITERION_QUANTITIES,
    DERIVED_FACTOR,
    FLAT,
    PARAMETER_QUANTITIES,
    GapCost,
    Policy,
    gap_verdict,
    policy_for,
)
from mixbridge.results import BayesGLMFit, MixedFit

# Comparison, Row, RowElements and the statuses are imported from here too
__all__ = [
    "EXPLAINED",
    "FAIL",
    "OK",
    "Comparison",
    "Flatness",
    "Row",
    "RowElements",
    "compare",
    "optimum_gap",
    "recording",
]


# ---------------------------------------------------------------------------------------------
# Entry point


def compare(
    a: MixedFit | BayesGLMFit,
    b: MixedFit | BayesGLMFit,
    tolerance: Any = None,
    *,
    registry: list[div.Divergence] | None = None,
    tests: bool = False,
) -> Comparison:
    """Compare fit `a` (candidate) with fit `b` (reference).

    `tolerance`: None (policy chosen from model and engines), a policy name from
    `mixbridge.conformance.tolerance.POLICIES`, a `Policy`, or {quantity: value} overrides.
    `registry`: known divergences (default: the packaged divergences.toml).
    `tests`: lmer: also compare the Satterthwaite coefficient tests (rows df, statistic,
    p_value; lmerTest on the R engine), when both engines compute them.
    """
    policy = policy_for(a, b, tolerance)
    if isinstance(a, MixedFit) and isinstance(b, MixedFit):
        result = _compare_mixed(a, b, policy, registry, tests=bool(tests))
    elif isinstance(a, BayesGLMFit) and isinstance(b, BayesGLMFit):
        result = _compare_bayesglm(a, b, policy, registry)
    elif {type(a), type(b)} == {BayesGLMFit, MixedFit}:
        bayes, mixed = (a, b) if isinstance(a, BayesGLMFit) else (b, a)
        result = _compare_shrinkage(bayes, mixed, policy, registry)
    else:
        raise TypeError(f"cannot compare {type(a).__name__} with {type(b).__name__}")
    for made in list(_RECORDERS):
        made.append(result)
    return result


# Lists that collect every Comparison made while they are registered (`recording()`): the
# pytest plugin shows a failing test's comparison tables in its report.
_RECORDERS: list[list[Comparison]] = []


@contextmanager
def recording() -> Iterator[list[Comparison]]:
    """Collect every Comparison `compare` returns inside the `with` block."""
    made: list[Comparison] = []
    _RECORDERS.append(made)
    try:
        yield made
    finally:  # by identity: recorders nest (pytester), and empty lists compare equal
        _RECORDERS[:] = [m for m in _RECORDERS if m is not made]


# ---------------------------------------------------------------------------------------------
# MixedFit


def _theta_series(fit: MixedFit) -> pd.Series:
    names = list(fit.theta_names) or [f"theta[{i}]" for i in range(len(fit.theta))]
    return pd.Series(np.asarray(fit.theta, dtype=float), index=names)


def _varcorr_series(fit: MixedFit) -> tuple[pd.Series, dict[str, bool]]:
    vc = fit.varcorr
    labels, values, is_cor = [], [], {}
    for _, r in vc.iterrows():
        v1 = "" if _isna(r["var1"]) else str(r["var1"])
        v2 = "" if _isna(r.get("var2")) else str(r["var2"])
        label = f"{r['grp']}:{v1}" + (f"~{v2}" if v2 else "")
        labels.append(label)
        values.append(float(r["sdcor"]))
        is_cor[label] = bool(v2)
    return pd.Series(values, index=labels, dtype=float), is_cor


def _isna(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _term_sd(fit: MixedFit, factor: str, column: str) -> float:
    """The sd of ranef column `column` of `factor` (VarCorr groups may be `f`, `f.1`, ...)."""
    vc = fit.varcorr
    for _, r in vc.iterrows():
        grp = str(r["grp"])
        if grp != factor and not (
            grp.startswith(factor + ".") and grp[len(factor) + 1 :].isdigit()
        ):
            continue
        if str(r["var1"]) == column and _isna(r.get("var2")):
            return float(r["sdcor"])
    return math.nan


def _ranef_series(fit: MixedFit) -> pd.Series:
    out = {}
    for factor, frame in fit.ranef.items():
        for col in frame.columns:
            for level, v in frame[col].items():
                out[f"{factor}[{level}].{col}"] = float(v)
    return pd.Series(out, dtype=float)


def _cond_var_series(fit: MixedFit) -> tuple[pd.Series, dict[str, float]]:
    out, scale = {}, {}
    for factor, arr in fit.cond_var.items():
        frame = fit.ranef.get(factor)
        levels = [str(x) for x in frame.index] if frame is not None else None
        arr = np.asarray(arr, dtype=float)
        if arr.ndim == 1:
            arr = arr[:, None, None]
        cols = list(frame.columns) if frame is not None else list(range(arr.shape[1]))
        for k in range(arr.shape[0]):
            # a level count that disagrees with ranef's is an engine bug: label by position
            lv = levels[k] if levels and len(levels) == arr.shape[0] else f"#{k}"
            for i in range(arr.shape[1]):
                for j in range(i + 1):
                    label = f"{factor}[{lv}]({cols[i]},{cols[j]})"
                    out[label] = arr[k, i, j]
                    scale[label] = math.sqrt(abs(arr[k, i, i] * arr[k, j, j]))
    return pd.Series(out, dtype=float), scale


@dataclass
class Flatness:
    """What the gap between a's and b's parameters costs under each deviance function (the
    policy's flat-optimum rule, `tolerance.gap_verdict`)."""

    costs: list[GapCost] = field(default_factory=list)
    slack: float = 0.0
    consistent: bool = False  # the two engines' objectives agree where both were evaluated
    verdict: str = "unknown"  # FLAT | B_EARLY | A_EARLY | "unknown" (no objective)
    text: str = ""


def _params(fit: MixedFit, like: MixedFit) -> tuple[Any, ...]:
    """`fit`'s parameters in `like`'s order: (theta,) for lmer, (theta, beta) for glmer."""
    theta = _theta_series(fit).reindex(_theta_series(like).index).to_numpy()
    if fit.model == "lmer":
        return (theta,)
    beta = fit.fixef.reindex(like.fixef.index).to_numpy(dtype=float)
    return (theta, beta)


def _midpoint(p: tuple[Any, ...], q: tuple[Any, ...]) -> tuple[Any, ...]:
    pairs = zip(p, q, strict=True)
    return tuple(0.5 * (np.asarray(x, dtype=float) + np.asarray(y, dtype=float)) for x, y in pairs)


def _eval(fit: MixedFit, params: tuple[Any, ...]) -> float | None:
    if fit.methods.objective is None or any(
        np.isnan(np.asarray(p, dtype=float)).any() for p in params
    ):
        return None
    try:
        return float(fit.objective(*params))
    except NotImplementedError:
        return None


def _gap_cost(fit: MixedFit, name: str, a: MixedFit, b: MixedFit) -> GapCost | None:
    """`fit`'s deviance function at a's parameters, b's and their midpoint."""
    pa, pb = _params(a, fit), _params(b, fit)
    f_b = _eval(fit, pb)
    f_a = _eval(fit, pa) if f_b is not None else None
    if f_a is None or f_b is None:
        return None
    same = all(np.array_equal(x, y, equal_nan=True) for x, y in zip(pa, pb, strict=True))
    f_mid = f_a if same else _eval(fit, _midpoint(pa, pb))
    if f_mid is None:
        return None
    return GapCost(name, f_a, f_b, f_mid)


def optimum_gap(a: MixedFit, b: MixedFit, policy: Policy | None = None) -> Flatness:
    """The flat-optimum rule for fits a (candidate) and b (reference): each exposed deviance
    function at a's parameters, b's and the midpoint, and the verdict (see
    `mixbridge.conformance.tolerance`). `consistent` is not checked here (see `compare`)."""
    policy = policy or policy_for(a, b)
    flat = Flatness()
    for fit, name in ((a, "a"), (b, "b")):
        cost = _gap_cost(fit, name, a, b)
        if cost is not None:
            flat.costs.append(cost)
    if not flat.costs:
        return flat
    flat.slack = policy.flat_slack(flat.costs[0].f_b)
    flat.verdict = gap_verdict(flat.costs, flat.slack)
    flat.text = "; ".join(c.describe() for c in flat.costs) + f"; slack {flat.slack:.1e}"
    return flat


def _cross_objectives(a: MixedFit, b: MixedFit, policy: Policy) -> tuple[Row | None, Flatness]:
    flat = optimum_gap(a, b, policy)
    by_name = {c.function: c for c in flat.costs}
    ca, cb = by_name.get("a"), by_name.get("b")
    # objective consistency: two engines, same parameters
    pairs: list[tuple[str, float, float]] = []
    if ca is not None:
        pairs.append(("at b's parameters", ca.f_b, cb.f_b if cb is not None else b.criterion))
    if cb is not None:
        pairs.append(("at a's parameters", ca.f_a if ca is not None else a.criterion, cb.f_a))
    if not pairs:
        return None, flat
    labels = [p[0] for p in pairs]
    row = element_row(
        "objective",
        labels,
        np.array([p[1] for p in pairs]),
        np.array([p[2] for p in pairs]),
        np.array([abs(p[2]) for p in pairs]),
        policy["objective"],
    )
    row.signed_diff = float(pairs[0][1] - pairs[0][2])
    flat.consistent = row.status == OK
    return row, flat


def _compare_mixed(
    a: MixedFit,
    b: MixedFit,
    policy: Policy,
    registry: list[div.Divergence] | None,
    tests: bool = False,
) -> Comparison:
    model = a.model if a.model == b.model else f"{a.model}/{b.model}"
    notes: list[str] = []
    if a.model != b.model:
        notes.append(f"comparing a {a.model} fit with a {b.model} fit")
    if a.reml != b.reml:
        notes.append("a and b differ in REML/ML: criteria are not comparable")
    rows: list[Row] = []
    t = policy.tols
    rows.append(scalar_row("nobs", a.nobs, b.nobs, 0.0, t["nobs"]))
    obj_row, flat = _cross_objectives(a, b, policy)
    if obj_row is not None:
        rows.append(obj_row)
    else:
        notes.append(
            f"neither engine exposes its objective ({a.engine}, {b.engine}): parameter "
            "differences cannot be attributed to a flat optimum"
        )
    crit_a, crit_b = a.criterion, b.criterion
    rows.append(scalar_row("criterion", crit_a, crit_b, abs(crit_b or 0.0), t["criterion"]))
    rows.append(scalar_row("loglik", a.loglik, b.loglik, 0.0, t["loglik"]))
    rows.append(scalar_row("aic", a.aic, b.aic, 0.0, t["aic"]))
    rows.append(scalar_row("bic", a.bic, b.bic, 0.0, t["bic"]))
    rows.append(
        aligned_row("theta", _theta_series(a), _theta_series(b), _theta_scale(b), t["theta"])
    )
    se_b = b.fixef_se
    rows.append(
        aligned_row(
            "fixef",
            a.fixef,
            b.fixef,
            lambda k: max(abs(float(b.fixef[k])), float(se_b.get(k, 0.0))),
            t["fixef"],
        )
    )
    rows.append(aligned_row("fixef_se", a.fixef_se, se_b, lambda k: float(se_b[k]), t["fixef_se"]))
    rows.append(scalar_row("sigma", a.sigma, b.sigma, abs(b.sigma), t["sigma"]))
    vca, _ = _varcorr_series(a)
    vcb, is_cor = _varcorr_series(b)
    sig = abs(b.sigma) if b.sigma else 1.0
    rows.append(
        aligned_row(
            "varcorr",
            vca,
            vcb,
            lambda k: 1.0 if is_cor[k] else max(abs(vcb[k]), 1e-3 * sig),
            t["varcorr"],
        )
    )
    rows.append(
        aligned_row("ranef", _ranef_series(a), _ranef_series(b), _ranef_scale(a, b), t["ranef"])
    )
    cva, _ = _cond_var_series(a)
    cvb, cscale = _cond_var_series(b)
    # a term at the boundary (sd < 1e-3 σ, as for varcorr) has conditional variances ~0 on both
    # sides: compare them on the scale (1e-3 σ)^2, not relative to ~0
    cv_floor = (1e-3 * sig) ** 2
    rows.append(
        aligned_row("cond_var", cva, cvb, lambda k: max(cscale[k], cv_floor), t["cond_var"])
    )
    if tests:
        rows += _test_rows(a, b, t, notes)
    theta_row = next(r for r in rows if r.quantity == "theta") if a.model == "lmer" else None
    for r in rows:
        _judge(r, model, a, b, policy, flat, registry, theta_row)
    if a.singular != b.singular:
        notes.append(f"singular: a={a.singular}, b={b.singular} (boundary fit on one side only)")
    for fit, name in ((a, "a"), (b, "b")):
        if not fit.converged:
            notes.append(f"{name} ({fit.engine}) reports converged=False")
    return Comparison(_label(a), _label(b), model, policy.name, rows, notes)


def _test_rows(a: MixedFit, b: MixedFit, t: dict[str, Any], notes: list[str]) -> list[Row]:
    """df, t statistics and p-values of the Satterthwaite coefficient tables (lmerTest's
    summary), when both lmer fits' engines compute them and the policy has their tolerances."""
    if not (a.model == b.model == "lmer" and a.methods.tests and b.methods.tests):
        return []
    if not all(q in t for q in ("df", "statistic", "p_value")):
        return []
    try:
        ta, tb = a.coef_table(), b.coef_table()
    except Exception as exc:  # noqa: BLE001 - a failing test table is a note, not a crash
        notes.append(f"coefficient tests not compared: {type(exc).__name__}: {exc}")
        return []
    return [
        aligned_row(q, ta[q], tb[q], lambda k, q=q: abs(float(tb.loc[k, q])), t[q])
        for q in ("df", "statistic", "p_value")
    ]


def _theta_scale(b: MixedFit) -> Any:
    th = _theta_series(b)
    return lambda k: abs(float(th[k]))


def _ranef_scale(a: MixedFit, b: MixedFit) -> Any:
    sig = abs(b.sigma) if b.sigma and math.isfinite(b.sigma) else 1.0

    def scale(label: str) -> float:
        factor, rest = label.split("[", 1)
        column = rest.split("].", 1)[1]
        sds = [_term_sd(f, factor, column) for f in (a, b)]
        sds = [s for s in sds if math.isfinite(s)]
        # the larger of the two engines' sds; a tiny floor relative to σ for zero-variance terms
        return max(sds + [1e-8 * sig])

    return scale


def _judge(
    r: Row,
    model: str,
    a: Any,
    b: Any,
    policy: Policy,
    flat: Flatness | None,
    registry: list[div.Divergence] | None,
    theta_row: Row | None = None,
) -> None:
    """Turn a FAIL into "explained" when the evidence allows; run applicable divergence checks."""
    ctx = div.RowContext(r.quantity, r.signed_diff, r.bound or 0.0, policy, r.status == FAIL)
    found = div.explain(model, r.quantity, a, b, ctx, registry)
    if found is not None:
        d, outcome = found
        if outcome.holds:
            if r.status == FAIL:
                r.status = EXPLAINED
                r.reason = f"known divergence {d.id}: {outcome.detail}"
            else:  # the row passes anyway; say the divergence's check also holds
                r.reason = (r.reason + "; " if r.reason else "") + f"{d.id} check holds"
        else:
            r.status = FAIL
            r.reason = f"known divergence {d.id} does not hold: {outcome.detail}"
        return
    if flat is None or not flat.consistent:
        return
    if r.status != FAIL:
        if r.quantity in OPTIMUM_QUANTITIES.get(model, ()) and flat.verdict == A_EARLY:
            # within the parameter tolerance, but the gap provably costs a more than the slack
            r.status = FAIL
            r.reason = f"a stopped early (its parameters cost more than the slack): {flat.text}"
        return
    if r.quantity in PARAMETER_QUANTITIES and flat.verdict in (FLAT, B_EARLY):
        why = "flat optimum" if flat.verdict == FLAT else "b stopped early (a's optimum is lower)"
        if theta_row is not None and r.quantity != "theta":
            # lmer's objective is a function of θ alone: β, σ, ranef, ... follow from θ, so a
            # flat θ explains them only when θ itself moved, and only in proportion
            cap = DERIVED_FACTOR * theta_row.max_rel
            if not theta_row.max_rel > 0 or r.max_rel > cap:
                r.reason = (
                    f"not explained by the flat optimum: θ {theta_row.status} "
                    f"(max rel {theta_row.max_rel:.1e}, cap {cap:.1e}); worst {r.reason}"
                )
                return
        r.status = EXPLAINED
        r.reason = f"{why}: {flat.text}; worst {r.reason}"
    elif r.quantity in CRITERION_QUANTITIES and flat.verdict == B_EARLY:
        r.status = EXPLAINED
        r.reason = f"b stopped early (a's optimum is lower): {flat.text}"
    elif flat.verdict == A_EARLY:
        r.reason = f"a stopped early (b's parameters are better): {flat.text}"


# The parameters each model's objective is a function of: a gap in them within the parameter
# tolerance still fails when the flat-optimum rule proves it costs a more than the slack.
OPTIMUM_QUANTITIES = {"lmer": ("theta",), "glmer": ("theta", "fixef")}


def _label(fit: Any) -> str:
    return str(fit.engine)


# ---------------------------------------------------------------------------------------------
# BayesGLMFit


def _compare_bayesglm(
    a: BayesGLMFit, b: BayesGLMFit, policy: Policy, registry: list[div.Divergence] | None
) -> Comparison:
    t = policy.tols
    notes: list[str] = []
    if a.family != b.family:
        notes.append(f"families differ: a={a.family}, b={b.family}")
    se_b = b.se
    rows = [
        scalar_row("nobs", a.nobs, b.nobs, 0.0, t["nobs"]),
        aligned_row(
            "coef",
            a.coef,
            b.coef,
            lambda k: max(abs(float(b.coef[k])), abs(float(se_b.get(k, 0.0)))),
            t["coef"],
        ),
        aligned_row("se", a.se, se_b, lambda k: abs(float(se_b[k])), t["se"]),
        aligned_row(
            "se_display",
            a.se_display,
            b.se_display,
            lambda k: abs(float(b.se_display[k])),
            t["se_display"],
        ),
        scalar_row("dispersion", a.dispersion, b.dispersion, abs(b.dispersion), t["dispersion"]),
        scalar_row("deviance", a.deviance, b.deviance, abs(b.deviance), t["deviance"]),
        scalar_row("aic", a.aic, b.aic, abs(b.aic), t["aic"]),
    ]
    for r in rows:
        _judge(r, "bayesglm", a, b, policy, None, registry)
    for fit, name in ((a, "a"), (b, "b")):
        if not fit.converged:
            notes.append(f"{name} ({fit.engine}) reports converged=False")
    if a.iterations != b.iterations:
        notes.append(f"iterations differ: a={a.iterations}, b={b.iterations}")
    return Comparison(_label(a), _label(b), "bayesglm", policy.name, rows, notes)


# ---------------------------------------------------------------------------------------------
# bayesglm(y ~ 0 + g) vs a mixed model's fixef + ranef


def _compare_shrinkage(
    bayes: BayesGLMFit, mixed: MixedFit, policy: Policy, registry: list[div.Divergence] | None
) -> Comparison:
    from mixbridge.conformance.shrinkage import level_names

    t = policy.tols
    if len(mixed.ranef) != 1 or list(mixed.fixef.index) != ["(Intercept)"]:
        raise ValueError("shrinkage comparison needs a mixed fit of y ~ 1 + (1|g)")
    factor, frame = next(iter(mixed.ranef.items()))
    levels = [str(x) for x in frame.index]
    mu = float(mixed.fixef["(Intercept)"])
    vc = mixed.varcorr
    tau = float(vc.loc[vc["grp"] == factor, "sdcor"].iloc[0])
    names = level_names(list(bayes.coef.index), levels, factor)
    coef = pd.Series([float(bayes.coef[names[lv]]) for lv in levels], index=levels)
    means = pd.Series(mu + frame["(Intercept)"].to_numpy(dtype=float), index=levels)
    pm = np.asarray(bayes.prior_mean, dtype=float).ravel()
    ps = np.asarray(bayes.prior_scale, dtype=float).ravel()
    prior_a = pd.Series(
        np.concatenate([pm, ps]),
        index=[f"prior_mean[{i}]" for i in range(len(pm))]
        + [f"prior_scale[{i}]" for i in range(len(ps))],
    )
    prior_b = pd.Series(np.concatenate([np.full(len(pm), mu), np.full(len(ps), tau)]),
                        index=prior_a.index)  # fmt: skip
    rows = [
        aligned_row("prior", prior_a, prior_b, lambda k: abs(float(prior_b[k])), t["prior"]),
        aligned_row("group_means", coef, means, lambda k: abs(float(means[k])), t["group_means"]),
    ]
    notes = [f"bayesglm {bayes.family} dispersion {bayes.dispersion:.10g}; "
             f"mixed σ² {mixed.sigma**2:.10g} ({'REML' if mixed.reml else 'ML'})"]  # fmt: skip
    for r in rows:
        _judge(r, "shrinkage", bayes, mixed, policy, None, registry)
    return Comparison(_label(bayes), _label(mixed), "shrinkage", policy.name, rows, notes)
