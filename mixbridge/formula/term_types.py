"""The model terms the engines read (R's model frame and matrices, lme4's reTrms): `MixedTerms`
(lmer/glmer, lme4's names and order), `GLMTerms` (bayesglm), `ReTerm` (one `(expr | group)`
term) and `FormulaPart` (a one-sided formula with its coding, to build the same columns on new
data). Built by `frames.build_mixed_terms` / `frames.build_glm_terms` from a `ModelFrame`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    interaction_factor,
    numeric,
)
from mixbridge.formula.model_matrix import Design, assemble
from mixbridge.formula.parse import Call, Node
from mixbridge.formula.terms import TermsInfo
from mixbridge.results import Message

_ROW_BLOCK = 1 << 16  # rows per block where a loop avoids n-vector temporaries


@dataclass
class FormulaPart:
    """A bar-free one-sided formula (fixed part or the left side of a bar) with its state: its
    terms, its model-matrix coding and the transforms' parameters, so that the same columns can
    be built on new data (`matrix`)."""

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
    _lhs: FormulaPart | None = field(default=None, repr=False)
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
    # the y the model frame proved finite (a numeric response, in its one finiteness pass), so
    # that the engines' checks need not read it again; a y assigned later is checked afresh
    _finite_y: np.ndarray | None = field(default=None, repr=False)
    _x: np.ndarray | None = field(default=None, repr=False)
    _fixed: FormulaPart | None = field(default=None, repr=False)
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
    def response_finite(self) -> bool:
        """Whether y is known to be finite without reading it."""
        return self._finite_y is not None and self._finite_y is self.y

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
        return formula_offset(self._fixed.info, newdata, self._fixed.state)


@dataclass
class GLMTerms(_Common):
    """Everything a bayesglm engine needs: terms in formula order, all columns kept."""

    X: np.ndarray  # built with sparse=True: scipy.sparse.csc_matrix
    has_intercept: bool = True
    _fixed: FormulaPart | None = field(default=None, repr=False)

    def fixed_matrix(self, newdata: pd.DataFrame) -> np.ndarray:
        assert self._fixed is not None
        return self._fixed.matrix(newdata)

    def offset_for(self, newdata: pd.DataFrame) -> np.ndarray:
        assert self._fixed is not None
        return formula_offset(self._fixed.info, newdata, self._fixed.state)


def formula_offset(info: TermsInfo, data: pd.DataFrame, state: Transforms) -> np.ndarray:
    """The sum of the formula's offset() terms evaluated on `data` (with the fit's transforms)."""
    total = np.zeros(len(data))
    st = Transforms(state.params, fitting=False)
    for node in info.offsets:
        assert isinstance(node, Call)
        total = total + numeric(node.args[0], data, st)
    return total
