"""glmer on a Dask DataFrame: `(1|g)` with a canonical link (binomial logit, poisson log),
nAGQ = 1. The model rows are built once on the workers and stay there (persisted); every step
of the fit is one map-reduce over them (`group_sum_rows.row_pass` per partition, the sums
added in a tree), so only O(G) group sums leave the workers:

    1. the levels of g and of the fixed-effect factors (`distributed`'s aggregates), the
       template model frame (`mixbridge.formula.chunks`)
    2. map: each partition -> its model rows (X, codes, y, weights, offset, η from mustart),
       persisted; one pass for the data-only sums (response checks, X'X for lme4's rank check,
       the deviance's constant)
    3. the fit: `group_sum_fit.fit_group_sums` — the in-memory big-data path's algorithm
       (initial joint PIRLS, BFGS on the converged Laplace deviance with its analytic
       gradient), each PIRLS iteration one pass
    4. the same MixedFit as in memory; fitted values and residuals stay lazy Dask Series

The criterion is the converged Laplace deviance (tol_pwrss 1e-12), the one the in-memory engine
minimizes from GRADIENT_MIN_ROWS rows on: the fit equals the in-memory one on the same rows
(from 50,000 rows, or below with control={"tol_pwrss": 1e-12}).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from mixbridge.checks import check_response_spread
from mixbridge.errors import ArgumentError, DataError, FormulaError
from mixbridge.formula.chunks import ChunkedFormula
from mixbridge.formula.parse import Call
from mixbridge.python_impl import output
from mixbridge.python_impl.distributed import (
    RANK_TOL,
    LevelTerm,
    frame_messages,
    gather_levels,
    rank_keep_gram,
    require_dask,
    tree_reduce,
)
from mixbridge.python_impl.glmer_group_sums import estimate
from mixbridge.python_impl.group_sum_kernel import Constants, GroupSumKernel
from mixbridge.python_impl.group_sum_rows import Request, Rows, add, row_pass
from mixbridge.python_impl.pls import blas_single_thread
from mixbridge.python_impl.response import CANONICAL, GlmResponse
from mixbridge.python_impl.result import build_fit
from mixbridge.python_impl.spec import TIGHT_TOL, glmer_family, glmer_settings
from mixbridge.results import Message, MixedFit


class DaskRows:
    """Model rows persisted on the workers, one `Rows` per partition: `run(req)` is one
    map-reduce (the request is shipped once; the added sums come back)."""

    def __init__(self, dask: Any, parts: list[Any], n_groups: int) -> None:
        self.dask, self.parts, self.n_groups = dask, parts, n_groups

    def run(self, req: Request) -> dict[str, Any]:
        dask = self.dask
        shared = dask.delayed(req, traverse=False)
        mapped = [dask.delayed(_run)(p, shared) for p in self.parts]
        return tree_reduce(dask, mapped, add).compute()


def _run(part: tuple[Rows, dict[str, Any]], req: Request) -> dict[str, Any]:
    # one BLAS thread: the pass is small matrix-vector work, where a worker's default BLAS
    # threads only contend (3x slower passes measured on 2 cores)
    with blas_single_thread():
        return row_pass(part[0], req)


def glmer_dask(
    formula: str,
    data: Any,
    *,
    family: str = "binomial",
    link: str | None = None,
    nagq: int = 1,
    weights: str | None = None,
    offset: str | None = None,
    control: Mapping[str, Any] | None = None,
    **_: Any,
) -> MixedFit:
    """Fit `glmer(formula, data, family)` on a Dask DataFrame (single `(1|g)` term, canonical
    link, nAGQ = 1). `control`: cond_var, maxit, and tol_pwrss up to 1e-12 (the converged
    deviance; lme4's looser default is not available out of core)."""
    dask = require_dask()
    fam = glmer_family(family, link)
    if (fam.family, fam.link) not in CANONICAL:
        raise ArgumentError(
            f"a Dask DataFrame is fitted with a canonical link only (binomial 'logit', poisson "
            f"'log'), not {fam.family} {fam.link!r}; compute() the data for other links",
            "link",
        )
    if nagq != 1:
        raise ArgumentError(
            f"a Dask DataFrame is fitted with the Laplace approximation (nagq=1) only, not "
            f"nagq={nagq}; compute() the data for adaptive quadrature",
            "nagq",
        )
    settings = glmer_settings(control)
    tol = TIGHT_TOL if settings.tol_pwrss is None else float(settings.tol_pwrss)
    if tol > TIGHT_TOL:
        raise ArgumentError(
            f"control['tol_pwrss']={tol:g}: a Dask DataFrame is fitted on the converged Laplace "
            f"deviance (tol_pwrss <= {TIGHT_TOL:g}), whose analytic gradient the out-of-core "
            "optimizer needs; compute() the data for lme4's early-stopped criterion",
            "tol_pwrss",
        )
    columns = [str(c) for c in data.columns]
    model = ChunkedFormula(formula, columns, dict(data.dtypes.items()), model="glmer")
    if isinstance(model.response, Call):
        raise FormulaError(
            f"a Dask DataFrame's glmer response must be a column (0/1, a proportion with "
            f"weights=, or counts), not {model.response_name!r}; compute() the data for it",
            token=model.response_name,
        )
    used = list(dict.fromkeys(model.used_columns + [c for c in (weights, offset) if c]))

    # 1. levels and the template frame (as lmer's Dask path)
    parts = data.to_delayed()
    gather_levels(dask, data, model, used)
    G = len(model.levels)
    wo = (weights, offset)

    # 2. the model rows, persisted on the workers, and the data-only sums
    prepared = [dask.delayed(_prepare)(p, model, wo, fam.family, fam.link, G) for p in parts]
    prepared = list(dask.persist(*prepared))
    setup = [dask.delayed(_setup_sums)(p) for p in prepared]
    nparts = len(prepared)
    s = tree_reduce(dask, setup, _add_setup).compute()
    n = int(s["n"])
    if n == 0:
        raise DataError(f"no rows without missing values in the variables of {formula!r}")
    check_response_spread(s["ymin"], s["ymax"], n, model.response_name, "glmer")
    if fam.family == "binomial" and (s["ymin"] < 0 or s["ymax"] > 1):
        raise DataError(
            f"binomial response {model.response_name!r} must be 0/1 or a proportion in [0, 1]",
            model.response_name,
        )
    if fam.family == "poisson" and s["ymin"] < 0:
        raise DataError(
            f"poisson response {model.response_name!r} has negative values", model.response_name
        )
    if s["aic_minus_dev"] is None:
        raise DataError(
            f"binomial response {model.response_name!r} has non-integer success counts: "
            "compute() the data to fit it in memory",
            model.response_name,
        )
    names_full = model.x_names
    keep = rank_keep_gram(s["xtx"], RANK_TOL)
    if len(keep) < len(names_full):
        prepared = [dask.delayed(_select)(p, keep) for p in prepared]
    prepared = _one_block_per_worker(dask, prepared)
    x_names = [names_full[j] for j in keep]
    p = len(keep)
    dropped = [nm for j, nm in enumerate(names_full) if j not in keep]
    messages = frame_messages(int(s["n_dropped"]), dropped)
    messages += [Message("warning", t, "python", code="non_integer") for t in s["warnings"]]
    _check_glmer_dims(n, G, p, model.group)
    consts = Constants(
        s["sy"], float(s["dev_const"]), float(s["aic_minus_dev"]), [s["ones"][j] for j in keep]
    )
    kernel = GroupSumKernel(DaskRows(dask, prepared, G), consts, p)

    # 3. the fit
    est_ = estimate(kernel, tol, settings.maxit, fam.family, messages)
    beta, b = est_.beta, est_.b
    cond_var = {model.group: est_.cond_var.reshape(-1, 1, 1)} if settings.cond_var else {}

    # 4. the result; fitted values and residuals computed from the rows when asked for
    keep_ = list(keep)
    meta_f, meta_r = ("fitted", "f8"), ("residuals", "f8")
    fitted = data.map_partitions(
        _partition_mu, model, wo, keep_, beta, b, fam.family, fam.link, False, meta=meta_f
    )
    residuals = data.map_partitions(
        _partition_mu, model, wo, keep_, beta, b, fam.family, fam.link, True, meta=meta_r
    )
    versions = output.versions()
    versions["dask"] = dask.__version__
    est = est_.fit_estimates(
        formula, fam, [LevelTerm(model.group, model.levels)], x_names, n, cond_var, fitted,
        residuals, dropped, versions,
    )  # fmt: skip
    fit = build_fit(est)
    fit.extra.update(
        {"npartitions": nparts, "blocks": len(prepared), "backend": "dask",
         "passes": kernel.n_passes}
    )  # fmt: skip
    return fit


def _one_block_per_worker(dask: Any, prepared: list[Any]) -> list[Any]:
    """The persisted partitions merged into one block of rows per worker, on that worker: a
    pass is then one task per worker and one O(G) result per worker to add (instead of one per
    partition, whose transfer dominates a pass). Without a distributed client: one block."""
    from dask.base import get_scheduler

    client = getattr(get_scheduler(), "__self__", None)  # the scheduler dask would use
    try:
        from distributed import Client, futures_of
    except ImportError:
        Client = None  # noqa: N806
    if Client is None or not isinstance(client, Client):
        return list(dask.persist(dask.delayed(_merge)(*prepared)))
    prepared = list(client.persist(prepared))
    futures = [futures_of(p)[0] for p in prepared]
    who = client.who_has(futures)
    on: dict[str, list[Any]] = {}
    for part, fut in zip(prepared, futures, strict=True):
        addr = sorted(who.get(fut.key) or ["any"])[0]
        on.setdefault(addr, []).append(part)
    blocks = []
    for addr, parts in on.items():
        block = dask.delayed(_merge)(*parts)
        blocks.append(client.persist(block, workers=None if addr == "any" else [addr]))
    return blocks


def _merge(*parts: tuple[Rows, dict[str, Any]]) -> tuple[Rows, dict[str, Any]]:
    """One `Rows` of several partitions' rows, ordered by group (segment sums)."""
    rows = [p[0] for p in parts]
    first = rows[0]

    def cat(get: Any) -> np.ndarray:
        return np.concatenate([get(r) for r in rows])

    unit = all(r.w is None for r in rows)
    w = None if unit else cat(lambda r: np.ones(r.y.size) if r.w is None else r.w)
    merged = Rows(np.concatenate([r.X for r in rows]), cat(lambda r: r.codes), cat(lambda r: r.y),
                  w, cat(lambda r: r.off), cat(lambda r: r.eta_init), first.logit,
                  first.n_groups)  # fmt: skip
    return (merged.order_by_group() if merged.y.size else merged), {}


def _check_glmer_dims(n: int, G: int, p: int, group: str) -> None:
    if G >= n:
        raise DataError(
            f"number of levels of each grouping factor must be < number of observations "
            f"(problems: {group}: {G} levels, {n} observations)",
            group,
        )
    if n <= p:
        raise DataError(f"{n} observations for {p} fixed effects", group)


# ---------------------------------------------------------------------------------------------
# Partition work (runs on the workers)


def _response(
    part: pd.DataFrame, model: ChunkedFormula, wo: tuple, family: str, link: str
) -> tuple[Any, Any, GlmResponse, Any]:
    """(chunk, initialized response, GlmResponse, family) of one partition's rows."""
    fam = glmer_family(family, link)
    chunk = model.evaluate(part, *wo)
    y_raw = chunk.y + chunk.offset
    w = np.ones(y_raw.size) if chunk.weights is None else chunk.weights
    init = fam.initialize(y_raw, w, response=model.response_name)
    resp = GlmResponse(fam, np.asarray(init.y), np.asarray(init.weights), chunk.offset,
                       np.asarray(init.n))  # fmt: skip
    return chunk, init, resp, fam


def _prepare(
    part: pd.DataFrame, model: ChunkedFormula, wo: tuple, family: str, link: str, G: int
) -> tuple[Rows, dict[str, Any]]:
    chunk, init, resp, fam = _response(part, model, wo, family, link)
    y = np.asarray(init.y, dtype=float)
    w = np.asarray(init.weights, dtype=float)
    eta_init = chunk.offset + np.asarray(fam.linkfun(init.mustart), dtype=float)
    unit = bool(np.all(w == 1.0))
    X = np.ascontiguousarray(chunk.X, dtype=float)
    rows = Rows(X, chunk.codes, y, None if unit else w, np.asarray(chunk.offset, dtype=float),
                eta_init, fam.link == "logit", G)  # fmt: skip
    raw = chunk.y + chunk.offset
    info = {
        "n": int(y.size),
        "n_dropped": int(chunk.n_dropped),
        "ymin": float(raw.min()) if raw.size else np.inf,
        "ymax": float(raw.max()) if raw.size else -np.inf,
        "sy": rows.gsum(w * y),
        "dev_const": float(np.sum(resp.dev_const)),
        "aic_minus_dev": resp.aic_minus_dev,
        "xtx": X.T @ X,
        "ones": [bool(np.all(X[:, k] == 1.0)) for k in range(X.shape[1])],
        "warnings": list(init.warnings),
    }
    return rows, info


def _setup_sums(part: tuple[Rows, dict[str, Any]]) -> dict[str, Any]:
    return part[1]


def _add_setup(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    amd = (
        None
        if a["aic_minus_dev"] is None or b["aic_minus_dev"] is None
        else a["aic_minus_dev"] + b["aic_minus_dev"]
    )
    return {
        "n": a["n"] + b["n"],
        "n_dropped": a["n_dropped"] + b["n_dropped"],
        "ymin": min(a["ymin"], b["ymin"]),
        "ymax": max(a["ymax"], b["ymax"]),
        "sy": a["sy"] + b["sy"],
        "dev_const": a["dev_const"] + b["dev_const"],
        "aic_minus_dev": amd,
        "xtx": a["xtx"] + b["xtx"],
        "ones": [x and y for x, y in zip(a["ones"], b["ones"], strict=True)],
        "warnings": list(dict.fromkeys(a["warnings"] + b["warnings"])),
    }


def _select(part: tuple[Rows, dict[str, Any]], keep: list[int]) -> tuple[Rows, dict[str, Any]]:
    rows, info = part
    rows.X = np.ascontiguousarray(rows.X[:, keep])
    return rows, info


def _partition_mu(
    part: pd.DataFrame,
    model: ChunkedFormula,
    wo: tuple,
    keep: list[int],
    beta: np.ndarray,
    b: np.ndarray,
    family: str,
    link: str,
    residuals: bool,
) -> pd.Series:
    """μ (fitted) or the deviance residuals of one partition's rows at the estimates."""
    chunk, init, resp, fam = _response(part, model, wo, family, link)
    eta = chunk.X[:, keep] @ beta + b[chunk.codes] + chunk.offset
    mu = resp.linkinv(eta)
    if residuals:
        out = np.sign(resp.y - mu) * np.sqrt(np.maximum(resp.dev_resids(mu), 0.0))
    else:
        out = mu
    name = "residuals" if residuals else "fitted"
    return pd.Series(out, index=chunk.rows.index, name=name)
