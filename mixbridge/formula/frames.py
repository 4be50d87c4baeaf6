"""Model frames: formula + DataFrame -> response, X, random-effects terms (the engines' input).

Pipeline (as lme4's `lFormula` and arm's `bayesglm`):
    validate + parse -> split fixed / random parts -> expand terms -> evaluate every variable on all
    rows -> na.omit over all of them (and weights, offset) -> drop unused levels -> model matrices
    -> (lmer/glmer) drop rank-deficient columns -> sort random-effects terms by number of levels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from mixbridge.errors import ArgumentError, DataError
from mixbridge.formula.evaluate import (
    Factor,
    Numeric,
    Transforms,
    Value,
    as_grouping_factor,
    evaluate,
    evaluate_grouping,
    interaction_factor,
    numeric,
)
from mixbridge.formula.levels import IntegerLevels
from mixbridge.formula.model_matrix import (
    Design,
    assemble,
    clearly_full_rank_gram,
    column_gram,
    rank_keep,
)
from mixbridge.formula.parse import Call, Node, Paren, deparse
from mixbridge.formula.terms import BarTerm, TermsInfo, expand_bars, expand_terms, split_bars
from mixbridge.formula.validate import parse_and_validate
from mixbridge.results import Message

RANK_TOL = 1e-7  # lme4's chkRank.drop.cols default tolerance
_ROW_BLOCK = 1 << 16  # rows per block where a loop avoids n-vector temporaries


# ---------------------------------------------------------------------------------------------
# Result types


@dataclass
class _Part:
    """A bar-free one-sided formula (fixed part or the left side of a bar) with its state."""

    info: TermsInfo
    design: Design
    state: Transforms

    def values(self, data: pd.DataFrame, which: list[int] | None = None) -> dict[int, Value]:
        state = Transforms(self.state.params, fitting=False)
        out: dict[int, Value] = {}
        needed = which if which is not None else sorted({v for t in self.info.terms for v in t})
        for i in needed:
            val = evaluate(self.info.variables[i], data, state)
            if i in self.design.levels:
                name = self.info.var_names[i]
                if not isinstance(val, Factor):
                    raise DataError(
                        f"variable {name!r} was a factor when fitting but is numeric in newdata",
                        column=name,
                    )
                val = val.recode(self.design.levels[i], name)
            elif isinstance(val, Factor):
                name = self.info.var_names[i]
                if val.kind != "logical":
                    raise DataError(
                        f"variable {name!r} was numeric when fitting but is a factor in newdata",
                        column=name,
                    )
                # a logical where a number was fitted: R's arithmetic coercion to 0/1
                is_true = np.asarray(val.levels + ["NA"], dtype=object)[val.codes] == "TRUE"
                val = Numeric(np.where(val.codes < 0, np.nan, is_true.astype(float)))
            out[i] = val
        return out

    def matrix(self, data: pd.DataFrame) -> np.ndarray:
        return self.design.matrix(self.values(data), len(data))


@dataclass
class ReTerm:
    """One random-effects term `(expr | group)` in lme4's order."""

    group: str
    codes: np.ndarray
    levels: list[str]
    Z: np.ndarray
    cnames: list[str]
    _group_nodes: tuple[Node, ...] = field(default=(), repr=False)
    _lhs: _Part | None = field(default=None, repr=False)
    _state: Transforms | None = field(default=None, repr=False)
    counts: np.ndarray | None = field(default=None, repr=False)  # rows per level, if known

    @property
    def n_levels(self) -> int:
        return len(self.levels)

    @property
    def p(self) -> int:
        return self.Z.shape[1]

    def codes_for(self, newdata: pd.DataFrame) -> np.ndarray:
        """0-based level index of each row of newdata; -1 for unseen or missing levels."""
        state = Transforms(self._state.params if self._state else {}, fitting=False)
        parts = [as_grouping_factor(evaluate(g, newdata, state)) for g in self._group_nodes]
        # newdata's own (observed) levels, then one lookup per distinct level, not per row
        g = parts[0] if len(parts) == 1 else interaction_factor(parts)
        index = {lab: k for k, lab in enumerate(self.levels)}
        lookup = np.array([index.get(lab, -1) for lab in g.levels] + [-1], dtype=np.int32)
        return lookup[np.where(g.codes >= 0, g.codes, len(g.levels))]

    def Z_for(self, newdata: pd.DataFrame) -> np.ndarray:  # noqa: N802 - lme4's name
        assert self._lhs is not None
        return self._lhs.matrix(newdata)

    @property
    def lhs_labels(self) -> list[str] | None:
        """The term's left side as a re.form formula spells it: "(Intercept)" (if it has one)
        and its term labels (None for a term built without its formula)."""
        if self._lhs is None:
            return None
        return ["(Intercept)"] * bool(self._lhs.info.intercept) + self._lhs.info.labels


@dataclass
class _Common:
    formula: str
    response_name: str
    y: np.ndarray
    n_trials: np.ndarray | None
    weights: np.ndarray
    offset: np.ndarray
    x_names: list[str]
    messages: list[Message]
    row_index: pd.Index
    family: str | None

    @property
    def n(self) -> int:
        return int(self.y.shape[0])

    @property
    def p(self) -> int:
        return len(self.x_names)


@dataclass
class MixedTerms(_Common):
    """Everything an lmer/glmer engine needs, with lme4's names and ordering."""

    dropped_columns: list[str] = field(default_factory=list)
    reterms: list[ReTerm] = field(default_factory=list)
    # X's columns (None: the intercept) when X is intercept + plain numeric variables; built
    # with lazy_x=True, the n x p matrix X is then assembled from them on first use (the O(G)
    # lmer path reads the columns and never needs it)
    x_columns: list[np.ndarray | None] | None = field(default=None, repr=False)
    x_gram: np.ndarray | None = field(default=None, repr=False)  # X'X of x_columns (rank check)
    _x: np.ndarray | None = field(default=None, repr=False)
    _fixed: _Part | None = field(default=None, repr=False)
    _keep: np.ndarray | None = field(default=None, repr=False)

    @property
    def X(self) -> np.ndarray:  # noqa: N802 - the model matrix's name
        """X (n, p) with the dropped columns removed; assembled from `x_columns` on first use
        when the terms were built with lazy_x=True (`x_built` says whether that happened)."""
        if self._x is None:
            assert self.x_columns is not None
            self._x = assemble(self.x_columns, self.n)
        return self._x

    @property
    def x_built(self) -> bool:
        """Whether the n x p matrix X exists (False: only `x_columns` so far)."""
        return self._x is not None

    def x_times(self, beta: np.ndarray) -> np.ndarray:
        """Xβ, from the columns when X was never built (block by block: no n-vector
        temporaries)."""
        if self._x is not None or self.x_columns is None:
            return self.X @ beta
        out = np.empty(self.n)
        for a in range(0, self.n, _ROW_BLOCK):
            seg = out[a : a + _ROW_BLOCK]
            seg.fill(0.0)
            for c, b in zip(self.x_columns, np.asarray(beta, dtype=float), strict=True):
                seg += b if c is None else b * c[a : a + _ROW_BLOCK]
        return out

    def fixed_matrix(self, newdata: pd.DataFrame) -> np.ndarray:
        """X for newdata with the fit's levels, contrasts and transforms; columns = x_names."""
        assert self._fixed is not None and self._keep is not None
        return self._fixed.matrix(newdata)[:, self._keep]

    def full_fixed_matrix(self, newdata: pd.DataFrame) -> np.ndarray:
        """`fixed_matrix` with every column of the fixed part (`full_x_names`), before lme4's
        rank check dropped any (out-of-core data check the rank on their pooled X'X)."""
        assert self._fixed is not None
        return self._fixed.matrix(newdata)

    @property
    def full_x_names(self) -> list[str]:
        assert self._fixed is not None
        return list(self._fixed.design.names)

    def fixed_layout(self) -> tuple[Any, Any]:
        """(TermsInfo, Design) of the fixed part: R's terms and codings (lmerTest's anova)."""
        assert self._fixed is not None
        return self._fixed.info, self._fixed.design

    def fixed_factor_levels(self) -> dict[str, list[str]]:
        """The level labels of every factor of the fixed part, by variable name."""
        assert self._fixed is not None
        names = self._fixed.info.var_names
        return {names[i]: list(labels) for i, labels in self._fixed.design.levels.items()}

    def offset_for(self, newdata: pd.DataFrame) -> np.ndarray:
        """Sum of the formula's offset() terms on newdata.

        As lme4's predict.merMod with newdata: the offset= argument of the fit is not added.
        """
        assert self._fixed is not None
        return _formula_offset(self._fixed.info, newdata, self._fixed.state)


@dataclass
class GLMTerms(_Common):
    """Everything a bayesglm engine needs: terms in formula order, all columns kept."""

    X: np.ndarray  # built with sparse=True: scipy.sparse.csc_matrix
    has_intercept: bool = True
    _fixed: _Part | None = field(default=None, repr=False)

    def fixed_matrix(self, newdata: pd.DataFrame) -> np.ndarray:
        assert self._fixed is not None
        return self._fixed.matrix(newdata)

    def offset_for(self, newdata: pd.DataFrame) -> np.ndarray:
        assert self._fixed is not None
        return _formula_offset(self._fixed.info, newdata, self._fixed.state)


# ---------------------------------------------------------------------------------------------
# Building


def build_mixed_terms(
    formula: str,
    data: pd.DataFrame,
    *,
    weights: Any = None,
    offset: Any = None,
    model: str = "lmer",
    family: str | None = None,
    frame: ModelFrame | None = None,
    lazy_x: bool = False,
) -> MixedTerms:
    """lme4's lFormula/glFormula: response, X (rank-deficient columns dropped), reterms.

    `frame`: the already evaluated model frame of this formula and data (from the input checks).
    `lazy_x`: when X is intercept + plain numeric columns of full rank, give the columns
    (`x_columns`) and assemble X only when it is first read.
    """
    if frame is None:
        frame = ModelFrame(formula, data, model, family, weights, offset, keep_order=False)
        frame.evaluate(with_bars=True)
        frame.na_omit()
    fixed = frame.fixed_part(contrasts="treatment", drop_unused=True)
    names = fixed.design.names
    columns = fixed.design.column_views(frame.fixed_values) if lazy_x else None
    x_gram = None
    if columns is not None:
        x_gram = column_gram(columns, frame.n)
        if not np.all(np.isfinite(x_gram)):  # finite X'X: finite columns (one pass for both)
            _check_finite_columns(columns, names, "fixed-effects model matrix")
        if not clearly_full_rank_gram(x_gram, RANK_TOL):
            columns = x_gram = None  # the exact rank emulation needs X
    if columns is not None:
        x_full, keep = None, np.arange(len(names))
    else:
        x_full = fixed.design.matrix(frame.fixed_values, frame.n)
        _check_finite(x_full, names, "fixed-effects model matrix")
        keep = rank_keep(x_full, RANK_TOL)
    kept = set(keep.tolist())
    dropped = [names[j] for j in range(len(names)) if j not in kept]
    if dropped:
        k = len(dropped)
        s = "s" if k > 1 else ""
        frame.messages.append(
            Message(
                kind="message",
                text=f"fixed-effect model matrix is rank deficient so dropping {k} column{s} / "
                f"coefficient{s}",
                origin="mixbridge",
                code="rank_deficient",
            )
        )
    y, n_trials, w = frame.response(shared_unit_weights=lazy_x)  # read-only ones: no n-vector
    reterms = frame.reterms()
    return MixedTerms(
        formula=formula,
        response_name=frame.response_name,
        y=y,
        n_trials=n_trials,
        weights=w,
        offset=frame.total_offset(),
        _x=x_full
        if x_full is None or len(keep) == len(names)
        else np.asfortranarray(x_full[:, keep]),
        x_names=[names[j] for j in keep],
        messages=frame.messages,
        row_index=frame.row_index,
        family=family,
        dropped_columns=dropped,
        reterms=reterms,
        x_columns=columns,
        x_gram=x_gram,
        _fixed=fixed,
        _keep=keep,
    )


def build_glm_terms(
    formula: str,
    data: pd.DataFrame,
    *,
    weights: Any = None,
    offset: Any = None,
    family: str = "gaussian",
    drop_baseline: bool = True,
    sparse: bool | str = False,
    sparse_min_levels: int = 500,
    frame: ModelFrame | None = None,
) -> GLMTerms:
    """arm's bayesglm frame: keep.order=TRUE terms, drop.baseline contrasts, no column dropping.

    Like arm (which rebuilds X with model.frame's default drop.unused.levels=FALSE), categories of
    a pandas Categorical that are absent from the rows used keep their (all-zero) columns.
    sparse=True: X is a scipy.sparse CSC matrix with the same values and names (a factor with G
    levels then costs O(n) memory instead of n x G). sparse="auto": sparse when a factor used in
    the model has at least `sparse_min_levels` levels (decided after evaluation, no extra pass).
    `frame`: the already evaluated model frame of this formula and data (from the input checks).
    """
    if frame is None:
        frame = ModelFrame(formula, data, "bayesglm", family, weights, offset, keep_order=True)
        frame.evaluate(with_bars=False)
        frame.na_omit()
    contrasts = "treatment" if drop_baseline else "bayes"
    fixed = frame.fixed_part(contrasts=contrasts, drop_unused=False)
    if sparse == "auto":
        sparse = any(len(lv) >= sparse_min_levels for lv in fixed.design.levels.values())
    elif not isinstance(sparse, bool):
        raise ArgumentError(f"sparse must be True, False or 'auto', got {sparse!r}", "sparse")
    if sparse:
        x = fixed.design.sparse_matrix(frame.fixed_values, frame.n)
        _check_finite_sparse(x, fixed.design.names, "model matrix")
    else:
        x = np.ascontiguousarray(fixed.design.matrix(frame.fixed_values, frame.n))
        _check_finite(x, fixed.design.names, "model matrix")
    y, n_trials, w = frame.response()
    return GLMTerms(
        formula=formula,
        response_name=frame.response_name,
        y=y,
        n_trials=n_trials,
        weights=w,
        offset=frame.total_offset(),
        X=x,
        x_names=list(fixed.design.names),
        messages=frame.messages,
        row_index=frame.row_index,
        family=family,
        has_intercept=fixed.info.intercept,
        _fixed=fixed,
    )


def _check_finite(x: np.ndarray, names: list[str], what: str) -> None:
    # a column's sum is finite unless the column has an Inf/NaN (or its sum overflows: those
    # few columns are then checked element by element)
    with np.errstate(over="ignore", invalid="ignore"):
        suspect = np.flatnonzero(~np.isfinite(x.sum(axis=0)))
    bad = np.zeros(x.shape[1], dtype=bool)
    for j in suspect:
        bad[j] = not np.isfinite(x[:, j]).all()
    if bad.any():
        cols = [names[j] for j in np.flatnonzero(bad)]
        raise DataError(
            f"column(s) {', '.join(map(repr, cols))} of the {what} have infinite values "
            "(e.g. log(0)); transform or filter the data",
            column=cols[0],
        )


def _check_finite_columns(columns: list[np.ndarray | None], names: list[str], what: str) -> None:
    for c, name in zip(columns, names, strict=True):
        if c is not None and not math.isfinite(float(np.sum(c))) and not np.isfinite(c).all():
            raise DataError(
                f"column(s) {name!r} of the {what} have infinite values (e.g. log(0)); "
                "transform or filter the data",
                column=name,
            )


def _check_finite_sparse(x: sp.csc_matrix, names: list[str], what: str) -> None:
    bad = ~np.isfinite(x.data)
    if bad.any():
        cols = np.unique(np.repeat(np.arange(x.shape[1]), np.diff(x.indptr))[bad])
        raise DataError(
            f"column(s) {', '.join(repr(names[j]) for j in cols)} of the {what} have infinite "
            "values (e.g. log(0)); transform or filter the data",
            column=names[cols[0]],
        )


def _formula_offset(info: TermsInfo, data: pd.DataFrame, state: Transforms) -> np.ndarray:
    total = np.zeros(len(data))
    st = Transforms(state.params, fitting=False)
    for node in info.offsets:
        assert isinstance(node, Call)
        total = total + numeric(node.args[0], data, st)
    return total


def _is_binomial(family: str | None) -> bool:
    return family is not None and str(family).lower() in ("binomial", "quasibinomial")


class ModelFrame:
    """The evaluated model frame (R's model.frame): every variable of the formula evaluated once
    on all rows, then NA rows dropped. The input checks (`mixbridge.checks.check_inputs`) build it
    and hand it to the Python engine, so a fit evaluates and factorizes each column only once."""

    def __init__(
        self,
        formula: str,
        data: pd.DataFrame,
        model: str,
        family: str | None,
        weights: Any,
        offset: Any,
        keep_order: bool,
    ) -> None:
        if not isinstance(data, pd.DataFrame):
            raise DataError(f"data must be a pandas DataFrame, got {type(data).__name__}")
        self.formula = formula
        self.data = data
        self.model = model
        self.family = family
        self.tree = parse_and_validate(formula, data.columns, model)
        fixed_rhs, bars = split_bars(self.tree.rhs)
        self.bars: list[BarTerm] = expand_bars(bars)
        self.info = expand_terms(fixed_rhs, keep_order=keep_order)
        self.state = Transforms()
        self.lhs = self.tree.lhs
        assert self.lhs is not None
        self.response_name = deparse(self.lhs)
        self.weights_in = _argument_vector(weights, data, "weights")
        self.offset_in = _argument_vector(offset, data, "offset")
        self.messages: list[Message] = []

    # -- evaluation on all rows ------------------------------------------------------------
    def evaluate(self, with_bars: bool) -> None:
        data, st = self.data, self.state
        lhs = self.lhs
        while isinstance(lhs, Paren):
            lhs = lhs.expr
        self.cbind = isinstance(lhs, Call) and lhs.fn == "cbind"
        if self.cbind:
            assert isinstance(lhs, Call)
            self.resp: list[Value] = [Numeric(numeric(a, data, st)) for a in lhs.args]
        else:
            self.resp = [evaluate(lhs, data, st)]
        self.fixed_all = {i: evaluate(v, data, st) for i, v in enumerate(self.info.variables)}
        self.bar_infos: list[TermsInfo] = []
        self.bar_states: list[Transforms] = []
        self.bar_values: list[dict[int, Value]] = []
        self.group_values: list[list[Value]] = []
        if with_bars:
            for bar in self.bars:
                info = expand_terms(bar.lhs)
                bst = Transforms()
                self.bar_infos.append(info)
                self.bar_states.append(bst)
                self.bar_values.append(
                    {i: evaluate(v, data, bst) for i, v in enumerate(info.variables)}
                )
                self.group_values.append([evaluate_grouping(g, data, st) for g in bar.group])

    def na_omit(self) -> None:
        n = len(self.data)
        if n == 0:
            raise DataError("data has 0 rows")
        na = np.zeros(n, dtype=bool)
        for v in [*self.resp, *self.fixed_all.values()]:
            if not (isinstance(v, Numeric) and v.all_finite()):  # a finite column has no NA
                na |= v.na_mask()
        for vals in self.bar_values:
            for v in vals.values():
                if not (isinstance(v, Numeric) and v.all_finite()):
                    na |= v.na_mask()
        for gs in self.group_values:
            for v in gs:
                if not (isinstance(v, Factor) and v.counts is not None):  # ids: no NA
                    na |= v.na_mask()
        for arr in (self.weights_in, self.offset_in):
            if arr is not None:
                na |= np.isnan(arr)
        if not na.any():  # no NA: the evaluated vectors are used as they are (no copies)
            self.n = n
            self._group_factors: dict[str, Factor] = {}
            self.weights, self.offset = self.weights_in, self.offset_in
            self.row_index = self.data.index
            return
        keep = np.flatnonzero(~na)
        if len(keep) == 0:
            raise DataError(
                f"all {n} rows have missing values in the variables used by {self.formula!r} "
                "(after na.omit no rows are left)"
            )
        if len(keep) < n:
            k = n - len(keep)
            self.messages.append(
                Message(
                    kind="message",
                    text=f"{k} row{'s' if k > 1 else ''} with missing values dropped (na.omit)",
                    origin="mixbridge",
                    code="na_omit",
                )
            )
        self.n = len(keep)
        self._group_factors = {}
        self.weights = None if self.weights_in is None else self.weights_in[keep]
        self.offset = None if self.offset_in is None else self.offset_in[keep]
        self.row_index = self.data.index[keep]
        self.resp = [v.take(keep) for v in self.resp]
        self.fixed_all = {i: v.take(keep) for i, v in self.fixed_all.items()}
        self.bar_values = [{i: v.take(keep) for i, v in d.items()} for d in self.bar_values]
        self.group_values = [[v.take(keep) for v in gs] for gs in self.group_values]

    # -- parts -----------------------------------------------------------------------------
    def fixed_part(self, contrasts: str, drop_unused: bool) -> _Part:
        vals = {i: _drop_levels(v, drop_unused) for i, v in self.fixed_all.items()}
        self.fixed_values = vals
        design = Design.from_values(self.info, vals, contrasts)
        return _Part(self.info, design, self.state)

    def total_offset(self) -> np.ndarray:
        if not self.info.offsets and self.offset is None:
            # no offset: read-only zeros that occupy no memory (a fit never writes into it)
            return np.broadcast_to(0.0, (self.n,))
        total = np.zeros(self.n)
        for node in self.info.offsets:
            i = self.info.var_names.index(deparse(node))
            val = self.fixed_all[i]
            assert isinstance(val, Numeric)
            total = total + val.values
        if self.offset is not None:
            total = total + self.offset
        if not np.isfinite(total).all():
            raise DataError("offset has infinite values (e.g. log(0))", column="offset")
        return total

    def response(
        self, shared_unit_weights: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """(y, binomial trials or None, prior weights). `shared_unit_weights`: without weights,
        return read-only broadcast ones (no n-vector) for consumers that never write into them."""
        name = self.response_name
        if self.weights is not None:
            w = np.asarray(self.weights, dtype=float)
        elif shared_unit_weights and not self.cbind:
            w = np.broadcast_to(1.0, (self.n,))
        else:
            w = np.ones(self.n)
        if self.cbind:
            s, f = (v.values for v in self.resp)  # type: ignore[union-attr]
            trials = s + f
            with np.errstate(invalid="ignore", divide="ignore"):
                y = np.where(trials == 0, 0.0, s / np.where(trials == 0, 1.0, trials))
            return y, trials, w * trials
        val = self.resp[0]
        if isinstance(val, Factor):
            if val.kind == "logical":
                return (np.asarray(val.levels)[val.codes] == "TRUE").astype(float), None, w
            if val.kind == "character" or not _is_binomial(self.family):
                what = "a string" if val.kind == "character" else "a factor"
                hint = (
                    "; for a binomial response use 0/1, bool, a two-level pandas Categorical "
                    "or cbind(successes, failures)"
                    if _is_binomial(self.family)
                    else "; the response must be numeric"
                )
                raise DataError(f"response {name!r} is {what} column{hint}", column=name)
            used = val.drop_unused()
            return (used.codes != 0).astype(float), None, w
        y = val.values
        if y.ndim != 1:
            raise DataError(f"response {name!r} must be a single column", column=name)
        if not val.all_finite():  # the sum na.omit took (NaN rows are gone by now)
            if not np.isfinite(y).all():
                raise DataError(f"response {name!r} has infinite values", column=name)
        return np.asarray(y, dtype=float), None, w

    def group_factor(self, k: int) -> Factor:
        """The grouping factor of bar `k` on the rows used, unused levels dropped (computed once
        per factor: `(x || g)` bars and the input checks share it)."""
        bar = self.bars[k]
        g = self._group_factors.get(bar.group_name)
        if g is None:
            factors = [_drop_levels(as_grouping_factor(v), True) for v in self.group_values[k]]
            g = factors[0] if len(factors) == 1 else interaction_factor(factors)
            g = self._group_factors[bar.group_name] = g.drop_unused()
        return g

    def reterms(self) -> list[ReTerm]:
        out: list[ReTerm] = []
        for k, (bar, info, bst, vals) in enumerate(
            zip(self.bars, self.bar_infos, self.bar_states, self.bar_values, strict=True)
        ):
            vals = {i: _drop_levels(v, True) for i, v in vals.items()}
            design = Design.from_values(info, vals, "treatment")
            if design.names == ["(Intercept)"]:  # (1 | g): read-only ones, no n-vector
                z = np.broadcast_to(1.0, (self.n, 1))
            else:
                z = design.matrix(vals, self.n)
                _check_finite(z, design.names, f"random-effects model matrix of ({bar.group_name})")
            g = self.group_factor(k)
            out.append(
                ReTerm(
                    group=bar.group_name,
                    codes=g.codes.astype(np.int32, copy=False),
                    levels=g.levels if isinstance(g.levels, IntegerLevels) else list(g.levels),
                    Z=z,
                    cnames=list(design.names),
                    _group_nodes=bar.group,
                    _lhs=_Part(info, design, bst),
                    _state=self.state,
                    counts=g.counts,
                )
            )
        # lme4 mkReTrms: reorder only if some later term has more levels; ties then reverse
        nl = [t.n_levels for t in out]
        if any(b > a for a, b in zip(nl, nl[1:], strict=False)):
            order = sorted(range(len(out)), key=lambda k: nl[k])  # stable, like order()
            out = [out[k] for k in reversed(order)]
        return out


def _drop_levels(val: Value, drop_unused: bool) -> Value:
    """Levels as R's model.matrix sees them: a character variable keeps the values present, a
    factor its levels (the present ones if drop_unused, as lme4); a logical always has FALSE and
    TRUE (R's `contrasts<-` makes it factor(x, levels = c(FALSE, TRUE))), so an all-TRUE I(x > 0)
    gives a TRUE column equal to the intercept, which lme4 drops, instead of an error."""
    if not isinstance(val, Factor) or val.kind == "logical":
        return val
    if drop_unused or val.kind == "character":
        return val.drop_unused()
    return val


def _argument_vector(arg: Any, data: pd.DataFrame, what: str) -> np.ndarray | None:
    """weights=/offset= as a float vector over the rows of data (NaN = missing)."""
    if arg is None:
        return None
    if isinstance(arg, str):
        if arg not in data.columns:
            raise DataError(
                f"{what}={arg!r} is not a column of data; available: "
                f"{', '.join(map(str, list(data.columns)[:30]))}",
                column=arg,
            )
        col = data[arg]
        if isinstance(col, pd.DataFrame):
            raise DataError(f"{what} column {arg!r} is duplicated in data", column=arg)
        if not pd.api.types.is_numeric_dtype(col.dtype) or pd.api.types.is_bool_dtype(col.dtype):
            raise DataError(f"{what} column {arg!r} must be numeric", column=arg)
        return col.astype("float64").to_numpy(dtype=float, na_value=np.nan)
    try:
        arr = np.asarray(arg, dtype=float)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what} must be numeric ({exc})", column=what) from None
    if arr.ndim != 1:
        raise DataError(
            f"{what} must be a one-dimensional vector (one value per row), got an array of "
            f"shape {arr.shape}",
            column=what,
        )
    if len(arr) != len(data):
        raise DataError(
            f"{what} has {arr.size} value(s) but data has {len(data)} rows", column=what
        )
    return arr
