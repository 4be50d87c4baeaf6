"""glmer's big-data path in memory: a single `(1|g)` term, canonical link, nAGQ = 1, from
LEAN_MIN_ROWS rows (issue 15, target 4). The same algorithm as the fused in-memory path and
the Dask path (`group_sum_kernel`, `group_sum_fit`: every step reads the rows once for group
sums), on the rows ordered by group and read in chunks of whole groups (`SortedColumns`), so
memory stays near the input columns:

    model terms with X as its columns (no n×p X), unit weights and a zero offset as read-only
    constants (no n-vectors); the columns gathered once in group order (the copies are the
    only O(n) memory of the fit); every pass's temporaries chunk-sized; fitted values and
    residuals computed when first read (`Deferred`).

It returns None (the caller runs the general path) when the model or the data need what it
does not do: X that is not plain columns, binomial cbind() responses, non-integer binomial
counts, |η| beyond lme4's clamps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from mixbridge.errors import ConvergenceError
from mixbridge.python_impl import output
from mixbridge.python_impl.glmer_group_sums import estimate
from mixbridge.python_impl.group_sum_kernel import Constants, GroupSumKernel
from mixbridge.python_impl.group_sum_rows import SortedColumns
from mixbridge.python_impl.predict import FitPredictions
from mixbridge.python_impl.response import CANONICAL, GlmResponse
from mixbridge.python_impl.result import build_fit
from mixbridge.python_impl.spec import (
    TIGHT_TOL,
    check_glmer_response,
    glmer_family,
    glmer_settings,
)
from mixbridge.results import Deferred, Message, MixedFit

if TYPE_CHECKING:
    from mixbridge.formula.frames import MixedTerms, ModelFrame

LEAN_MIN_ROWS = 1_000_000  # below it the general fused path is as lean as it needs to be


def try_glmer_lean(
    formula: str,
    data: Any,
    *,
    family: str,
    link: str | None,
    nagq: int,
    weights: Any,
    offset: Any,
    control: Mapping[str, Any] | None,
    frame: ModelFrame | None,
) -> MixedFit | None:
    """The lean fit, or None when it does not apply (see the module docstring)."""
    from mixbridge.formula import build_mixed_terms

    if frame is None or nagq != 1:
        return None
    fam = glmer_family(family, link)
    settings = glmer_settings(control)
    tol = TIGHT_TOL if settings.tol_pwrss is None else float(settings.tol_pwrss)
    if (fam.family, fam.link) not in CANONICAL or tol > TIGHT_TOL or frame.n < LEAN_MIN_ROWS:
        return None
    terms = build_mixed_terms(
        formula, data, weights=weights, offset=offset, model="glmer", family=family,
        frame=frame, lazy_x=True,
    )  # fmt: skip
    reterms = list(terms.reterms)
    if (
        len(reterms) != 1
        or list(reterms[0].cnames) != ["(Intercept)"]
        or terms.x_built
        or terms.x_columns is None
        or terms.n_trials is not None
    ):
        return None
    try:
        return _fit(formula, data, terms, fam, family, link, weights, offset, control, settings,
                    tol)  # fmt: skip
    except _NotLean:
        return None


class _NotLean(Exception):
    """The data need the general path (non-integer counts, |η| beyond the clamps)."""


def _constant(a: np.ndarray | None, value: float) -> bool:
    """`a` is None, a broadcast constant equal to `value`, or all `value`."""
    if a is None:
        return True
    a = np.asarray(a)
    if a.strides == (0,):
        return bool(a.size == 0 or a[0] == value)
    return bool(np.all(a == value))


def _fit(
    formula: str,
    data: Any,
    terms: MixedTerms,
    fam: Any,
    family: str,
    link: str | None,
    weights: Any,
    offset: Any,
    control: Mapping[str, Any] | None,
    settings: Any,
    tol: float,
) -> MixedFit:
    n = int(terms.n)
    y = np.asarray(terms.y, dtype=float)
    w = None if _constant(terms.weights, 1.0) else np.asarray(terms.weights, dtype=float)
    off = None if _constant(terms.offset, 0.0) else np.asarray(terms.offset, dtype=float)
    messages = list(terms.messages)
    w_full = np.broadcast_to(1.0, (n,)) if w is None else w
    off_full = np.broadcast_to(0.0, (n,)) if off is None else off
    check_glmer_response(terms, fam, y, w_full, off_full, messages)
    term = terms.reterms[0]
    G = term.n_levels
    codes = np.asarray(term.codes)
    counts = term.counts if term.counts is not None else np.bincount(codes, minlength=G)

    # the columns in group order: the fit's only O(n) copies
    keys = codes.astype(np.uint16) if G <= 65536 else codes
    order = np.argsort(keys, kind="stable")
    cols = [None if c is None else np.take(np.asarray(c, dtype=float), order)
            for c in terms.x_columns]  # fmt: skip
    ys = np.take(y, order)
    ws = None if w is None else np.take(w, order)
    offs = None if off is None else np.take(off, order)
    del order

    def init(yc: np.ndarray, wc: np.ndarray | None) -> np.ndarray:
        start = fam.initialize(yc, np.ones(yc.size) if wc is None else wc)
        return np.asarray(fam.linkfun(start.mustart), dtype=float)

    source = SortedColumns(cols, ys, ws, offs, counts, fam.link == "logit", init)

    # data-only sums, chunk by chunk: Σ_j wy, the deviance's constant, aic − deviance
    sy = source.group_sums(lambda a, b: ys[a:b] if ws is None else ws[a:b] * ys[a:b])
    dev_const, aic_minus_dev, warned = 0.0, 0.0, []
    for ga, gb in source.chunks:
        a, b = int(source.starts[ga]), int(source.starts[gb])
        wc = np.ones(b - a) if ws is None else ws[a:b]
        start = fam.initialize(ys[a:b], wc)
        warned += [t for t in start.warnings if t not in warned]
        resp = GlmResponse(fam, np.asarray(start.y), np.asarray(start.weights),
                           np.zeros(b - a), np.asarray(start.n))  # fmt: skip
        if resp.aic_minus_dev is None:
            raise _NotLean
        dev_const += float(np.sum(resp.dev_const))
        aic_minus_dev += float(resp.aic_minus_dev)
    messages += [Message("warning", t, "python", code="non_integer") for t in warned]
    ones = [c is None for c in cols]
    kernel = GroupSumKernel(source, Constants(sy, dev_const, aic_minus_dev, ones), len(cols))
    try:
        est_ = estimate(kernel, tol, settings.maxit, fam.family, messages)
    except ConvergenceError:
        raise _NotLean from None
    beta, b = est_.beta, est_.b
    cond_var = {term.group: est_.cond_var.reshape(-1, 1, 1)} if settings.cond_var else {}

    def population() -> np.ndarray:
        eta = terms.x_times(beta)
        if off is not None:
            eta += off
        return eta

    def mu() -> np.ndarray:
        eta = population()
        eta += b[codes]
        return fam.lme4_linkinv(eta)

    fitted = Deferred(mu, source="μ at the estimates, computed when first read")

    def residuals() -> np.ndarray:
        m = fitted.get()
        resp = GlmResponse(fam, y, w_full, off_full, np.ones(1))
        return np.sign(y - m) * np.sqrt(np.maximum(resp.dev_resids(m), 0.0))

    est = est_.fit_estimates(
        formula, fam, [term], list(terms.x_names), n, cond_var, fitted,
        Deferred(residuals, source="deviance residuals, computed when first read"),
        list(terms.dropped_columns or []), output.versions(),
    )  # fmt: skip
    pred = FitPredictions(
        terms, np.asarray(beta, dtype=float), b, est.lambda_blocks, None, population,
        family=fam.family, linkinv=fam.lme4_linkinv, trials=w_full,
    )  # fmt: skip

    fit_control = None if control is None else dict(control)

    def objective(theta_: Any, beta_: Any = None, *, control: Any = None) -> float:
        """glmer's deviance function at (θ, β) for this data and control (glmer_objective's;
        it builds the general path's model, once per call)."""
        from mixbridge.python_impl.glmer import glmer_objective

        return glmer_objective(
            formula, data, theta=np.ravel(theta_), beta=np.ravel(beta_), family=family,
            link=link, nagq=1, weights=weights, offset=offset,
            control=fit_control if control is None else dict(control),
        )  # fmt: skip

    fit = build_fit(est, objective=objective, predict=pred.predict, simulate=pred.simulate)
    fit.extra.update({"passes": kernel.n_passes, "path": "lean group sums"})
    return fit
