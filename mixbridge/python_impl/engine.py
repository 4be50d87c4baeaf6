"""Entry points of the pure-Python engine (engine="python"): lme4's lmer and glmer, arm's bayesglm.

Each model lives in its own module and is imported on first use: `lmer`, `glmer` (which compose
the stages, see docs/architecture.md), `bayesglm`. Keyword arguments follow the engine protocol
in `mixbridge.engines`; lmer also takes a Dask DataFrame (the engine is registered for Dask
data). These live here, not in the package's `__init__`, so a submodule import never shadows an
entry point.
"""

from __future__ import annotations

from typing import Any

from mixbridge.python_impl.pls import blas_single_thread

# Every fit runs with BLAS on one thread: the work is many small and mid-sized factorizations,
# where OpenBLAS threads gain little and, on a busy machine, slow a small Cholesky ~100x.


def lmer(formula: str, data: Any, **kwargs: Any):
    from mixbridge.python_impl.lmer import lmer as fit

    with blas_single_thread():
        return fit(formula, data, **kwargs)


def lmer_objective(formula: str, data: Any, **kwargs: Any) -> float:
    from mixbridge.python_impl.lmer import lmer_objective as objective

    with blas_single_thread():
        return objective(formula, data, **kwargs)


def glmer(formula: str, data: Any, **kwargs: Any):
    from mixbridge.python_impl.glmer import glmer as fit

    with blas_single_thread():
        return fit(formula, data, **kwargs)


def glmer_nb(formula: str, data: Any, **kwargs: Any):
    from mixbridge.python_impl.glmer_nb import glmer_nb as fit

    with blas_single_thread():
        return fit(formula, data, **kwargs)


def glmer_objective(formula: str, data: Any, **kwargs: Any) -> float:
    from mixbridge.python_impl.glmer import glmer_objective as objective

    with blas_single_thread():
        return objective(formula, data, **kwargs)


def bayesglm(formula: str, data: Any, **kwargs: Any):
    from mixbridge.python_impl.bayesglm import bayesglm as fit

    with blas_single_thread():
        return fit(formula, data, **kwargs)
