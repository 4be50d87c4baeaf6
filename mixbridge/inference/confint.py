"""Confidence intervals for a mixed model's parameters: lme4's `confint.merMod`.

    fit.confint(method="wald" | "profile" | "boot", level=0.95, parm=None, nsim=1000, seed=None)

A DataFrame with columns `lower, upper`, rows named as lme4 names them: `.sig01`, … (the
random-effects standard deviations and correlations, lme4's `Cv_to_Sv` order), `.sigma` (models
with a residual scale), then the fixed effects.

- "wald": β̂ ± z·se from `fit.vcov` (NaN for the variance parameters, as lme4);
- "profile": the likelihood profile of lme4's `profile()` (`mixbridge.inference.profile`),
  the crossing of ζ = ±z solved for, not interpolated;
- "boot": the parametric bootstrap of lme4's `bootMer` with percentile intervals
  (`mixbridge.inference.bootstrap`).

R-engine fits get lme4's own `confint` (`mixbridge.inference.r_engine`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import special

from mixbridge.errors import ArgumentError
from mixbridge.inference import params

if TYPE_CHECKING:  # results imports this module (MixedFit.confint is `confint` below)
    from mixbridge.results import MixedFit

METHODS = ("wald", "profile", "boot")


def check_args(method: Any, level: Any, nsim: Any) -> tuple[str, float, int]:
    m = str(method).lower() if isinstance(method, str) else method
    if m not in METHODS:
        raise ArgumentError(f"method must be one of {', '.join(METHODS)}, got {method!r}", "method")
    try:
        lev = float(level)
    except (TypeError, ValueError):
        raise ArgumentError(f"level must be a number in (0, 1), got {level!r}", "level") from None
    if not 0.0 < lev < 1.0:
        raise ArgumentError(f"level must be in (0, 1), got {level!r}", "level")
    if isinstance(nsim, bool) or not isinstance(nsim, (int, np.integer)) or nsim < 2:
        raise ArgumentError(f"nsim must be an integer of at least 2, got {nsim!r}", "nsim")
    return m, lev, int(nsim)


def parameter_names(fit: MixedFit) -> tuple[list[str], int]:
    """lme4's confint row names for this fit and how many of them are variance parameters."""
    var = params.sig_names(len(fit.theta), params.has_sigma(fit.model, fit.family))
    return var + [str(n) for n in fit.fixef.index], len(var)


def confint(
    fit: MixedFit,
    method: str = "profile",
    level: float = 0.95,
    parm: Any = None,
    nsim: int = 1000,
    seed: int | None = None,
    progress: bool | Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """lme4's confint.merMod: columns lower, upper; rows .sig01, …, .sigma, fixed effects.
    `method`: "wald", "profile" (lme4's profile, crossing solved exactly) or "boot"
    (bootMer's parametric bootstrap, percentile intervals; `nsim`, `seed`; `progress`: None
    prints progress to stderr once a run takes over 5 s, True always, False never, or a
    callable(done, total)). This function is also the method `MixedFit.confint`."""
    method, level, nsim = check_args(method, level, nsim)
    names, n_var = parameter_names(fit)
    wanted = params.select_parm(names, n_var, parm)
    hook = fit.methods.confint
    if hook is not None:  # the engine's own (the R engine: lme4's confint)
        table = hook(method=method, level=level, parm=wanted, nsim=nsim, seed=seed)
    elif method == "wald":
        table = wald(fit, level)
    elif method == "profile":
        from mixbridge.inference.profile import profile_confint

        table = profile_confint(fit, level, wanted)
    else:
        from mixbridge.inference.bootstrap import boot_confint

        table = boot_confint(fit, level, nsim=nsim, seed=seed, progress=progress)
    return table.loc[wanted]


def wald(fit: MixedFit, level: float) -> pd.DataFrame:
    """lme4's `confint(method = "Wald")`: β̂ ± qnorm((1 + level)/2)·se; NaN for the rest."""
    names, n_var = parameter_names(fit)
    z = float(special.ndtri((1.0 + level) / 2.0))
    se = fit.fixef_se.to_numpy()
    beta = fit.fixef.to_numpy(dtype=float)
    lower = np.concatenate([np.full(n_var, np.nan), beta - z * se])
    upper = np.concatenate([np.full(n_var, np.nan), beta + z * se])
    return frame(names, lower, upper)


def frame(names: list[str], lower: Any, upper: Any) -> pd.DataFrame:
    return pd.DataFrame(
        {"lower": np.asarray(lower, float), "upper": np.asarray(upper, float)},
        index=pd.Index(names),
    )
