"""Entry points of the pure-Python engine (engine="python"): lme4's lmer and glmer, arm's bayesglm.

Each model lives in its own module and is imported on first use: `lmm` (lmer), `glmm` (glmer),
`bayesglm` (bayesglm). Keyword arguments follow the engine protocol in `mixbridge.engines`. These
live here, not in the package's `__init__`, so a submodule import never shadows an entry point.
"""

from __future__ import annotations

from typing import Any

from mixbridge.checks import is_dask
from mixbridge.control import check_control
from mixbridge.python_impl.predictor import blas_single_thread

# Every fit runs with BLAS on one thread: the work is many small and mid-sized factorizations,
# where OpenBLAS threads gain little and, on a busy machine, slow a small Cholesky ~100x.


def _split_control(model: str, kwargs: dict[str, Any]) -> bool:
    """Check kwargs["control"] (mixbridge.control's keys) and take out `cond_var`, which is
    applied to the result here; returns whether to keep the conditional variances."""
    control = check_control(model, kwargs.get("control"), "python")
    keep = control.pop("cond_var", True)
    kwargs["control"] = control
    return keep


def lmer(formula: str, data: Any, **kwargs: Any):
    keep_cond_var = _split_control("lmer", kwargs)
    if is_dask(data):  # out of core: group statistics from the partitions
        from mixbridge.python_impl.distributed import lmer_dask as fit
    else:
        from mixbridge.python_impl.lmm import lmer as fit
    with blas_single_thread():
        result = fit(formula, data, **kwargs)
    if not keep_cond_var:
        result.cond_var = {}
    return result


def lmer_objective(formula: str, data: Any, **kwargs: Any) -> float:
    from mixbridge.python_impl.lmm import lmer_objective as objective

    with blas_single_thread():
        return objective(formula, data, **kwargs)


def glmer(formula: str, data: Any, **kwargs: Any):
    from mixbridge.python_impl.glmm import glmer as fit

    keep_cond_var = _split_control("glmer", kwargs)
    with blas_single_thread():
        result = fit(formula, data, **kwargs)
    if not keep_cond_var:
        result.cond_var = {}
    return result


def glmer_objective(formula: str, data: Any, **kwargs: Any) -> float:
    from mixbridge.python_impl.glmm import glmer_objective as objective

    _split_control("glmer", kwargs)
    with blas_single_thread():
        return objective(formula, data, **kwargs)


def bayesglm(formula: str, data: Any, **kwargs: Any):
    from mixbridge.python_impl.bayesglm import bayesglm as fit

    with blas_single_thread():
        return fit(formula, data, **kwargs)
