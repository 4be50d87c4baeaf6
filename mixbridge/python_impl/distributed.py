"""lmer on a Dask DataFrame: the partitions as a source of group statistics for the diagonal
core's O(G) criterion (`lmm_scalar`, lme4_spec.md §2), for models whose random part is a single
`(1|g)` term. The fit is a map-reduce; nothing but O(G) aggregates leaves the workers:

    1. small aggregates: the sorted levels of g and of every factor in the fixed part
    2. the formula evaluated chunk by chunk (`mixbridge.formula.chunks`): a template model frame
       with every level fixes the columns, contrasts and level codes of X in every partition
    3. map: each partition -> (GroupStats, rows dropped as NA); reduce: a tree of additions
    4. rank check on the pooled X'WX (lme4's column dropping), then the 1-D fit on the client
    5. the same MixedFit as in memory (`result.build_fit`); fitted values and residuals stay
       lazy Dask Series (a second pass when computed)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from mixbridge.checks import check_flag, check_response_spread
from mixbridge.errors import ArgumentError, DataError
from mixbridge.formula.chunks import ChunkedFormula
from mixbridge.python_impl import output
from mixbridge.python_impl.group_stats import GroupStats, default_shift, group_stats
from mixbridge.python_impl.lmer import diagonal_cond_var, group_stats_objective
from mixbridge.python_impl.lmm_scalar import scalar_ri_fit
from mixbridge.python_impl.pls import lambda_blocks
from mixbridge.python_impl.result import FitEstimates, build_fit
from mixbridge.python_impl.spec import lmer_settings
from mixbridge.results import Message, MixedFit

INSTALL_HINT = "pip install 'mixbridge[dask]'"
RANK_TOL = 1e-7  # lme4's chkRank.drop.cols tolerance


def require_dask() -> Any:
    try:
        import dask
        import dask.dataframe  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"fitting a Dask DataFrame needs dask[dataframe]: {INSTALL_HINT}"
        ) from exc
    return dask


class LevelTerm:
    """The labels of the single (1|g) term (`output.TermLabels`)."""

    def __init__(self, group: str, levels: list[str]) -> None:
        self.group, self.levels, self.cnames = group, levels, ["(Intercept)"]
        self.n_levels, self.p = len(levels), 1


def lmer_dask(
    formula: str,
    data: Any,
    *,
    reml: bool = True,
    weights: str | None = None,
    offset: str | None = None,
    control: Mapping[str, Any] | None = None,
    **_: Any,
) -> MixedFit:
    """Fit `lmer(formula, data, REML = reml)` on a Dask DataFrame (single `(1|g)` models).

    The input checks are the in-memory ones (`mixbridge.checks`), applied to each partition
    or to the aggregates. `control`: `mixbridge.control`'s keys as for the O(G) path in memory
    (cond_var, boundary_tol, restart_edge, calc_derivs); a start or an evaluation limit belongs
    to the general optimizer and is refused."""
    dask = require_dask()
    reml = check_flag(reml, "reml")
    settings = lmer_settings(control)
    if settings.needs_general_optimizer:
        key = next(k for k in settings.given if k in ("start", "maxeval"))
        raise ArgumentError(
            f"control[{key!r}] is not available for a Dask DataFrame: the out-of-core fit runs "
            "the single (1 | g) term's one-dimensional search, which has no start or evaluation "
            "limit; compute() the data to fit it in memory with this setting",
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

    columns = [str(c) for c in data.columns]
    model = ChunkedFormula(formula, columns, dict(data.dtypes.items()))
    used = list(dict.fromkeys(model.used_columns + [c for c in (weights, offset) if c]))

    # 1.-2. global levels and the template frame
    parts = data.to_delayed()
    gather_levels(dask, data, model, used)
    intercept = model.x_names.index("(Intercept)") if "(Intercept)" in model.x_names else None
    wo = (weights, offset)

    # 3. one pass: map partitions to GroupStats, add them up in a tree
    shift = dask.delayed(_partition_shift)(parts[0], model, wo, intercept).compute()
    mapped = [dask.delayed(_partition_stats)(p, model, wo, shift, intercept) for p in parts]
    full_stats, n_dropped, y_range = tree_reduce(dask, mapped, _combine).compute()
    if full_stats.n == 0:
        raise DataError(f"no rows without missing values in the variables of {formula!r}")
    check_response_spread(*y_range, full_stats.n, model.response_name, "lmer")

    # 4. lme4's rank check on the pooled Gram matrix, then the 1-D fit
    names_full = model.x_names
    keep = rank_keep_gram(full_stats.gram_unshifted(), RANK_TOL)
    stats = full_stats.select(keep) if len(keep) < len(names_full) else full_stats
    messages = frame_messages(n_dropped, [n for j, n in enumerate(names_full) if j not in keep])
    _check_dims(stats, model.group)
    res = scalar_ri_fit(stats, reml, settings.boundary_tol)

    # 5. the result: fitted values and residuals as lazy collections
    fitted = data.map_partitions(
        _partition_fitted, model, wo, keep, res.beta, res.b, False, meta=("fitted", "f8")
    )
    residuals = data.map_partitions(
        _partition_fitted, model, wo, keep, res.beta, res.b, True, meta=("residuals", "f8")
    )
    theta = np.array([res.theta])
    opt = res.opt_summary("scalar random-intercept path (1-D search), Dask map-reduce")
    vcov = res.sigma**2 * res.vcov_unscaled
    versions = output.versions()
    versions["dask"] = dask.__version__
    est = FitEstimates(
        model="lmer",
        formula=formula,
        family="gaussian",
        link="identity",
        reml=reml,
        reterms=[LevelTerm(model.group, model.levels)],
        x_names=[names_full[j] for j in keep],
        nobs=stats.n,
        theta=theta,
        beta=res.beta,
        b=res.b,
        lambda_blocks=lambda_blocks([1], theta),
        sigma=float(res.sigma),
        vcov=(vcov + vcov.T) / 2.0,
        cond_var=diagonal_cond_var(res, model.group, settings),
        criterion=res.reml_criterion if reml else res.ml_deviance,
        df=stats.p + 2,
        deviance=float(res.ml_deviance),
        reml_criterion=float(res.reml_criterion) if reml else None,
        fitted=fitted,
        residuals=residuals,
        singular=bool(res.singular),
        converged=bool(res.converged),
        messages=messages + opt.messages,
        optimizer={**opt.as_dict(), "fval": float(res.criterion)},
        dropped_columns=[n for j, n in enumerate(names_full) if j not in keep],
        versions=versions,
    )
    fit = build_fit(est, objective=group_stats_objective(stats, reml))
    fit.extra.update(
        {"npartitions": len(parts), "aggregate_nbytes": _nbytes(full_stats), "backend": "dask"}
    )
    return fit


def gather_levels(dask: Any, data: Any, model: ChunkedFormula, used: list[str]) -> None:
    """Steps 1 and 2: the levels of g and of every fixed-effect factor (computed on the
    workers, only the uniques come back), then the template frame (a few real rows, one row
    per level of each factor), installed in `model`."""
    parts = data.to_delayed()
    level_cols = [model.group, *model.factor_columns]
    found = [dask.delayed(_partition_uniques)(p, used, level_cols) for p in parts]
    uniques = tree_reduce(dask, found, _union_uniques).compute()
    clean = data[used].dropna()
    head = clean.head(50, npartitions=1)
    if len(head) == 0:  # the first partition is empty or all-NA: look further
        head = clean.head(50, npartitions=-1)
    if len(head) == 0:
        raise DataError(f"no rows without missing values in the variables of {model.formula!r}")
    factors = dict(zip(model.factor_columns, uniques[1:], strict=True))
    model.set_levels(uniques[0], factors, head)


def frame_messages(n_dropped: int, dropped: list[str]) -> list[Message]:
    """na.omit's and the rank check's messages, as the in-memory model frame writes them."""
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
    return messages


def _check_dims(stats: GroupStats, group: str) -> None:
    n, G = stats.n, stats.n_groups
    if G >= n:
        raise DataError(
            f"number of levels of each grouping factor must be < number of observations "
            f"(problems: {group}: {G} levels, {n} observations)",
            group,
        )
    if n <= stats.p:
        raise DataError(f"{n} observations for {stats.p} fixed effects", group)


def rank_keep_gram(gram: np.ndarray, tol: float) -> list[int]:
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


def _nbytes(stats: GroupStats) -> int:
    arrays = (stats.s, stats.Sy, stats.SX, stats.XtX, stats.Xty, stats.x_shift)
    return int(sum(a.nbytes for a in arrays))


# ---------------------------------------------------------------------------------------------
# Partition work (runs on the workers)


def _partition_shift(
    part: pd.DataFrame, model: ChunkedFormula, wo: tuple, intercept: int | None
) -> tuple[np.ndarray, float]:
    chunk = model.evaluate(part, *wo)
    return default_shift(chunk.X, chunk.y, intercept)


def _partition_stats(
    part: pd.DataFrame, model: ChunkedFormula, wo: tuple, shift: tuple, intercept: int | None
) -> tuple:
    """(GroupStats, rows dropped as NA, (lowest, highest) response) of one partition."""
    chunk = model.evaluate(part, *wo)
    G = len(model.levels)
    stats = group_stats(
        chunk.X, chunk.y, chunk.weights, chunk.codes, G, shift=shift, intercept=intercept
    )
    return stats, chunk.n_dropped, model.response_range(chunk.rows)


def _partition_uniques(part: pd.DataFrame, used: list[str], cols: list[str]) -> list:
    rows = part[used].dropna()
    return [rows[c].drop_duplicates() for c in cols]


def _union_uniques(a: list, b: list) -> list:
    return [
        pd.concat([x, y], ignore_index=True).drop_duplicates() for x, y in zip(a, b, strict=True)
    ]


def tree_reduce(dask: Any, items: list, combine: Any) -> Any:
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
    model: ChunkedFormula,
    wo: tuple,
    keep: list[int],
    beta: np.ndarray,
    b: np.ndarray,
    residuals: bool,
) -> pd.Series:
    chunk = model.evaluate(part, *wo)
    off = chunk.offset
    mu = chunk.X[:, keep] @ beta + b[chunk.codes] + off
    out = (chunk.y + off) - mu if residuals else mu
    return pd.Series(out, index=chunk.rows.index, name="residuals" if residuals else "fitted")
