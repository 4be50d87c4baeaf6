"""Interval bounds and likelihood-ratio tables of two engines, compared under the one tolerance
policy (`mixbridge.conformance.tolerance.INFERENCE_TOLS`, `BOOT_MC_K`), as `Comparison` rows.

    ours = fit.confint("profile"); ref = fit_r.confint("profile")
    compare_intervals(ours, ref, model="lmer", method="profile").assert_ok()
    compare_anova(mixbridge.anova(m0, m1), mixbridge.anova(r0, r1), model="lmer").assert_ok()

Scales: a Wald bound's is |β̂| + its half-width; a profile bound's is the reference interval's
half-width. Bootstrap bounds are judged within Monte Carlo error: |a − b| ≤ K·sqrt(SE_a² + SE_b²)
with each SE the sample quantile's standard error from that run's replicates (both tables carry
them in `attrs["replicates"]`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from mixbridge.conformance.rows import FAIL, OK, Comparison, Row, RowElements
from mixbridge.conformance.tolerance import BOOT_MC_K, INFERENCE_TOLS, Tol
from mixbridge.errors import ArgumentError
from mixbridge.inference.bootstrap import quantile_mc_se


def _row(quantity: str, labels: list[str], a, b, bounds, tolerance: str, scales) -> Row:
    a, b = np.asarray(a, float), np.asarray(b, float)
    bounds = np.asarray(bounds, float)
    both_nan = np.isnan(a) & np.isnan(b)
    with np.errstate(invalid="ignore"):
        d = np.where(both_nan, 0.0, np.abs(a - b))
    d = np.where(np.isnan(d), np.inf, d)
    if a.size == 0:
        return Row(quantity, 0.0, 0.0, "", tolerance, OK, "nothing to compare", n=0)
    excess = d - bounds
    i = int(np.argmax(excess))
    failed = bool(np.any(excess > 0))
    sc = np.asarray(scales, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(d == 0, 0.0, d / np.where(sc > 0, sc, np.abs(b)))
    return Row(
        quantity=quantity,
        max_abs=float(np.max(d)),
        max_rel=float(np.nanmax(rel)),
        where=labels[i if failed else int(np.argmax(d))],
        tolerance=tolerance,
        status=FAIL if failed else OK,
        reason="" if not failed else f"{labels[i]}: a={a[i]:.10g}, b={b[i]:.10g}",
        n=int(a.size),
        bound=float(bounds[i]),
        elements=RowElements(list(labels), a, b, bounds),
    )


def compare_intervals(
    a: pd.DataFrame,
    b: pd.DataFrame,
    *,
    model: str,
    method: str,
    level: float = 0.95,
    a_label: str = "a",
    b_label: str = "b",
) -> Comparison:
    """Rows `confint_lower` and `confint_upper` for two confint tables of the same model."""
    if list(a.index) != list(b.index):
        raise ArgumentError(
            f"the tables name different parameters: {list(a.index)} vs {list(b.index)}", "b"
        )
    labels = [str(x) for x in b.index]
    rows = []
    for col, alpha in (("lower", (1 - level) / 2), ("upper", (1 + level) / 2)):
        va, vb = a[col].to_numpy(float), b[col].to_numpy(float)
        if method == "boot":
            reps_a, reps_b = a.attrs.get("replicates"), b.attrs.get("replicates")
            if reps_a is None or reps_b is None:
                raise ArgumentError("boot tables need their replicates (attrs)", "a")
            se = np.array([
                math.hypot(quantile_mc_se(reps_a[n].to_numpy(), alpha),
                           quantile_mc_se(reps_b[n].to_numpy(), alpha))
                for n in labels
            ])  # fmt: skip
            bounds, scales = BOOT_MC_K * se, se
            tolerance = f"{BOOT_MC_K:g} x Monte Carlo SE of the two percentile bounds"
        else:
            tol: Tol = INFERENCE_TOLS[model][method]
            half = (b["upper"] - b["lower"]).to_numpy(float) / 2.0
            mid = (b["upper"] + b["lower"]).to_numpy(float) / 2.0
            scales = np.abs(mid) + half if method == "wald" else half
            bounds = np.array([tol.bound(s) for s in scales])
            tolerance = tol.describe()
        rows.append(_row(f"confint_{col}", labels, va, vb, bounds, tolerance, scales))
    return Comparison(a_label, b_label, model, f"inference/{method}", rows)


def compare_anova(
    a: pd.DataFrame, b: pd.DataFrame, *, model: str, a_label: str = "a", b_label: str = "b"
) -> Comparison:
    """Rows for the likelihood-ratio tables' logLik, chisq and p-values (same row names)."""
    if list(a.index) != list(b.index):
        raise ArgumentError(f"the tables' rows differ: {list(a.index)} vs {list(b.index)}", "b")
    from mixbridge.conformance.tolerance import POLICIES

    labels = [str(x) for x in b.index]
    tols = INFERENCE_TOLS[model]
    loglik_tol = POLICIES[model]["loglik"]
    rows = [
        _row("lrt_npar", labels, a["npar"], b["npar"], np.zeros(len(labels)), "identical",
             np.zeros(len(labels))),
        _row("lrt_loglik", labels, a["loglik"], b["loglik"],
             np.full(len(labels), loglik_tol.bound(0.0)), loglik_tol.describe(),
             np.zeros(len(labels))),
    ]  # fmt: skip
    rest = labels[1:]
    pa, pb = a["p_value"].to_numpy(float)[1:], b["p_value"].to_numpy(float)[1:]
    rows.append(
        _row("lrt_chisq", rest, a["chisq"].to_numpy(float)[1:], b["chisq"].to_numpy(float)[1:],
             np.full(len(rest), tols["lrt_chisq"].bound(0.0)), tols["lrt_chisq"].describe(),
             np.zeros(len(rest)))
    )  # fmt: skip
    rows.append(
        _row("lrt_p_value", rest, pa, pb, np.array([tols["lrt_p"].bound(p) for p in pb]),
             tols["lrt_p"].describe(), np.abs(pb))
    )  # fmt: skip
    return Comparison(a_label, b_label, model, "inference/lrt", rows)
