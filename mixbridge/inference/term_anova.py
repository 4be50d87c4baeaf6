"""lmerTest's anova(): one F test per fixed term, types 1, 2 and 3, Satterthwaite or KR df.

The contrasts per term are lmerTest's (`get_contrasts_type1/2/3`):
- type 1: rows of the Doolittle factor of X'X (sequential sums of squares);
- type 2: lmerTest's "unfolded" type 2: terms contained in no other term get their own columns
  (marginal), the others the Doolittle rows after moving the term and the terms containing it
  last;
- type 3: the full-rank dummy coding of every term (`~ 0 + term`) expressed in X's columns and
  orthogonalized against the terms containing it. With R's treatment contrasts, every such
  column is a signed sum of X's columns (1[f = baseline] = 1 − Σ the other indicators), so the
  expression is exact (R computes it as ginv(X)·rdX, the same numbers when X has the marginal
  terms); a model without them (e.g. `y ~ x:f`) is refused with a clear error.
Each contrast matrix then goes through the tester (`Satterthwaite.test_md` or
`KenwardRoger.test_md`), and the table has lmerTest's columns in snake_case.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats

from mixbridge.errors import ArgumentError
from mixbridge.inference.engine_tests import check_ddf, engine_tests

if TYPE_CHECKING:
    from mixbridge.results import MixedFit

COLUMNS = ["sum_sq", "mean_sq", "num_df", "den_df", "f_value", "p_value"]


@dataclass(frozen=True)
class FixedTermsInfo:
    """The fixed part as lmerTest's anova sees it."""

    labels: list[str]  # term labels, R's names
    term_vars: list[tuple[str, ...]]  # variables of each term, in the term's order
    factor_levels: dict[str, list[str]]  # factor variables -> levels (others are numeric)
    intercept: bool
    x_names: list[str]
    assign: list[int]  # per column of X: 0 the intercept, k the k-th term
    xtx: np.ndarray  # X'X (unweighted, as model.matrix)


def fixed_terms_info(terms: Any) -> FixedTermsInfo:
    """From the formula module's MixedTerms (lmer's X)."""
    if terms.dropped_columns:
        raise NotImplementedError(
            "anova(): X is rank deficient (lme4 dropped "
            f"{', '.join(terms.dropped_columns)}); lmerTest's contrasts need a full-rank X"
        )
    info, design = terms.fixed_layout()
    if design.contrasts != "treatment" or any(design.ordered.values()):
        raise NotImplementedError("anova(): only treatment contrasts of unordered factors")
    names = info.var_names
    levels = {names[v]: list(lv) for v, lv in design.levels.items()}
    assign = [0] if info.intercept else []
    for k, (term, code) in enumerate(zip(info.terms, design.codes, strict=True), start=1):
        width = 1
        for v in term:
            width *= (len(design.levels[v]) - (code[v] == 1)) if v in design.levels else 1
        assign += [k] * width
    x_names = list(terms.x_names)
    if len(assign) != len(x_names):
        raise NotImplementedError("anova(): matrix-valued terms are not supported")
    X = np.asarray(terms.X, dtype=float)  # noqa: N806
    return FixedTermsInfo(
        labels=list(info.labels),
        term_vars=[tuple(names[v] for v in sorted(t)) for t in info.terms],
        factor_levels=levels,
        intercept=bool(info.intercept),
        x_names=x_names,
        assign=assign,
        xtx=X.T @ X,
    )


# ---------------------------------------------------------------------------------------------
# Contrasts


def doolittle_l(x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """The unit lower-triangular factor of x = LU without pivoting (lmerTest's doolittle, with
    its eps: pivots below it give zero columns, entries below it are zeroed)."""
    n = x.shape[0]
    L = np.eye(n)  # noqa: N806
    U = np.zeros((n, n))  # noqa: N806
    for i in range(n):
        U[i, :] = x[i, :] - L[i, :i] @ U[:i, :]
        if i + 1 < n:
            col = x[i + 1 :, i] - L[i + 1 :, :i] @ U[:i, i]
            L[i + 1 :, i] = 0.0 if abs(U[i, i]) < eps else col / U[i, i]
    L[np.abs(L) < eps] = 0.0
    return L


def _contained(ti: FixedTermsInfo) -> dict[str, list[str]]:
    """lmerTest's containment: the terms that contain each term (a strict superset of its
    variables with the same numeric variables)."""
    sets = {lab: set(v) for lab, v in zip(ti.labels, ti.term_vars, strict=True)}
    nums = {lab: {x for x in s if x not in ti.factor_levels} for lab, s in sets.items()}
    return {
        a: [b for b in ti.labels if sets[a] < sets[b] and nums[a] == nums[b]] for a in ti.labels
    }


def _cols(ti: FixedTermsInfo) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {lab: [] for lab in ti.labels}
    for j, k in enumerate(ti.assign):
        if k > 0:
            out[ti.labels[k - 1]].append(j)
    return out


def contrasts_type1(ti: FixedTermsInfo) -> dict[str, np.ndarray]:
    p = len(ti.x_names)
    L = np.eye(1) if p == 1 else doolittle_l(ti.xtx).T  # noqa: N806
    return {lab: L[cols] for lab, cols in _cols(ti).items()}


def contrasts_type2(ti: FixedTermsInfo) -> dict[str, np.ndarray]:
    if len(ti.x_names) <= 1 or len(ti.labels) <= 1:
        return contrasts_type1(ti)
    cols = _cols(ti)
    cont = _contained(ti)
    p = len(ti.x_names)
    out = {}
    for term in ti.labels:
        if not cont[term]:  # marginal
            out[term] = np.eye(p)[cols[term]]
            continue
        moved = [j for t in [term, *cont[term]] for j in cols[t]]
        order = [j for j in range(p) if j not in moved] + moved
        lc = doolittle_l(ti.xtx[np.ix_(order, order)]).T
        col_term = [ti.assign[j] for j in order]
        rows = [i for i, k in enumerate(col_term) if k > 0 and ti.labels[k - 1] == term]
        L = np.zeros((len(rows), p))  # noqa: N806
        L[:, order] = lc[rows]
        out[term] = L
    return out


def _zapsmall(x: np.ndarray, digits: int = 7) -> np.ndarray:
    mx = float(np.max(np.abs(x))) if x.size else 0.0
    d = max(0, digits - math.ceil(math.log10(mx))) if mx > 0 else digits
    return np.round(x, d)


def _rdx_in_x(ti: FixedTermsInfo) -> tuple[np.ndarray, list[str], dict[str, list[int]]]:
    """Columns of lmerTest's rdX (per term `~ 0 + term`, full dummy coding; the intercept
    first) as coefficients on X's columns (p × m), their names and each term's rdX columns."""
    index = {name: j for j, name in enumerate(ti.x_names)}
    columns: list[np.ndarray] = []
    names: list[str] = []
    per_term: dict[str, list[int]] = {}
    if ti.intercept:
        e = np.zeros(len(ti.x_names))
        e[index["(Intercept)"]] = 1.0
        columns.append(e)
        names.append("(Intercept)")

    def expand(parts: list[tuple[str, str | None]], lab: str) -> dict[str, float]:
        """x_num · Π_f 1[f = l_f] (parts: (variable, level or None for numerics)) on X's
        columns: the column itself when X has it (full coding), else the first factor at its
        baseline expanded as 1 − Σ_{m ≠ base} 1[f = m] (treatment coding)."""
        name = ":".join(v + (lv or "") for v, lv in parts) or "(Intercept)"
        if name in index:
            return {name: 1.0}
        for i, (v, lv) in enumerate(parts):
            if lv is not None and lv == ti.factor_levels[v][0]:
                out = dict(expand(parts[:i] + parts[i + 1 :], lab))
                for m in ti.factor_levels[v][1:]:
                    sub = expand(parts[:i] + [(v, m)] + parts[i + 1 :], lab)
                    for k, c in sub.items():
                        out[k] = out.get(k, 0.0) - c
                return out
        raise NotImplementedError(
            f"anova(type=3): term {lab!r} needs the column {name!r} of its marginal terms in X "
            "(lmerTest projects it with ginv(X)); add the marginal terms"
        )

    for lab, tv in zip(ti.labels, ti.term_vars, strict=True):
        facs = [v for v in tv if v in ti.factor_levels]
        per_term[lab] = []
        for combo in itertools.product(*(ti.factor_levels[f] for f in facs)):
            level = dict(zip(facs, combo, strict=True))
            col = np.zeros(len(ti.x_names))
            for k, c in expand([(v, level.get(v)) for v in tv], lab).items():
                col[index[k]] += c
            per_term[lab].append(len(columns))
            columns.append(col)
            names.append(":".join(v + level[v] if v in level else v for v in tv))
    return np.array(columns).T, names, per_term


def contrasts_type3(ti: FixedTermsInfo) -> dict[str, np.ndarray]:
    if len(ti.x_names) <= 1 or len(ti.labels) <= 1:
        return contrasts_type1(ti)
    coef, rd_names, _ = _rdx_in_x(ti)
    L = _zapsmall(coef.T)  # m × p: rows rdX columns, columns X's  # noqa: N806
    cols = _cols(ti)
    cont = _contained(ti)
    order = sorted(range(len(ti.labels)), key=lambda k: -len(ti.term_vars[k]))  # stable
    for k in order:
        term = ti.labels[k]
        if cont[term]:
            xc = L[:, [j for t in cont[term] for j in cols[t]]]
            y = L[:, cols[term]]
            beta, *_ = np.linalg.lstsq(xc, y, rcond=None)
            L[:, cols[term]] = _zapsmall(y - xc @ beta)
    pos = {name: i for i, name in enumerate(rd_names)}
    Lx = L[[pos[name] for name in ti.x_names]]  # noqa: N806 - rows named as X's columns
    out = {}
    for term in ti.labels:
        lt = Lx[:, cols[term]].T
        out[term] = lt[np.sum(np.abs(lt), axis=1) > 1e-8]
    return out


# ---------------------------------------------------------------------------------------------
# The table


def anova_table(
    ti: FixedTermsInfo,
    tester: Any,
    type: int,
    ddf: str,
    sigma: float,  # noqa: A002
) -> pd.DataFrame:
    """lmerTest's single_anova table from the contrasts and a tester."""
    contrasts = {1: contrasts_type1, 2: contrasts_type2, 3: contrasts_type3}[type](ti)
    rows = []
    for term in ti.labels:
        L = contrasts.get(term)  # noqa: N806
        if L is None or L.shape[0] == 0:
            rows.append([math.nan] * 6)
            continue
        res = tester.test_md(L)
        if ddf == "kenward-roger":
            f_value, ndf, den, f_u = res
        else:
            f_value, ndf, den = res
            f_u = f_value
        ms = f_u * sigma * sigma
        p = float(stats.f.sf(f_value, ndf, den))
        rows.append([ms * ndf, ms, float(ndf), den, f_value, p])
    return pd.DataFrame(rows, index=pd.Index(ti.labels), columns=COLUMNS)


def check_type(type: object) -> int:  # noqa: A002
    roman = {"I": 1, "II": 2, "III": 3}
    t = roman.get(type.upper(), type) if isinstance(type, str) else type
    try:
        t = int(t)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        t = 0
    if t not in (1, 2, 3):
        raise ArgumentError(f"type must be 1, 2 or 3 (or 'I', 'II', 'III'), got {type!r}", "type")
    return t


def term_anova(fit: MixedFit, type: object = 3, ddf: str = "satterthwaite") -> pd.DataFrame:  # noqa: A002
    """See `MixedFit.anova`."""
    t = check_type(type)
    method = check_ddf(ddf, ("satterthwaite", "kenward-roger"))
    if fit.model != "lmer":
        raise ArgumentError("anova() F tests apply to lmer fits (lmerTest)", "fit")
    return engine_tests(fit, method, "anova()")(fit, "anova", method, t)[COLUMNS]
