"""Input checks shared by every engine, run before any engine (or R) sees the data.

The formula is validated against an allow-list (`mixbridge.formula.validate`), then the variables
the formula uses are evaluated once (no model matrix is built) to check the response, NA
handling, grouping factors, weights and offset. Each failure raises a DataError/FormulaError/
ArgumentError naming the column, level or argument.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pandas as pd

from mixbridge.data_input import is_dask
from mixbridge.errors import ArgumentError, DataError, FormulaError

if TYPE_CHECKING:
    from mixbridge.formula.frames import ModelFrame

F = TypeVar("F", bound=Callable[..., Any])

# families (R spelling) and the links R's family constructors accept, default first; shared
# with the Python engines' families (python_impl/families.py)
FAMILY_LINKS: dict[str, tuple[str, ...]] = {
    "gaussian": ("identity", "log", "inverse"),
    "binomial": ("logit", "probit", "cauchit", "log", "cloglog"),
    "poisson": ("log", "identity", "sqrt"),
    "Gamma": ("inverse", "identity", "log"),
    "inverse.gaussian": ("1/mu^2", "inverse", "identity", "log"),
    "quasibinomial": ("logit", "probit", "cauchit", "log", "cloglog"),
    "quasipoisson": ("log", "identity", "sqrt"),
}
# MASS's negative.binomial(theta): glmer only (bayesglm's families are stats' own)
NB_LINKS = ("log",)
FAMILIES = {
    "lmer": ("gaussian",),
    "glmer": ("binomial", "poisson", "Gamma", "inverse.gaussian", "gaussian", "negative.binomial"),
    "bayesglm": tuple(FAMILY_LINKS),
}


def check_inputs(
    model: str,
    formula: str,
    data: pd.DataFrame,
    *,
    weights: Any = None,
    offset: Any = None,
    family: str | None = None,
    link: str | None = None,
    nagq: int | None = None,
) -> ModelFrame:
    """Validate formula and data for `model` in {"lmer", "glmer", "bayesglm"}. Raises on failure.

    `link` is optional (checked against the family when given); `nagq` (glmer) is checked against
    the random-effects terms. Returns the evaluated model frame, which the Python engine builds
    its model terms from (no second evaluation).
    """
    from mixbridge.formula.frames import ModelFrame  # the same evaluation the engines use

    if model not in FAMILIES:
        raise ArgumentError(
            f"unknown model {model!r}; expected one of {', '.join(FAMILIES)}", "model"
        )
    if not isinstance(data, pd.DataFrame):
        kind = type(data).__name__
        if is_dask(data):
            kind = f"a Dask {kind} (accepted by lmer() and glmer() only, for a single (1 | g) term)"
        raise DataError(
            f"data must be a DataFrame (pandas, polars, a pyarrow Table or any frame narwhals "
            f"supports), got {kind}",
            column=None,
        )
    if not isinstance(formula, str):
        raise FormulaError(f"formula must be a string, got {type(formula).__name__}")
    fam = _check_family(model, family, link)
    frame = ModelFrame(formula, data, model, fam, weights, offset, keep_order=model == "bayesglm")
    if len(data) == 0:
        raise DataError("data has 0 rows")
    _check_weights(frame.weights_in, "weights")
    if frame.offset_in is not None:
        check_finite_offset(frame.offset_in)
    frame.evaluate(with_bars=model != "bayesglm")
    frame.na_omit()
    n = frame.n
    _check_weights_used(frame.weights, model)
    _check_finite_variables(frame)
    _check_labels(frame)

    # -- response (the same coding the engines get) -------------------------------------------
    name = frame.response_name
    if frame.cbind:
        s, f = (v.values for v in frame.resp)  # type: ignore[union-attr]
        if (s < 0).any() or (f < 0).any() or not np.isfinite(s + f).all():
            raise DataError(
                f"cbind() response {name!r} needs finite, non-negative counts", column=name
            )
        if fam not in ("binomial", "quasibinomial"):
            raise DataError(
                f"cbind() response {name!r} is only for the binomial family, not {fam!r}",
                column=name,
            )
    y, _, _ = frame.response(shared_unit_weights=True)  # y only: no n-vector of ones
    _check_response_range(y, fam, name)
    if model in ("lmer", "glmer") and is_constant(y):  # y is finite here (response())
        check_response_spread(float(y[0]), float(y[0]), n, name, model)

    # -- grouping factors ----------------------------------------------------------------------
    if model != "bayesglm":
        _check_groups(frame, model, n)
    if nagq is not None:
        _check_nagq(frame, nagq)
    return frame


def check_dask_inputs(
    model: str, formula: str, data: Any, *, weights: Any = None, offset: Any = None
) -> None:
    """The checks that need no pass over a Dask DataFrame: the formula against its columns
    (the allow-list), weights and offset given as column names of it. The engine checks the
    values themselves partition by partition, with the same rules as `check_inputs`."""
    from mixbridge.formula.validate import validate_formula

    if model not in ("lmer", "glmer"):
        raise DataError(
            f"data must be a pandas DataFrame for {model}, got a Dask {type(data).__name__} "
            "(accepted by lmer() and glmer() only, for a single (1 | g) term)",
            column=None,
        )
    if not isinstance(formula, str):
        raise FormulaError(f"formula must be a string, got {type(formula).__name__}")
    columns = [str(c) for c in data.columns]
    validate_formula(formula, columns, model)
    for name, arg in (("weights", weights), ("offset", offset)):
        if arg is None:
            continue
        if not isinstance(arg, str):
            raise ArgumentError(
                f"with a Dask DataFrame, {name}= must be a column name, not {type(arg).__name__}",
                name,
            )
        if arg not in columns:
            raise DataError(f"{name}={arg!r} is not a column of data", column=arg)


def is_constant(y: np.ndarray) -> bool:
    """Whether every value of the finite vector y is the same: the first rows usually settle
    it, so a varying response is not read in full (min and max read it twice)."""
    if y.size == 0:
        return False
    head = y[:1024]
    if np.any(head != head[0]):
        return False
    return bool(np.all(y == y[0]))


def check_response_spread(lo: float, hi: float, n: int, name: str, model: str) -> None:
    """A constant response (lowest value = highest) is an error for lmer and glmer (shared
    with the Dask path, which gathers the extremes from its partitions)."""
    if lo != hi:
        return
    if model == "lmer":
        raise DataError(
            f"response {name!r} is constant ({lo:g} in all {n} rows used); lmer cannot "
            "estimate a residual variance (lme4 returns a degenerate fit with REML criterion "
            "-Inf)",
            column=name,
        )
    raise DataError(f"response {name!r} is constant (lme4: 'Response is constant')", column=name)


def _check_family(model: str, family: str | None, link: str | None) -> str:
    if model == "lmer":
        if family not in (None, "gaussian"):
            raise ArgumentError(f"lmer fits a gaussian model; family={family!r} given", "family")
        fam = "gaussian"
    else:
        fam = family or ("binomial" if model == "glmer" else "gaussian")
        if not isinstance(fam, str) or fam not in FAMILIES[model]:
            hint = " (R spells it 'Gamma')" if str(fam).lower() == "gamma" else ""
            raise ArgumentError(
                f"unknown family {fam!r} for {model}{hint}; available: "
                f"{', '.join(FAMILIES[model])}",
                "family",
            )
    links = NB_LINKS if fam == "negative.binomial" else FAMILY_LINKS[fam]
    if link is not None and link not in links:
        raise ArgumentError(
            f"link {link!r} is not available for family {fam!r}; available: {', '.join(links)}",
            "link",
        )
    return fam


def _check_response_range(y: np.ndarray, fam: str, name: str) -> None:
    if fam in ("binomial", "quasibinomial") and ((y < 0) | (y > 1)).any():
        bad = np.flatnonzero((y < 0) | (y > 1))
        raise DataError(
            f"binomial response {name!r} must be 0/1 or a proportion in [0, 1] "
            f"(R: y values must be 0 <= y <= 1); {len(bad)} value(s) are not, e.g. {y[bad[0]]:g}",
            column=name,
        )
    if fam in ("poisson", "quasipoisson", "negative.binomial") and (y < 0).any():
        raise DataError(
            f"poisson response {name!r} has negative values (R: negative values not allowed "
            "for the 'Poisson' family)",
            column=name,
        )
    if fam in ("Gamma", "inverse.gaussian") and (y <= 0).any():
        raise DataError(
            f"{fam} response {name!r} must be positive; it has {int((y <= 0).sum())} value(s) <= 0",
            column=name,
        )


def _bar_ncol(frame: Any, k: int) -> int:
    """Number of columns of random-effects term k (its Z block per level)."""
    from mixbridge.formula.model_matrix import Design

    vals = frame.bar_values[k]
    dropped = {i: (v.drop_unused() if hasattr(v, "drop_unused") else v) for i, v in vals.items()}
    return len(Design.from_values(frame.bar_infos[k], dropped, "treatment").names)


def _check_groups(frame: Any, model: str, n: int) -> None:
    from mixbridge.formula.parse import deparse

    for k, bar in enumerate(frame.bars):
        nl = len(frame.group_factor(k).levels)
        name = bar.group_name
        if nl < 2:
            raise DataError(
                f"grouping factor {name!r} has only {nl} level; a random effect needs at least 2",
                column=name,
            )
        if model == "lmer" and nl >= n:
            raise DataError(
                f"grouping factor {name!r} has {nl} levels for {n} observations; lme4: number "
                "of levels of each grouping factor must be < number of observations",
                column=name,
            )
        p = _bar_ncol(frame, k)
        q = nl * p
        # lme4 checkZdims (check.nobs.vs.nRE = "stop"): lmer needs n > q, glmer n >= q
        term = f"{deparse(bar.lhs)} | {name}"
        if (model == "lmer" and n <= q) or (model == "glmer" and n < q):
            extra = " and the residual variance (or scale parameter)" if model == "lmer" else ""
            raise DataError(
                f"number of observations (={n}) {'<=' if model == 'lmer' else '<'} number of "
                f"random effects (={q}) for term ({term}); the random-effects parameters{extra} "
                "are probably unidentifiable",
                column=name,
            )


def _rows(rows: np.ndarray) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
    return f"{len(rows)} row(s) (positions {shown})"


def _check_weights(w: np.ndarray | None, what: str) -> None:
    if w is None:
        return
    if np.isinf(w).any():
        raise DataError(
            f"{what} must be finite; infinite in {_rows(np.flatnonzero(np.isinf(w)))}", column=what
        )
    neg = np.flatnonzero(w < 0)
    if len(neg):
        raise DataError(f"{what} must be non-negative; negative in {_rows(neg)}", column=what)


def check_finite_offset(offset: np.ndarray) -> None:
    """The offset= argument has no Inf (NaN is missing)."""
    inf = np.isinf(offset)
    if inf.any():
        raise DataError(
            f"offset has infinite values in {_rows(np.flatnonzero(inf))}", column="offset"
        )


def _check_weights_used(w: np.ndarray | None, model: str) -> None:
    """Weights on the rows used (after na.omit): lmer needs every weight > 0 (lme4's criterion
    has log w: a zero weight makes it infinite and lme4 returns a non-converged fit without a
    word), and no model can be fitted with all weights zero."""
    if w is None:
        return
    check_weight_values(np.asarray(w, dtype=float), model)


def check_weight_values(
    w: np.ndarray, model: str, column: str = "weights", where: str = "the rows used"
) -> None:
    """The weight rules on the prior weights of the rows used: finite, non-negative, positive
    for lmer, not all zero (shared with the Dask path, which checks each partition)."""
    _check_weights(w, column)
    if model == "lmer":
        zero = np.flatnonzero(w == 0)
        if zero.size:
            raise DataError(
                f"lmer weights must be positive: {zero.size} zero weight(s) in {where} "
                f"({_rows(zero)}); lme4's criterion is infinite there and its fit does not "
                "converge. Drop those rows instead",
                column,
            )
    if w.size and not np.any(w > 0):
        raise DataError(
            f"all {w.size} weights of the rows used are zero: there is nothing to fit", column
        )


def _variables(frame: Any) -> list[tuple[str, Any]]:
    """(name, evaluated value) of every variable of the fixed part and the random terms."""
    named = [(frame.info.var_names[i], v) for i, v in frame.fixed_all.items()]
    for info, vals in zip(frame.bar_infos, frame.bar_values, strict=True):
        named += [(info.var_names[i], v) for i, v in vals.items()]
    return named


def _check_finite_variables(frame: Any) -> None:
    """Inf in a numeric variable of the model (x, log(z), poly(x, 2), a slope) is an error on
    every engine (R: 'NA/NaN/Inf in foreign function call')."""
    from mixbridge.formula.evaluate import Numeric

    for name, v in _variables(frame):
        if isinstance(v, Numeric) and not v.all_finite():  # the sum na.omit already took
            check_finite_values(v.values, name)


def check_finite_values(values: np.ndarray, name: str) -> None:
    """DataError naming `name` and the rows when `values` (NaN = missing) holds an Inf."""
    # a finite sum means finite values (NaN rows are gone after na.omit); else look closer
    with np.errstate(over="ignore", invalid="ignore"):
        total = float(np.sum(values))
    if math.isfinite(total):
        return
    inf = np.isinf(values)
    if inf.ndim > 1:
        inf = inf.any(axis=1)
    if inf.any():
        raise DataError(
            f"variable {name!r} has infinite values in {_rows(np.flatnonzero(inf))} (e.g. "
            "log(0)); R stops on them too. Transform or filter the data",
            column=name,
        )


def _check_labels(frame: Any) -> None:
    """Factor labels exactly as R will see them: no NUL (R's strings end there), no two levels
    with the same label (R's factor() merges them)."""
    from mixbridge.formula.evaluate import Factor

    named = [(frame.response_name, v) for v in frame.resp] + _variables(frame)
    for name, v in named:
        if isinstance(v, Factor):
            check_level_labels(v.levels, name, distinct=v.kind in ("character", "logical"))
    for k, bar in enumerate(frame.bars if frame.bar_values else []):
        g = frame.group_factor(k)
        check_level_labels(g.levels, bar.group_name, distinct=g.kind in ("character", "logical"))


def check_level_labels(levels: Any, name: str, distinct: bool = False) -> None:
    """DataError naming the column and level when R would read the levels differently from
    Python: a NUL inside a label (R cuts the string there), or two distinct values with the same
    label (numbers label with 15 significant digits, as.character(); a:b pastes labels with
    ':'), which R's factor() merges into one level while Python keeps them apart. `distinct`:
    the labels are known to be distinct (strings), only NUL is checked."""
    from mixbridge.formula.levels import IntegerLevels

    if isinstance(levels, IntegerLevels) or len(levels) == 0:
        return  # distinct integers: distinct digit strings, no NUL
    labels = levels if isinstance(levels, list) else list(levels)
    if "\x00" in "".join(labels):
        bad = next(lv for lv in labels if "\x00" in lv)
        raise DataError(
            f"column {name!r} has the level {bad!r} with a NUL character; R cuts strings at NUL "
            "(so 'g\\x00a' and 'g\\x00b' would be one group). Remove the NUL characters",
            column=name,
        )
    if not distinct and len(set(labels)) < len(labels):
        seen: set[str] = set()
        dup = next(lv for lv in labels if lv in seen or seen.add(lv))
        raise DataError(
            f"column {name!r}: distinct values share the level label {dup!r} as R writes them "
            "(numbers to 15 significant digits, a:b joined by ':'), so R would put their rows "
            "in one group and Python in two. Round or recode the column so its values are "
            "distinct as text",
            column=name,
        )


def _check_nagq(frame: Any, nagq: int) -> None:
    if nagq <= 1:
        return
    if len(frame.bars) != 1 or _bar_ncol(frame, 0) != 1:
        raise ArgumentError(
            f"nagq={nagq}: adaptive Gauss-Hermite quadrature (nagq > 1) is only available for "
            "models with a single, scalar random-effects term such as (1 | g), as in lme4",
            "nagq",
        )


def check_flag(value: Any, name: str) -> bool:
    """A flag argument (reml, scaled, ...): True/False or a numpy bool, nothing else (a string
    such as "false" is truthy in Python and would silently mean True)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ArgumentError(f"{name} must be True or False, got {value!r}", name)


def check_nagq(nagq: Any) -> int:
    if not isinstance(nagq, (int, np.integer)) or isinstance(nagq, (bool, np.bool_)):
        raise ArgumentError(f"nagq must be an integer from 0 to 100, got {nagq!r}", "nagq")
    if not 0 <= nagq <= 100:
        raise ArgumentError(f"nagq must be an integer from 0 to 100, got {nagq!r}", "nagq")
    return int(nagq)


def check_family_name(family: Any, model: str) -> str:
    """`family=` of glmer/bayesglm as given by the user: a family name string."""
    if not isinstance(family, str):
        raise ArgumentError(
            f"family must be a family name such as {FAMILIES[model][0]!r}; available for "
            f"{model}: {', '.join(FAMILIES[model])}; got {family!r}",
            "family",
        )
    return family


def n_theta(frame: Any) -> int:
    """Number of θ parameters of the model (lme4's lower triangle per term)."""
    total = 0
    for k in range(len(frame.bars)):
        p = _bar_ncol(frame, k)
        total += p * (p + 1) // 2
    return total


def check_theta_length(frame: Any, theta: Any, argument: str) -> None:
    """θ given by the user (control['start'], lmer_objective's theta) has one value per
    parameter of the model."""
    size = int(np.size(theta))
    want = n_theta(frame)
    if size != want:
        raise ArgumentError(
            f"{argument} must have length {want} for this model, got {size} (θ in lme4's "
            "order: terms by decreasing number of levels, each term's lower triangle column "
            "by column)",
            argument,
        )


def check_bayesglm_terms(frame: Any, drop_baseline: bool, prior: dict[str, Any]) -> None:
    """bayesglm's coefficients: at least one, and prior_mean/prior_scale/prior_df with one
    value or one per non-intercept coefficient (arm's columns: all levels of a factor when
    drop_baseline=False)."""
    part = frame.fixed_part(contrasts="treatment" if drop_baseline else "bayes", drop_unused=False)
    if not part.design.names:
        raise ArgumentError("the model has no coefficients; bayesglm needs at least one", "formula")
    nv = len(part.design.names) - int(bool(part.info.intercept))
    what = "non-intercept coefficients" if part.info.intercept else "coefficients"
    for name in ("prior_mean", "prior_scale", "prior_df"):
        value = prior.get(name)
        if value is None:
            continue
        size = int(np.size(value))
        if size != 1 and size != nv:
            raise ArgumentError(
                f"invalid length for {name}: got {size}, expected {nv} (number of {what})",
                name,
            )


def _values(x: Any) -> Iterable[float]:
    if x is None:
        return []
    arr = np.atleast_1d(np.asarray(x, dtype=float))
    return arr.ravel().tolist()


def check_bayesglm_args(**prior: Any) -> None:
    """Validate bayesglm's prior and fitting arguments (lengths are checked by the engine)."""
    positive = (
        "prior_scale",
        "prior_scale_for_intercept",
        "prior_df",
        "prior_df_for_intercept",
        "min_prior_scale",
        "epsilon",
        "dispersion",
    )
    for name in positive:
        if name not in prior or prior[name] is None:
            continue
        try:
            vals = list(_values(prior[name]))
        except (TypeError, ValueError):
            raise ArgumentError(
                f"{name} must be a number or a vector of numbers, got {prior[name]!r}", name
            ) from None
        # prior_df may be Inf (normal prior) and prior_scale Inf (flat prior, as arm allows);
        # everything else must be finite
        may_be_inf = name.startswith(("prior_df", "prior_scale"))
        for v in vals:
            if math.isnan(v) or v <= 0 or (math.isinf(v) and not may_be_inf):
                raise ArgumentError(f"{name} must be > 0 (and finite), got {v!r}", name)
    for name in ("prior_mean", "prior_mean_for_intercept"):
        if name in prior and prior[name] is not None:
            try:
                vals = list(_values(prior[name]))
            except (TypeError, ValueError):
                raise ArgumentError(f"{name} must be numeric, got {prior[name]!r}", name) from None
            if not all(math.isfinite(v) for v in vals):
                raise ArgumentError(f"{name} must be finite, got {prior[name]!r}", name)
    if "maxit" in prior:
        maxit = prior["maxit"]
        if isinstance(maxit, bool) or not isinstance(maxit, (int, np.integer)) or maxit < 1:
            raise ArgumentError(f"maxit must be an integer >= 1, got {maxit!r}", "maxit")


def named_arguments(fn: F) -> F:
    """Public calls: an unknown keyword (e.g. lme4's `REML=`), a missing argument or one given
    twice is an ArgumentError naming it (with the closest known name), not a raw TypeError."""
    sig = inspect.signature(fn)
    known = [name for name in sig.parameters if name != "self" and not name.startswith("_")]

    @functools.wraps(fn)
    def checked(*args: Any, **kwargs: Any) -> Any:
        try:
            sig.bind(*args, **kwargs)
        except TypeError as exc:
            raise _call_error(fn.__name__, known, kwargs, exc) from None
        return fn(*args, **kwargs)

    return checked  # type: ignore[return-value]


def _call_error(fname: str, known: list[str], kwargs: dict[str, Any], exc: TypeError) -> Exception:
    unknown = [k for k in kwargs if k not in known]
    if not unknown:
        return ArgumentError(f"{fname}(): {exc}", None)
    key = unknown[0]
    close = difflib.get_close_matches(key.lower().replace(".", "_"), known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ArgumentError(
        f"{fname}() has no argument {key!r}{hint} (arguments: {', '.join(known)})", key
    )
