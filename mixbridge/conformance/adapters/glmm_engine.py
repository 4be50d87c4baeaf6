"""engine="glmm": the PyPI package `glmm` (Python port of the Rust glmm crate), when installed.

Only `lmer` with one grouping factor is mapped; its coefficient names such as `period.1` are
mapped to R's `period2` from the data's factor levels. Everything else raises ArgumentError.
Not installed in the project venv: `pip install glmm` to use it.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from mixbridge.conformance.adapters import split_formula
from mixbridge.conformance.adapters._peer import factor_levels, require, to_mixed_fit
from mixbridge.errors import ArgumentError

NAME = "glmm"


def lmer(formula: str, data: pd.DataFrame, *, reml: bool = True, weights: Any = None,
         offset: Any = None, control: dict | None = None, **_: Any):  # fmt: skip
    pkg = require("glmm", NAME)
    _lhs, _fixed, bars = split_formula(formula)
    if len(bars) != 1 or weights is not None or offset is not None:
        raise ArgumentError("engine 'glmm' adapter maps one random term, no weights/offset", NAME)
    group = bars[0][1]
    frame = data.dropna()
    fit_fn = getattr(pkg, "lmer", None) or getattr(pkg, "fit", None)
    if fit_fn is None:
        raise ArgumentError("the installed 'glmm' package has neither lmer() nor fit()", NAME)
    result = fit_fn(formula, frame, reml=bool(reml)) if fit_fn.__name__ != "fit" else fit_fn(
        formula, frame, family="gaussian", reml=bool(reml))  # fmt: skip
    levels = [str(x) for x in pd.Categorical(frame[group]).categories]
    return to_mixed_fit(
        result, engine=NAME, version=getattr(pkg, "__version__", "?"), formula=formula,
        reml=bool(reml), group=group, levels=levels, factor_levels=factor_levels(frame),
        nobs=len(frame),
    )  # fmt: skip


def glmer(*_: Any, **__: Any):
    raise ArgumentError("engine 'glmm' adapter does not map glmer yet", NAME)
