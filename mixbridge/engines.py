"""Engine registry and adapter protocol.

An engine is any object with some of these callables (the API calls them with keyword arguments
exactly as named here; a missing one means "not supported by this engine"):

    lmer(formula, data, *, reml, weights, offset, control, **engine_options) -> MixedFit
    glmer(formula, data, *, family, link, nagq, weights, offset, control,
          **engine_options) -> MixedFit
    bayesglm(formula, data, *, family, link, weights, offset, prior_mean, prior_scale, prior_df,
             prior_mean_for_intercept, prior_scale_for_intercept, prior_df_for_intercept,
             min_prior_scale, scaled, drop_baseline, maxit, epsilon, dispersion,
             **engine_options) -> BayesGLMFit
    lmer_objective(formula, data, *, theta, reml, weights, offset, **engine_options) -> float
    glmer_objective(formula, data, *, theta, beta, family, link, nagq, weights, offset, control,
                    **engine_options) -> float

The public calls check every argument first (`mixbridge.checks`); `control` arrives with
`mixbridge.control`'s keys, checked and normalized, for the built-in engines. The built-in
"python" engine also receives `frame=`: the model frame the input checks already
evaluated (`mixbridge.formula.frames.ModelFrame`), so the data are read and factorized once.

Built-in engines are imported lazily, so `import mixbridge` stays cheap and never starts R.
Third-party implementations plug in with `register("name", obj)` and can then be used as
`mixbridge.lmer(..., engine="name")` and in `mixbridge.compare`.
"""

from __future__ import annotations

import importlib
from typing import Any

from mixbridge.errors import ArgumentError

# name -> module path (imported on first use) or an already-registered object
_BUILTIN: dict[str, str] = {
    "python": "mixbridge.python_impl.engine",
    "r": "mixbridge.bridge",
    "statsmodels": "mixbridge.conformance.adapters.statsmodels_engine",
    "glmm": "mixbridge.conformance.adapters.glmm_engine",
    "mixedlm": "mixbridge.conformance.adapters.mixedlm_engine",
}
_REGISTERED: dict[str, Any] = {}


def register(name: str, engine: Any) -> None:
    """Make `engine` available as `engine=name` in every fitting call."""
    _REGISTERED[name] = engine


def available() -> list[str]:
    return sorted(set(_BUILTIN) | set(_REGISTERED))


def get(name: str) -> Any:
    if not isinstance(name, str):
        raise ArgumentError(f"engine must be an engine name (str), got {name!r}", "engine")
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name not in _BUILTIN:
        raise ArgumentError(
            f"unknown engine {name!r}; available: {', '.join(available())}", "engine"
        )
    return importlib.import_module(_BUILTIN[name])


def call(name: str, model: str, *args: Any, **kwargs: Any) -> Any:
    """Call `model` ("lmer", "glmer", ...) on engine `name`, with a clear error if unsupported."""
    engine = get(name)
    fn = getattr(engine, model, None)
    if fn is None:
        raise ArgumentError(f"engine {name!r} does not support {model}()", "engine")
    return fn(*args, **kwargs)
