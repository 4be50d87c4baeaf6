"""The model spec: one place where a mixed model's terms, family, weights, offset and control
settings are validated before any linear algebra (lme4's lFormula/glFormula checks:
checkNlevels, checkZdims, checkScaleX, the response checks of mkRespMod).

    lmer_spec(formula, data, weights, offset, control, frame)  -> LmerSpec
    glmer_spec(formula, data, family, link, nagq, weights, offset, control, frame) -> GlmerSpec

Control settings are `mixbridge.control`'s keys (the one set, checked for this engine), parsed
into `LmerSettings` / `GlmerSettings`. Model terms come from the input checks' evaluated frame
when given (no second evaluation of the data).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mixbridge.checks import is_constant
from mixbridge.control import check_control
from mixbridge.errors import ArgumentError, DataError
from mixbridge.python_impl.families import Family, get_family
from mixbridge.python_impl.family_nb import NegativeBinomial
from mixbridge.results import Message

if TYPE_CHECKING:
    import pandas as pd

    from mixbridge.formula.frames import MixedTerms, ModelFrame

# glmer's families and links on this engine (default link first): lme4's C++ links
GLMER_LINKS = {"binomial": ("logit", "probit", "cloglog"), "poisson": ("log",)}
AGQ_SCALAR_ONLY = "nAGQ > 1 is only available for models with a single, scalar random-effects term"
MAX_NAGQ = 100  # lme4's GHrule limit

# From this many rows glmer's default deviance function is the converged one (tol_pwrss =
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


# ---------------------------------------------------------------------------------------------
# Control settings


@dataclass(frozen=True)
class LmerSettings:
    """lmer's control settings (`mixbridge.control` keys; lme4's lmerControl defaults)."""

    restart_edge: bool = True
    boundary_tol: float = 1e-5
    calc_derivs: bool = True
    maxeval: int = 100_000
    start: np.ndarray | None = None
    cond_var: bool = True
    given: tuple[str, ...] = ()  # the keys control= set

    @property
    def needs_general_optimizer(self) -> bool:
        """A start or an evaluation limit belongs to the θ optimizer; the O(G) path's 1-D
        search honours the other keys (restart_edge and calc_derivs have nothing to do there:
        it evaluates θ = 0 itself and checks its optimum by the criterion's derivative)."""
        return "start" in self.given or "maxeval" in self.given

    def optimizer_settings(self) -> dict[str, Any]:
        return {
            "restart_edge": self.restart_edge,
            "boundary_tol": self.boundary_tol,
            "calc_derivs": self.calc_derivs,
            "maxeval": self.maxeval,
        }


@dataclass(frozen=True)
class GlmerSettings:
    """glmer's control settings: PIRLS tolerance (None: the default for the data's size,
    `default_tol_pwrss`) and iteration limit."""

    tol_pwrss: float | None = None
    maxit: int = 100
    cond_var: bool = True


def lmer_settings(control: Mapping[str, Any] | None) -> LmerSettings:
    ctrl = check_control("lmer", control, "python")
    given = tuple(ctrl)
    return LmerSettings(**ctrl, given=given)


def glmer_settings(control: Mapping[str, Any] | None) -> GlmerSettings:
    return GlmerSettings(**check_control("glmer", control, "python"))


def default_tol_pwrss(n_rows: int) -> float:
    """The PIRLS tolerance of the deviance function when `control` sets none: lme4's below
    GRADIENT_MIN_ROWS rows, the converged deviance's (TIGHT_TOL) from there on."""
    return TIGHT_TOL if n_rows >= GRADIENT_MIN_ROWS else LME4_TOL_PWRSS


# ---------------------------------------------------------------------------------------------
# The specs


@dataclass
class LmerSpec:
    """A checked lmer model: its terms and settings."""

    terms: MixedTerms
    reml: bool
    settings: LmerSettings = field(default_factory=LmerSettings)
    # Whether the rows carry prior weights other than 1, recorded once here so later stages
    # (the tests' Kenward-Roger builder) need no pass over the rows: without weights= the
    # frame gives broadcast ones (one value to read); given weights that are all 1 count as none.
    weighted: bool = field(init=False)

    def __post_init__(self) -> None:
        w = self.terms.weights
        if w is None:
            self.weighted = False
        else:
            w = np.asarray(w, dtype=float)
            self.weighted = not np.all((w[:1] if w.strides == (0,) else w) == 1.0)


@dataclass
class GlmerSpec:
    """A checked glmer model: terms, family, nAGQ, settings, and the response as the family's
    initialize() leaves it (y, prior weights, trials, η start), with its messages."""

    terms: MixedTerms
    family: Family
    nagq: int
    settings: GlmerSettings
    y: np.ndarray
    weights: np.ndarray
    n_trials: np.ndarray
    offset: np.ndarray
    eta_init: np.ndarray
    messages: list[Message]

    @property
    def tol_pwrss(self) -> float:
        tol = self.settings.tol_pwrss
        return default_tol_pwrss(self.terms.n) if tol is None else tol


def mixed_terms(
    formula: str,
    data: pd.DataFrame,
    *,
    weights: Any,
    offset: Any,
    model: str,
    family: str | None = None,
    frame: ModelFrame | None = None,
) -> MixedTerms:
    """lme4's lFormula/glFormula (`mixbridge.formula.build_mixed_terms`). lmer's X is built on
    first use: the O(G) path reads X's columns and never needs the n×p matrix."""
    from mixbridge.formula import build_mixed_terms

    return build_mixed_terms(
        formula,
        data,
        weights=weights,
        offset=offset,
        model=model,
        family=family,
        frame=frame,
        lazy_x=model == "lmer",
    )


def lmer_spec(
    formula: str,
    data: pd.DataFrame,
    *,
    reml: bool,
    weights: Any = None,
    offset: Any = None,
    control: Mapping[str, Any] | None = None,
    frame: ModelFrame | None = None,
) -> LmerSpec:
    settings = lmer_settings(control)
    terms = mixed_terms(formula, data, weights=weights, offset=offset, model="lmer", frame=frame)
    check_lmer_terms(terms)
    return LmerSpec(terms, bool(reml), settings)


def glmer_spec(
    formula: str,
    data: pd.DataFrame,
    *,
    family: str,
    link: str | None,
    nagq: int,
    weights: Any = None,
    offset: Any = None,
    control: Mapping[str, Any] | None = None,
    frame: ModelFrame | None = None,
    nb_theta: float | None = None,
) -> GlmerSpec:
    settings = glmer_settings(control)
    fam = glmer_family(family, link, nb_theta)
    if not 0 <= nagq <= MAX_NAGQ:
        raise ArgumentError(f"nagq must be an integer from 0 to {MAX_NAGQ}, got {nagq}", "nagq")
    terms = mixed_terms(
        formula, data, weights=weights, offset=offset, model="glmer", family=family, frame=frame
    )
    messages = list(terms.messages)
    y = np.asarray(terms.y, dtype=float)
    w = np.asarray(terms.weights, dtype=float)
    off = np.asarray(terms.offset, dtype=float)
    check_glmer_response(terms, fam, y, w, off, messages)
    init = fam.initialize(y, w, n_trials=terms.n_trials, response=terms.response_name)
    for text in init.warnings:
        messages.append(Message("warning", text, "python", code="non_integer"))
    eta_init = off + np.asarray(fam.linkfun(init.mustart), dtype=float)
    reterms = terms.reterms
    if nagq > 1 and not (len(reterms) == 1 and reterms[0].p == 1):
        raise ArgumentError(AGQ_SCALAR_ONLY, "nagq")
    return GlmerSpec(
        terms,
        fam,
        int(nagq),
        settings,
        np.asarray(init.y),
        np.asarray(init.weights),
        np.asarray(init.n),
        off,
        eta_init,
        messages,
    )


def check_nb_theta(theta: Any, name: str = "theta") -> float:
    """The negative-binomial θ as a positive finite float (ArgumentError naming `name`)."""
    if isinstance(theta, bool):
        raise ArgumentError(f"{name} must be a positive number, got {theta!r}", name)
    try:
        value = float(theta)
    except (TypeError, ValueError):
        raise ArgumentError(f"{name} must be a positive number, got {theta!r}", name) from None
    if not math.isfinite(value) or value <= 0:
        raise ArgumentError(f"{name} must be a positive finite number, got {theta!r}", name)
    return value


def glmer_family(family: str, link: str | None, nb_theta: float | None = None) -> Family:
    """The glmer family with lme4's C++ link (ArgumentError for what this engine lacks);
    "negative.binomial" needs its θ (`nb_theta`, MASS's negative.binomial(theta))."""
    if family == "negative.binomial":
        if link not in (None, "log"):
            raise ArgumentError(
                f"link {link!r} is not supported for glmer negative.binomial; use 'log'", "link"
            )
        if nb_theta is None:
            raise ArgumentError(
                "family='negative.binomial' needs theta= (MASS's negative.binomial(theta)); "
                "glmer_nb estimates it",
                "theta",
            )
        return NegativeBinomial(check_nb_theta(nb_theta))
    if nb_theta is not None:
        raise ArgumentError(
            f"theta= is the negative.binomial family's parameter; family is {family!r}", "theta"
        )
    if family not in GLMER_LINKS:
        raise ArgumentError(
            f"glmer (engine='python') supports families {', '.join(GLMER_LINKS)}, not {family!r}",
            "family",
        )
    link = GLMER_LINKS[family][0] if link is None else link
    if link not in GLMER_LINKS[family]:
        raise ArgumentError(
            f"link {link!r} is not supported for glmer {family}; use one of "
            f"{', '.join(GLMER_LINKS[family])}",
            "link",
        )
    return get_family(family, link)


# ---------------------------------------------------------------------------------------------
# Checks (lme4's checkNlevels, checkZdims, mkRespMod and our own guards when called directly)


def check_lmer_terms(terms: MixedTerms) -> None:
    """Raise DataError for models lme4 refuses (or that would give meaningless numbers)."""
    n = int(terms.n)
    if n == 0:
        raise DataError("no observations left to fit (all rows were dropped as missing)")
    y = np.asarray(terms.y)
    if not np.issubdtype(y.dtype, np.number) or y.dtype == bool:
        raise DataError("the response must be numeric for lmer", "response")
    if not terms.response_finite:  # else the model frame proved it
        lo, hi = float(np.min(y)), float(np.max(y))  # NaN propagates: two passes check it all
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise DataError("the response has non-finite values (Inf or NaN)", "response")
    if n > 1 and is_constant(y):
        name = getattr(terms, "response_name", "response")
        raise DataError(
            f"the response {name!r} is constant: a linear mixed model cannot be fitted", name
        )
    if not terms.reterms:
        raise DataError(
            "no random effects terms specified in formula: use an ordinary linear model "
            "(e.g. statsmodels OLS) instead of lmer"
        )
    if terms.weights is not None:
        w = np.asarray(terms.weights, dtype=float)
        if w.shape != (n,):
            raise DataError(f"weights must have one value per row ({n}), got {w.shape}", "weights")
        wv = w[:1] if w.strides == (0,) else w  # broadcast unit weights: one value to check
        lo, hi = float(np.min(wv)), float(np.max(wv))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise DataError("weights must be finite (found NaN or Inf)", "weights")
        if lo < 0:
            raise DataError(
                f"weights must be non-negative ({int(np.sum(w < 0))} negative)", "weights"
            )
        if lo == 0:
            # lme4 returns a degenerate fit (criterion +Inf: log 0 in Σ log w) for these
            zero = np.flatnonzero(w == 0)
            raise DataError(
                f"lmer weights must be positive: {zero.size} zero weight(s) (rows "
                f"{', '.join(str(int(i)) for i in zero[:5])}{', ...' if zero.size > 5 else ''}); "
                "lme4's criterion is infinite then. Drop those rows instead",
                "weights",
            )
    if terms.offset is not None:
        o = np.asarray(terms.offset, dtype=float)
        # a finite sum means finite values (an overflowing sum gets the exact check)
        finite = math.isfinite(float(np.sum(o))) or bool(np.isfinite(o).all())
        if o.shape != (n,) or not finite:
            raise DataError(f"offset must be {n} finite values", "offset")
    for t in terms.reterms:
        if t.n_levels < 2:
            raise DataError(f"grouping factor '{t.group}' must have > 1 sampled level", t.group)
        if t.n_levels >= n:
            raise DataError(
                f"number of levels of each grouping factor must be < number of observations "
                f"(problems: {t.group}: {t.n_levels} levels, {n} observations)",
                t.group,
            )
        if t.n_levels * t.p >= n:
            raise DataError(
                f"number of observations (={n}) <= number of random effects "
                f"(={t.n_levels * t.p}) for term ({' + '.join(t.cnames)} | {t.group}); the "
                "random-effects parameters and the residual variance are probably unidentifiable",
                t.group,
            )


def check_glmer_response(
    terms: MixedTerms,
    fam: Family,
    y: np.ndarray,
    w: np.ndarray,
    off: np.ndarray,
    messages: list[Message],
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
    if fam.family in ("poisson", "negative.binomial") and np.any(y < 0):
        raise DataError(f"poisson response {name!r} has negative values", name)


def check_scale_x(
    x: np.ndarray | list[np.ndarray | None],
    kappa: float = 1e3,
    variances: np.ndarray | None = None,
    means: np.ndarray | None = None,
) -> Message | None:
    """lme4's checkScaleX: warn when the non-0/1 columns of X have sds (or sd ratios) beyond
    kappa, which makes the optimization ill-conditioned.

    `x`: X, or its columns (None for the intercept). `variances`: the columns' sample variances
    when already known (e.g. from the one-pass statistics), with `means` their means: a column
    whose mean and variance rule out values in [0, 1] is then not read at all."""
    if isinstance(x, list):
        n, p = next((len(c) for c in x if c is not None), 0), len(x)
        cols = [np.broadcast_to(1.0, (n,)) if c is None else np.asarray(c, float) for c in x]
    else:
        n, p = x.shape
        cols = [x[:, j] for j in range(p)]
    if n < 2 or p == 0:
        return None
    if variances is not None:
        var = np.asarray(variances, dtype=float)
        mean = None if means is None else np.asarray(means, dtype=float)

        def could_be_in_unit_interval(j: int) -> bool:
            # values in [0, 1] have their mean there and variance ≤ mean(1 − mean) ≤ 1/4
            # (Bhatia–Davis; the sample variance carries n/(n − 1)): else no pass over the rows
            if mean is None:
                return True
            m = mean[j]
            return bool(-1e-12 <= m <= 1 + 1e-12 and var[j] <= (0.25 * n / (n - 1)) * 1.000001)

        inside = [cols[j][:1] if cols[j].strides == (0,) else cols[j] for j in range(p)]
        lo = np.array([c.min() if could_be_in_unit_interval(j) else -1.0 for j, c in
                       enumerate(inside)])  # fmt: skip
        hi = np.array([c.max() if could_be_in_unit_interval(j) else 2.0 for j, c in
                       enumerate(inside)])  # fmt: skip
    else:
        lo, hi, var = column_summaries(x if not isinstance(x, list) else np.column_stack(cols))
    cont = np.ones(p, dtype=bool)
    for j in np.flatnonzero((lo >= 0) & (hi <= 1)):  # look at the values of [0, 1] columns only
        col = cols[j][:1] if cols[j].strides == (0,) else cols[j]  # a constant: one value
        cont[j] = bool(np.any((col != 0) & (col != 1)))
    if not np.any(cont):
        return None
    with np.errstate(divide="ignore"):
        logsd = 0.5 * np.log(var[cont])
    logcomp = np.abs(logsd[:, None] - logsd[None, :])
    if np.any(np.abs(logsd) > np.log(kappa)) or np.any(logcomp > np.log(kappa)):
        return Message(
            "warning",
            "Some predictor variables are on very different scales: consider rescaling",
            "python",
            code="scale_x",
        )
    return None


def column_summaries(
    x: np.ndarray, block: int = 32_768
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimum, maximum and sample variance of each column of X in one blocked pass.

    Each block of rows is copied into a small row-major buffer of columns (so any layout of X is
    read contiguously) and shifted by the first rows' means, so the sums of squares do not cancel
    when a column's mean dwarfs its sd.
    """
    n, p = x.shape
    shift = x[: min(n, 1000)].mean(axis=0)
    lo = np.full(p, np.inf)
    hi = np.full(p, -np.inf)
    s1 = np.zeros(p)
    s2 = np.zeros(p)
    buf = np.empty((p, min(block, n)))
    for a in range(0, n, block):
        xt = buf[:, : min(block, n - a)]
        np.copyto(xt, x[a : a + block].T)
        np.minimum(lo, xt.min(axis=1), out=lo)
        np.maximum(hi, xt.max(axis=1), out=hi)
        xt -= shift[:, None]
        s1 += xt.sum(axis=1)
        s2 += np.einsum("ij,ij->i", xt, xt)
    var = np.maximum(s2 - s1**2 / n, 0.0) / (n - 1)
    return lo, hi, var
