"""engine="mixedlm": the PyPI package `mixedlm` 1.3.0 (lme4-inspired, Rust backend), if installed.

Maps `lmer` with ONE random-effects term `(re | g)` with numeric slopes, no weights or offset;
everything else raises ArgumentError (its glmer takes no `cbind()` response).

What the peer reports and where it goes (`mixedlm.lmer(formula, data, REML=)`):
- `fixef()`: names like `period.1` (the k-th non-baseline level) are renamed to R's `period2`
  from the data's levels; `vcov()` over the same columns. On a rank-deficient X the peer drops a
  column of its own choosing (it keeps the last of an aliased set where lme4 keeps the first);
  that is not mapped: `compare` reports the differing names, and the note it prints is kept in
  `messages`.
- `VarCorr().groups[g].cov` -> Σ; θ = chol(Σ/σ²) in lme4's column-major order. The peer's own
  `theta` is ordered row by row (differs from lme4's from three random-effect columns on).
- `ranef()`: conditional modes per term, in the factor's level order; `sigma`; `logLik()`
  (restricted for REML); `converged`; `isSingular()`; `fitted()`.
- `as_function("deviance")`: the peer's criterion at given θ, exposed as `fit.objective(θ)` with
  θ taken in lme4's order and reordered for the peer (the flat-optimum checks use it).
- condVar: the peer reports only the variances (`ranef(condVar=True)`), not the covariances, so
  the blocks are computed from its Σ and σ (see `_peer`); the adapter checks that their diagonal
  equals the peer's variances.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Any

import numpy as np
import pandas as pd

from mixbridge.conformance.adapters._peer import (
    cond_var_blocks,
    factor_levels,
    mixed_fit,
    r_name,
    require,
    spec,
    warning_messages,
)
from mixbridge.errors import ArgumentError
from mixbridge.results import Message, MixedFit

NAME = "mixedlm"


def lmer(formula: str, data: pd.DataFrame, *, reml: bool = True, weights: Any = None,
         offset: Any = None, control: dict | None = None, **_: Any) -> MixedFit:  # fmt: skip
    pkg = require("mixedlm", NAME)
    s = spec(formula, data, NAME, weights, offset)
    out = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out):
        warnings.simplefilter("always")
        res = pkg.lmer(formula, s.frame, REML=bool(reml))
    messages = warning_messages(caught, NAME)
    # the peer prints some notes (e.g. the rank-deficiency drop) instead of warning
    messages += [Message("note", t, NAME) for t in out.getvalue().splitlines() if t.strip()]
    levels_map = factor_levels(s.frame)
    fe = res.fixef()
    names = [r_name(str(k), levels_map) for k in fe]
    fixef = pd.Series([float(v) for v in fe.values()], index=names)
    vcov = np.asarray(res.vcov(), dtype=float)
    vc = res.VarCorr().groups[s.group]
    terms = [r_name(str(t), levels_map) for t in vc.term_names]
    if terms != s.re_names:
        raise ArgumentError(f"mixedlm's random term has columns {terms}, expected {s.re_names}",
                            "engine")  # fmt: skip
    cov_re = np.asarray(vc.cov, dtype=float).reshape(len(terms), len(terms))
    sigma = float(res.sigma)
    raw = res.ranef()[s.group]
    ranef = pd.DataFrame({t: np.asarray(raw[t0], dtype=float)
                          for t, t0 in zip(terms, vc.term_names, strict=True)},
                         index=s.levels)  # fmt: skip
    cond_var = cond_var_blocks(s, cov_re, sigma, np.ones(len(s.frame)))
    _check_cond_var(res, s.group, vc.term_names, cond_var)
    devfun = res.as_function("deviance")
    q = len(terms)

    def objective(theta: np.ndarray) -> float:
        return float(devfun(_to_peer_theta(np.asarray(theta, dtype=float), q)))

    return mixed_fit(
        s, model="lmer", family="gaussian", link="identity", reml=bool(reml), engine=NAME,
        fixef=fixef, vcov=vcov, cov_re=cov_re, sigma=sigma, ranef=ranef, cond_var=cond_var,
        loglik=float(res.logLik().value), fitted=np.asarray(res.fitted(), dtype=float),
        converged=bool(res.converged), singular=bool(res.isSingular()), messages=messages,
        objective=objective,
        optimizer={"method": str(res.optimizer), "message": str(res.message)},
    )  # fmt: skip


def _to_peer_theta(theta: np.ndarray, q: int) -> np.ndarray:
    """lme4's θ (lower triangle column by column) -> mixedlm's (lower triangle row by row)."""
    lam = np.zeros((q, q))
    k = 0
    for j in range(q):
        for i in range(j, q):
            lam[i, j] = theta[k]
            k += 1
    return np.array([lam[i, j] for i in range(q) for j in range(i + 1)])


def _check_cond_var(res: Any, group: str, terms: list[str], blocks: np.ndarray) -> None:
    """The computed blocks' diagonal must be the peer's own conditional variances."""
    peer = res.ranef(condVar=True).condVar[group]
    for i, t in enumerate(terms):
        own = np.asarray(peer[t], dtype=float)
        if not np.allclose(blocks[:, i, i], own, rtol=1e-6, atol=0.0):
            raise ArgumentError(
                f"mixedlm's conditional variances of {t!r} differ from Var(b|y) computed from its "
                f"Σ and σ (max rel {np.max(np.abs(blocks[:, i, i] / own - 1)):.1e})",
                "engine",
            )


def glmer(*_: Any, **__: Any) -> MixedFit:
    raise ArgumentError(
        "engine 'mixedlm' adapter does not map glmer (the peer takes no cbind() response)",
        "engine",
    )
