"""engine="glmm": the PyPI package `glmm` 0.6.2 (Python port of the Rust glmm crate), if installed.

Maps `lmer` and `glmer` (binomial/logit, poisson/log, Laplace) with ONE random-effects term
`(re | g)` with numeric slopes, no weights or offset; everything else raises ArgumentError.

What the peer reports and where it goes (`glmm.fit(data, formula, ...)` returns a `Fit`):
- `names`, `beta`, `vcov`: fixef and vcov. Names already follow R (`period2`); columns the peer
  flags as aliased (`diagnostics["aliased"]`, coefficient NaN) on a rank-deficient X are dropped
  and listed in `dropped_columns`, as lme4 drops them.
- `varcorr[0]`: Σ's lower triangle, column-major (v11, c21, c31, v22, ...): θ and varcorr are
  rebuilt from it (θ = chol(Σ/σ²) in lme4's order); `dispersion` is σ² (gaussian).
- `ranef_blocks[0]`: levels and conditional modes; `loglik` (restricted for REML, Laplace for
  glmer); `fitted` (response scale); `diagnostics["converged"/"singular"]`; warnings -> messages.
- Not reported by the peer: lme4's condVar (computed from the peer's Σ, σ and fitted means, see
  `_peer`), the objective at given θ (so `compare` uses lme4's objective at glmm's θ only), and
  lme4's REML/conditional deviance (NaN).
- `cbind(succ, fail_expression)`: glmm takes two column names, so the failure column is computed
  here (`size - incidence` -> a column) and passed by name.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np
import pandas as pd

from mixbridge.conformance.adapters._peer import (
    Spec,
    cond_var_blocks,
    factor_levels,
    mixed_fit,
    r_name,
    require,
    spec,
    warning_messages,
)
from mixbridge.errors import ArgumentError
from mixbridge.results import MixedFit

NAME = "glmm"
# canonical links only: the IRLS weight n·dμ/dη used for condVar is then exact
_FAMILIES = {"binomial": "logit", "poisson": "log"}


def lmer(formula: str, data: pd.DataFrame, *, reml: bool = True, weights: Any = None,
         offset: Any = None, control: dict | None = None, **_: Any) -> MixedFit:  # fmt: skip
    pkg = require("glmm", NAME)
    s = spec(formula, data, NAME, weights, offset)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = pkg.fit(s.frame, formula, reml=bool(reml), satterthwaite=False)
    return _to_fit(res, s, caught, model="lmer", family="gaussian", link="identity",
                   reml=bool(reml), trials=None)  # fmt: skip


def glmer(formula: str, data: pd.DataFrame, *, family: str = "binomial", link: str | None = None,
          nagq: int = 1, weights: Any = None, offset: Any = None, control: dict | None = None,
          **_: Any) -> MixedFit:  # fmt: skip
    pkg = require("glmm", NAME)
    if family not in _FAMILIES or (link is not None and link != _FAMILIES[family]):
        raise ArgumentError(
            f"engine 'glmm' adapter maps glmer with binomial/logit or poisson/log, not "
            f"{family}/{link}",
            "family",
        )
    if nagq != 1:
        raise ArgumentError("engine 'glmm' adapter maps the Laplace fit (nagq=1) only", "nagq")
    s = spec(formula, data, NAME, weights, offset)
    peer_formula, trials = formula, None
    m = re.match(r"^\s*cbind\((.+?),(.+)\)\s*$", s.lhs)
    if m:
        succ, fail = m.group(1).strip(), m.group(2).strip()
        if fail not in s.frame.columns:
            s.frame["_mb_fail"] = s.frame.eval(fail)
            fail = "_mb_fail"
        peer_formula = formula.replace(s.lhs, f"cbind({succ}, {fail})", 1)
        trials = (s.frame[succ] + s.frame[fail]).to_numpy(dtype=float)
    elif family == "binomial":
        trials = np.ones(len(s.frame))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = pkg.fit(s.frame, peer_formula, family=family)
    return _to_fit(res, s, caught, model="glmer", family=family, link=_FAMILIES[family],
                   reml=False, trials=trials)  # fmt: skip


def _to_fit(res: Any, s: Spec, caught: list[Any], *, model: str, family: str, link: str,
            reml: bool, trials: np.ndarray | None) -> MixedFit:  # fmt: skip
    levels_map = factor_levels(s.frame)
    names = [r_name(str(n), levels_map) for n in res.names]
    aliased = np.asarray(res.diagnostics.get("aliased", np.zeros(len(names), bool)), dtype=bool)
    keep = ~aliased
    kept = [n for n, k in zip(names, keep, strict=True) if k]
    fixef = pd.Series(np.asarray(res.beta, dtype=float)[keep], index=kept)
    vcov = np.asarray(res.vcov, dtype=float)[np.ix_(keep, keep)]
    group, terms = res.re_groups[0]
    terms = [r_name(str(t), levels_map) for t in terms]
    if group != s.group or terms != s.re_names:
        raise ArgumentError(
            f"glmm's random term ({' + '.join(terms)} | {group}) is not the formula's "
            f"({' + '.join(s.re_names)} | {s.group})",
            "engine",
        )
    q = len(terms)
    cov_re = np.zeros((q, q))
    k = 0
    for j in range(q):  # varcorr[0]: lower triangle, column-major
        for i in range(j, q):
            cov_re[i, j] = cov_re[j, i] = float(np.asarray(res.varcorr[0])[k])
            k += 1
    sigma = float(np.sqrt(res.dispersion)) if model == "lmer" else 1.0
    block = res.ranef_blocks[0]
    ranef = pd.DataFrame(np.asarray(block["values"], dtype=float).reshape(-1, q),
                         index=[str(x) for x in block["levels"]], columns=terms)  # fmt: skip
    ranef = ranef.reindex(s.levels)
    fitted = np.asarray(res.fitted, dtype=float)
    if model == "lmer":
        w = np.ones(len(s.frame))
    elif family == "binomial":
        w = trials * fitted * (1.0 - fitted)  # n μ (1 - μ): logit's IRLS weight
    else:
        w = fitted  # poisson/log: μ
    diag = res.diagnostics
    return mixed_fit(
        s, model=model, family=family, link=link, reml=reml, engine=NAME, fixef=fixef,
        vcov=vcov, cov_re=cov_re, sigma=sigma, ranef=ranef,
        cond_var=cond_var_blocks(s, cov_re, sigma, w), loglik=float(res.loglik), fitted=fitted,
        converged=bool(diag.get("converged", True)), singular=bool(diag.get("singular", False)),
        messages=warning_messages(caught, NAME),
        dropped_columns=[n for n, a in zip(names, aliased, strict=True) if a],
        optimizer={"n_eval": int(res.n_eval), "stop": str(res.outer_stop)},
    )  # fmt: skip
