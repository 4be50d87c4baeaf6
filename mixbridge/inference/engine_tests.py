"""The engine's tests hook (`FitMethods.tests`) as `coef_table()` and `anova()` reach it.

Both tables name a ddf method the same way (lmerTest's spellings, case-insensitive), both refuse
Kenward–Roger on an ML fit (pbkrtest adjusts the REML covariance only), and both then hand the
fit to the engine's hook; this module is that shared entry, so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pandas as pd

from mixbridge.errors import ArgumentError

if TYPE_CHECKING:
    from mixbridge.results import MixedFit

DDF_METHODS = {
    "satterthwaite": "satterthwaite",
    "kenward-roger": "kenward-roger",
    "kenward_roger": "kenward-roger",
    "kr": "kenward-roger",
    "lme4": "lme4",
}

# The engine's hook: tests(fit, kind ("coef_table" | "anova"), ddf method, anova type or None)
TestsHook = Callable[["MixedFit", str, str, "int | None"], pd.DataFrame]


def check_ddf(
    ddf: object, allowed: tuple[str, ...] = ("satterthwaite", "kenward-roger", "lme4")
) -> str:
    """The ddf method's canonical name (case-insensitive, lmerTest's spellings accepted)."""
    key = ddf.strip().lower() if isinstance(ddf, str) else None
    method = DDF_METHODS.get(key) if key is not None else None
    if method is None or method not in allowed:
        raise ArgumentError(
            f"ddf must be one of {', '.join(map(repr, allowed))}, got {ddf!r}", "ddf"
        )
    return method


def engine_tests(fit: MixedFit, method: str, what: str) -> TestsHook:
    """The fit engine's tests hook for a canonical ddf `method` (from `check_ddf`), after
    Kenward–Roger's REML check. `what` names the caller ("coef_table()", "anova()") in the
    error for an engine without the hook."""
    if method == "kenward-roger" and not fit.reml:
        raise ArgumentError(
            "Kenward-Roger's method is only available for REML model fits (fit with reml=True)",
            "ddf",
        )
    fn = fit.methods.tests
    if fn is None:
        raise fit.missing_engine_function(what)
    return fn
