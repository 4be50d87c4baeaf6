"""The evaluated model frame (R's model.frame): every variable of a formula evaluated once on
all rows, NA rows dropped, then the fixed part, the response, the offsets and the random-effects
terms read from it (`frames` builds the engines' terms from these pieces).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mixbridge.errors import DataError
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
from mixbridge.formula.model_matrix import Design, check_finite
from mixbridge.formula.parse import Call, Paren, deparse
from mixbridge.formula.term_types import FormulaPart, ReTerm
from mixbridge.formula.terms import BarTerm, TermsInfo, expand_bars, expand_terms, split_bars
from mixbridge.formula.validate import parse_and_validate
from mixbridge.results import Message


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
    def fixed_part(self, contrasts: str, drop_unused: bool) -> FormulaPart:
        vals = {i: _drop_levels(v, drop_unused) for i, v in self.fixed_all.items()}
        self.fixed_values = vals
        design = Design.from_values(self.info, vals, contrasts)
        return FormulaPart(self.info, design, self.state)

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

    def response_finite(self) -> bool:
        """Whether `response()` proves y finite: a single numeric response, whose finiteness
        it checks (cbind proportions and factor codes are not covered)."""
        return not self.cbind and isinstance(self.resp[0], Numeric)

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
                check_finite(z, design.names, f"random-effects model matrix of ({bar.group_name})")
            g = self.group_factor(k)
            out.append(
                ReTerm(
                    group=bar.group_name,
                    codes=g.codes.astype(np.int32, copy=False),
                    levels=g.levels if isinstance(g.levels, IntegerLevels) else list(g.levels),
                    Z=z,
                    cnames=list(design.names),
                    _group_nodes=bar.group,
                    _lhs=FormulaPart(info, design, bst),
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
