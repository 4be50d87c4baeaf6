"""lmer on a Dask DataFrame for models whose random part is a single `(1|g)` term.

The scalar random-intercept path (`lmm_scalar`, lme4_spec.md §2) needs only group-level sums, so
the fit is a map-reduce; nothing but O(G) aggregates leaves the workers:

    1. small aggregates: the sorted levels of g and of every factor in the fixed part
    2. a template model frame with every level (built by `mixbridge.formula`, on the client)
       fixes the columns, contrasts and level codes of X in every partition
    3. map: each partition -> (GroupStats, rows dropped as NA); reduce: a tree of additions
    4. rank check on the pooled X'WX (lme4's column dropping), then the 1-D fit on the client
    5. fitted values and residuals stay lazy Dask Series (a second pass when computed)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mixbridge.checks import (
    check_finite_offset,
    check_finite_values,
    check_flag,
    check_level_labels,
    check_response_spread,
    check_weight_values,
)
from mixbridge.control import check_control
from mixbridge.errors import ArgumentError, DataError, FormulaError
from mixbridge.formula.evaluate import Transforms, numeric
from mixbridge.formula.parse import deparse
from mixbridge.python_impl import lmm_scalar as ls
from mixbridge.results import Message, MixedFit

INSTALL_HINT = "pip install 'mixbridge[dask]'"
RANK_TOL = 1e-7  # lme4's chkRank.drop.cols tolerance
_FACTOR_CALLS = {"factor", "as.factor", "ordered", "interaction"}
_STATEFUL_CALLS = {"scale", "poly"}  # need full-data coefficients: not supported out of core


def _require_dask() -> Any:
    try:
        import dask
        import dask.dataframe  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"fitting a Dask DataFrame needs dask[dataframe]: {INSTALL_HINT}"
        ) from exc
    return dask


@dataclass
class _Spec:
    """Everything a partition needs to produce its rows of X, y, weights and group codes."""

    template: Any  # MixedTerms built on the template frame (levels, contrasts, transforms)
    response: Any  # the response's formula node
    used_columns: list[str]  # columns whose NA drops a row (na.omit)
    group: str
    group_values: np.ndarray  # raw values of g, in level order
    weights: str | None
    offset: str | None
    intercept: int | None


@dataclass
class _LevelTerm:
    """The slice of a random-effects term that the MixedFit builders in `output` read."""

    group: str
    levels: list[str]
    cnames: list[str]

    @property
    def n_levels(self) -> int:
        return len(self.levels)

    @property
    def p(self) -> int:
        return len(self.cnames)


def lmer_dask(
    formula: str,
    data: Any,
    *,
    reml: bool = True,
    weights: str | None = None,
    offset: str | None = None,
    control: dict[str, Any] | None = None,
) -> MixedFit:
    """Fit `lmer(formula, data, REML = reml)` on a Dask DataFrame (single `(1|g)` models).

    The input checks are the in-memory ones (`mixbridge.checks`), applied to each partition
    or to the aggregates. `control`: checked keys (`mixbridge.control`); `cond_var` is honoured,
    the optimizer settings are refused (the scalar path's 1-D search has none)."""
    dask = _require_dask()
    reml = check_flag(reml, "reml")
    ctrl = check_control("lmer", control, "python")
    keep_cond_var = ctrl.pop("cond_var", True)
    if ctrl:
        key = next(iter(ctrl))
        raise ArgumentError(
            f"control[{key!r}] is not available for a Dask DataFrame: the out-of-core fit runs "
            "the single (1 | g) term's one-dimensional search, which has no optimizer settings "
            "(only cond_var applies); compute() the data to fit it in memory with this setting",
            key,
        )
    for name, arg in (("weights", weights), ("offset", offset)):
        if arg is not None and not isinstance(arg, str):
            raise ArgumentError(
                f"with a Dask DataFrame, {name}= must be a column name, not {type(arg).__name__}",
                name,
            )
        if arg is not None and arg not in data.columns:
            raise DataError(f"{name}={arg!r} is not a column of data", column=arg)

    tree, group, response = _parse(formula, list(data.columns))
    used = _used_columns(tree, list(data.columns)) + [c for c in (weights, offset) if c]
    used = list(dict.fromkeys(used))
    factor_cols = _factor_columns(tree, data, group)

    # 1. small aggregates: global levels (computed on the workers, only the uniques come back)
    parts = data.to_delayed()
    level_cols = [group, *factor_cols]
    found = [dask.delayed(_partition_uniques)(p, used, level_cols) for p in parts]
    uniques = _tree(dask, found, _union_uniques).compute()
    group_values, levels = _level_order(group, uniques[0])
    check_level_labels(levels, group)
    if len(levels) < 2:
        raise DataError(f"grouping factor '{group}' must have > 1 sampled level", group)

    # 2. the template frame: one row per level of each fixed-effect factor
    clean = data[used].dropna()
    head = clean.head(50, npartitions=1)
    if len(head) == 0:  # the first partition is empty or all-NA: look further
        head = clean.head(50, npartitions=-1)
    if len(head) == 0:
        raise DataError(f"no rows without missing values in the variables of {formula!r}")
    template = _template(formula, head, dict(zip(factor_cols, uniques[1:], strict=True)), group)
    fixed_design = template._fixed.design
    for i, labels in fixed_design.levels.items():
        check_level_labels(labels, fixed_design.info.var_names[i])
    icol = template.x_names.index("(Intercept)") if "(Intercept)" in template.x_names else None
    spec = _Spec(
        template=template,
        response=tree.lhs,
        used_columns=used,
        group=group,
        group_values=group_values,
        weights=weights,
        offset=offset,
        intercept=icol,
    )

    # 3. one pass: map partitions to GroupStats, add them up in a tree
    shift = dask.delayed(_partition_shift)(parts[0], spec).compute()
    mapped = [dask.delayed(_partition_stats)(p, spec, shift) for p in parts]
    full_stats, n_dropped, y_range = _tree(dask, mapped, _combine).compute()
    if full_stats.n == 0:
        raise DataError(f"no rows without missing values in the variables of {formula!r}")
    check_response_spread(*y_range, full_stats.n, deparse(tree.lhs), "lmer")

    # 4. lme4's rank check on the pooled Gram matrix, then the 1-D fit
    names_full = list(template._fixed.design.names)
    keep = _rank_keep_gram(full_stats.gram_unshifted(), RANK_TOL)
    stats = full_stats.select(keep) if len(keep) < len(names_full) else full_stats
    messages: list[Message] = []
    if n_dropped:
        s = "s" if n_dropped > 1 else ""
        messages.append(
            Message(
                "message",
                f"{n_dropped} row{s} with missing values dropped (na.omit)",
                "mixbridge",
                code="na_omit",
            )
        )
    dropped = [names_full[j] for j in range(len(names_full)) if j not in set(keep)]
    if dropped:
        k = len(dropped)
        s = "s" if k > 1 else ""
        messages.append(
            Message(
                "message",
                f"fixed-effect model matrix is rank deficient so dropping {k} column{s} / "
                f"coefficient{s}",
                "mixbridge",
                code="rank_deficient",
            )
        )
    _check_dims(stats, group)
    res = ls.scalar_ri_fit(stats, bool(reml))
    names = [names_full[j] for j in keep]
    fitted = data.map_partitions(
        _partition_fitted, spec, keep, res.beta, res.b, False, meta=("fitted", "f8")
    )
    residuals = data.map_partitions(
        _partition_fitted, spec, keep, res.beta, res.b, True, meta=("residuals", "f8")
    )
    fit = _mixed_fit(formula, bool(reml), res, stats, names, group, levels, messages + res.messages)
    fit.fitted, fit.residuals = fitted, residuals
    if not keep_cond_var:
        fit.cond_var = {}
    fit.dropped_columns = dropped
    fit.extra.update(
        {
            "npartitions": len(parts),
            "aggregate_nbytes": _nbytes(full_stats),
            "backend": "dask",
        }
    )
    return fit


# ---------------------------------------------------------------------------------------------
# Formula inspection (client side)


def _parse(formula: str, columns: list[str]) -> tuple[Any, str, Any]:
    from mixbridge.formula.parse import Name, Num, deparse, walk
    from mixbridge.formula.terms import expand_bars, split_bars
    from mixbridge.formula.validate import parse_and_validate

    tree = parse_and_validate(formula, columns, "lmer")
    _, bars = split_bars(tree.rhs)
    expanded = expand_bars(bars)
    ok = (
        len(expanded) == 1
        and isinstance(expanded[0].lhs, Num)
        and expanded[0].lhs.value == 1
        and len(expanded[0].group) == 1
        and isinstance(expanded[0].group[0], Name)
    )
    if not ok:
        got = ", ".join(f"({deparse(b.lhs)} | {b.group_name})" for b in expanded) or "none"
        raise FormulaError(
            "a Dask DataFrame can only be fitted when the random part is a single (1 | g) "
            f"term with g a column (got: {got}); compute() to pandas for other models",
            token=got,
        )
    for node in walk(tree.rhs):
        if getattr(node, "fn", None) in _STATEFUL_CALLS:
            raise FormulaError(
                f"{node.fn}() needs coefficients from all rows at once and is not supported "
                "with a Dask DataFrame; transform the column first",
                token=deparse(node),
            )
    return tree, expanded[0].group[0].id, tree.lhs


def _used_columns(tree: Any, columns: list[str]) -> list[str]:
    from mixbridge.formula.parse import Name, walk

    out = []
    for node in walk(tree.lhs):
        if isinstance(node, Name) and node.id in columns:
            out.append(node.id)
    for node in walk(tree.rhs):
        if isinstance(node, Name) and node.id in columns:
            out.append(node.id)
    return list(dict.fromkeys(out))


def _factor_columns(tree: Any, data: Any, group: str) -> list[str]:
    """Fixed-part columns that become factors: non-numeric dtypes, or inside factor() etc."""
    from mixbridge.formula.parse import Call, Name, walk
    from mixbridge.formula.terms import split_bars

    fixed_rhs, _ = split_bars(tree.rhs)
    if fixed_rhs is None:
        return []
    out = []
    for node in walk(fixed_rhs):
        if isinstance(node, Call) and node.fn in _FACTOR_CALLS:
            out += [n.id for n in walk(node) if isinstance(n, Name) and n.id in data.columns]
        elif isinstance(node, Name) and node.id in data.columns:
            dtype = data[node.id].dtype
            is_num = pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
            if not is_num:
                out.append(node.id)
    return [c for c in dict.fromkeys(out) if c != group]


def _level_order(group: str, values: pd.Series) -> tuple[np.ndarray, list[str]]:
    """The raw values of g in lme4's level order, and their labels (as the in-memory path)."""
    from mixbridge.formula.evaluate import as_grouping_factor, read_column

    raw = pd.Series(values.to_numpy(), name=group)
    if isinstance(values.dtype, pd.CategoricalDtype):  # keep the dtype's category order
        raw = raw.astype(pd.CategoricalDtype(values.cat.categories, values.cat.ordered))
    f = as_grouping_factor(read_column(raw.to_frame(), group)).drop_unused()
    order = np.argsort(f.codes, kind="stable")
    return np.asarray(raw.to_numpy(), dtype=object)[order], list(f.levels)


def _template(formula: str, head: pd.DataFrame, factor_uniques: dict, group: str) -> Any:
    """Model terms on a few real rows plus one row per level of each fixed-effect factor."""
    from mixbridge.formula import build_mixed_terms

    base = head.iloc[[0]]
    rows = [head]
    for col, vals in factor_uniques.items():
        rep = base.loc[base.index.repeat(len(vals))].copy()
        rep[col] = vals.to_numpy()
        if isinstance(head[col].dtype, pd.CategoricalDtype):
            rep[col] = rep[col].astype(head[col].dtype)
        rows.append(rep)
    frame = pd.concat(rows, ignore_index=True)
    for col, vals in factor_uniques.items():  # categories: exactly the levels used anywhere
        if isinstance(head[col].dtype, pd.CategoricalDtype):
            used = set(vals.dropna().tolist())
            cats = [c for c in head[col].cat.categories if c in used]
            frame[col] = frame[col].cat.set_categories(cats)
    return build_mixed_terms(formula, frame)


def _check_dims(stats: ls.GroupStats, group: str) -> None:
    n, G = stats.n, stats.n_groups
    if G >= n:
        raise DataError(
            f"number of levels of each grouping factor must be < number of observations "
            f"(problems: {group}: {G} levels, {n} observations)",
            group,
        )
    if n <= stats.p:
        raise DataError(f"{n} observations for {stats.p} fixed effects", group)


def _rank_keep_gram(gram: np.ndarray, tol: float) -> list[int]:
    """lme4's left-to-right column dropping (R's qr with tol) from X'WX: a column goes when
    its norm after projection on the kept columns is below tol × its own norm."""
    keep: list[int] = []
    for j in range(gram.shape[0]):
        norm2 = gram[j, j]
        if norm2 <= 0:
            continue
        if keep:
            G = gram[np.ix_(keep, keep)]
            g = gram[keep, j]
            resid2 = norm2 - g @ np.linalg.solve(G, g)
        else:
            resid2 = norm2
        if resid2 > (tol * tol) * norm2:
            keep.append(j)
    return keep


def _nbytes(stats: ls.GroupStats) -> int:
    arrays = (stats.s, stats.Sy, stats.SX, stats.XtX, stats.Xty, stats.x_shift)
    return int(sum(a.nbytes for a in arrays))


# ---------------------------------------------------------------------------------------------
# Partition work (runs on the workers)


def _partition_design(part: pd.DataFrame, spec: _Spec) -> tuple:
    na = part[spec.used_columns].isna().any(axis=1).to_numpy()
    rows = part[~na] if na.any() else part
    X = spec.template._fixed.matrix(rows)
    y = numeric(spec.response, rows, Transforms(fitting=False))
    bad = np.isnan(y) | np.isnan(X).any(axis=1)
    if bad.any():  # NaN from a transform (e.g. log(-1)) is missing, like na.omit
        rows, X, y = rows[~bad], X[~bad], y[~bad]
    # the in-memory checks (mixbridge.checks), on this partition's rows
    if not np.isfinite(y).all():
        name = deparse(spec.response)
        raise DataError(f"response {name!r} has infinite values", column=name)
    names = spec.template._fixed.design.names
    for j in np.flatnonzero(~np.isfinite(X.sum(axis=0))):
        check_finite_values(X[:, j], names[j])
    off = spec.template.offset_for(rows)
    if spec.offset is not None:
        off_arg = rows[spec.offset].to_numpy(dtype=float)
        check_finite_offset(off_arg)
        off = off + off_arg
    check_finite_values(off, "offset")  # the formula's offset() terms
    w = None if spec.weights is None else rows[spec.weights].to_numpy(dtype=float)
    if w is not None:
        check_weight_values(w, "lmer", "weights", where="a partition's rows")
    codes = pd.Categorical(rows[spec.group], categories=spec.group_values).codes
    if codes.size and codes.min() < 0:
        raise DataError(f"unexpected level of '{spec.group}' in a partition", spec.group)
    n_na = int(len(part) - len(rows))
    return X, y - off, w, codes.astype(np.intp), n_na, rows


def _partition_shift(part: pd.DataFrame, spec: _Spec) -> tuple[np.ndarray, float]:
    X, y, *_ = _partition_design(part, spec)
    return ls.default_shift(X, y, spec.intercept)


def _partition_stats(part: pd.DataFrame, spec: _Spec, shift: tuple) -> tuple:
    """(GroupStats, rows dropped as NA, (lowest, highest) response) of one partition."""
    X, y, w, codes, n_na, rows = _partition_design(part, spec)
    G = len(spec.group_values)
    stats = ls.group_stats(X, y, w, codes, G, shift=shift, intercept=spec.intercept)
    raw = numeric(spec.response, rows, Transforms(fitting=False))  # y before the offset
    y_range = (float(raw.min()), float(raw.max())) if raw.size else (math.inf, -math.inf)
    return stats, n_na, y_range


def _partition_uniques(part: pd.DataFrame, used: list[str], cols: list[str]) -> list:
    rows = part[used].dropna()
    return [rows[c].drop_duplicates() for c in cols]


def _union_uniques(a: list, b: list) -> list:
    return [
        pd.concat([x, y], ignore_index=True).drop_duplicates() for x, y in zip(a, b, strict=True)
    ]


def _tree(dask: Any, items: list, combine: Any) -> Any:
    """Pairwise reduction of delayed values: every task result stays the size of one item."""
    while len(items) > 1:
        items = [
            dask.delayed(combine)(*items[i : i + 2]) if i + 1 < len(items) else items[i]
            for i in range(0, len(items), 2)
        ]
    return items[0]


def _combine(a: tuple, b: tuple) -> tuple:
    return a[0] + b[0], a[1] + b[1], (min(a[2][0], b[2][0]), max(a[2][1], b[2][1]))


def _partition_fitted(
    part: pd.DataFrame,
    spec: _Spec,
    keep: list[int],
    beta: np.ndarray,
    b: np.ndarray,
    residuals: bool,
) -> pd.Series:
    X, y, _, codes, _, rows = _partition_design(part, spec)
    off = spec.template.offset_for(rows)
    if spec.offset is not None:
        off = off + rows[spec.offset].to_numpy(dtype=float)
    mu = X[:, keep] @ beta + b[codes] + off
    out = (y + off) - mu if residuals else mu
    return pd.Series(out, index=rows.index, name="residuals" if residuals else "fitted")


# ---------------------------------------------------------------------------------------------
# The result object


def _mixed_fit(
    formula: str,
    reml: bool,
    res: ls.ScalarRIResult,
    stats: ls.GroupStats,
    names: list[str],
    group: str,
    levels: list[str],
    messages: list[Message],
) -> MixedFit:
    from mixbridge.python_impl import output

    term = _LevelTerm(group=group, levels=levels, cnames=["(Intercept)"])
    n, p = stats.n, stats.p
    df = p + 2
    crit = res.reml_criterion if reml else res.ml_deviance
    lik = output.likelihood_summary(crit, n, df)
    vcov = res.sigma**2 * res.vcov_unscaled
    versions = output.versions()
    import dask

    versions["dask"] = dask.__version__

    def objective(theta: Any) -> float:
        th = float(np.atleast_1d(np.asarray(theta, dtype=float))[0])
        if not th >= 0:
            raise ArgumentError(f"theta must be >= 0, got {th}", "theta")
        return ls.scalar_ri_criterion(th, stats, reml)

    fit = MixedFit(
        model="lmer",
        formula=formula,
        family="gaussian",
        link="identity",
        reml=reml,
        fixef=pd.Series(res.beta, index=names, dtype=float),
        vcov=pd.DataFrame((vcov + vcov.T) / 2.0, index=names, columns=names),
        theta=np.array([res.theta]),
        theta_names=output.theta_names([term]),
        varcorr=output.varcorr_frame([term], [np.array([[res.theta]])], res.sigma),
        sigma=float(res.sigma),
        ranef=output.ranef_frames([term], res.b, np.array([0, len(levels)])),
        cond_var={group: res.cond_var.reshape(-1, 1, 1)},
        loglik=lik["loglik"],
        df=df,
        deviance=float(res.ml_deviance),
        reml_criterion=float(res.reml_criterion) if reml else None,
        aic=lik["aic"],
        bic=lik["bic"],
        nobs=n,
        ngroups={group: len(levels)},
        fitted=np.empty(0),
        residuals=np.empty(0),
        singular=bool(res.singular),
        converged=bool(res.converged),
        messages=messages,
        engine="python",
        versions=versions,
        optimizer={
            "name": "scalar-ri-brent",
            "n_evals": res.n_evals,
            "status": "scalar random-intercept path (1-D search), Dask map-reduce",
            "fval": float(res.criterion),
        },
    )
    fit.attach(objective=objective)
    if not math.isfinite(res.criterion):
        fit.converged = False
    return fit
