"""engine="mixedlm": the PyPI package `mixedlm` (lme4-inspired, Rust backend), when installed.

Only `lmer` with one grouping factor is mapped; everything else raises ArgumentError. Not
installed in the project venv: `pip install mixedlm` to use it.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from mixbridge.conformance.adapters import split_formula
from mixbridge.conformance.adapters._peer import factor_levels, require, to_mixed_fit
from mixbridge.errors import ArgumentError

NAME = "mixedlm"


def lmer(formula: str, data: pd.DataFrame, *, reml: bool = True, weights: Any = None,
         offset: Any = None, control: dict | None = None, **_: Any):  # fmt: skip
    pkg = require("mixedlm", NAME)
    _lhs, _fixed, bars = split_formula(formula)
    if len(bars) != 1 or weights is not None or offset is not None:
        raise ArgumentError("engine 'mixedlm' adapter maps one random term, no weights/offset",
                            NAME)  # fmt: skip
    group = bars[0][1]
    frame = data.dropna()
    result = pkg.lmer(formula, frame, REML=bool(reml))
    levels = [str(x) for x in pd.Categorical(frame[group]).categories]
    return to_mixed_fit(
        result, engine=NAME, version=getattr(pkg, "__version__", "?"), formula=formula,
        reml=bool(reml), group=group, levels=levels, factor_levels=factor_levels(frame),
        nobs=len(frame),
    )  # fmt: skip


def glmer(*_: Any, **__: Any):
    raise ArgumentError("engine 'mixedlm' adapter does not map glmer yet", NAME)
