"""Entry points of the pure-Python engine (engine="python"): lme4's lmer and glmer, arm's bayesglm.

Each model lives in its own module and is imported on first use: `lmm` (lmer), `glmm` (glmer),
`bayesglm` (bayesglm). Keyword arguments follow the engine protocol in `mixbridge.engines`. These
live here, not in the package's `__init__`, so a submodule import never shadows an entry point.
"""

from __future__ import annotations

from typing import Any


def lmer(formula: str, data: Any, **kwargs: Any):
    from mixbridge.python_impl.lmm import lmer as fit

    return fit(formula, data, **kwargs)


def lmer_objective(formula: str, data: Any, **kwargs: Any) -> float:
    from mixbridge.python_impl.lmm import lmer_objective as objective

    return objective(formula, data, **kwargs)


def glmer(formula: str, data: Any, **kwargs: Any):
    from mixbridge.python_impl.glmm import glmer as fit

    return fit(formula, data, **kwargs)


def glmer_objective(formula: str, data: Any, **kwargs: Any) -> float:
    from mixbridge.python_impl.glmm import glmer_objective as objective

    return objective(formula, data, **kwargs)


def bayesglm(formula: str, data: Any, **kwargs: Any):
    from mixbridge.python_impl.bayesglm import bayesglm as fit

    return fit(formula, data, **kwargs)
