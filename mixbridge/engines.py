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
    glmer_nb(formula, data, *, link, nagq, weights, offset, control, theta_start,
             **engine_options) -> MixedFit

glmer and glmer_objective also take `nb_theta` (family "negative.binomial").

The public calls check every argument first (`mixbridge.checks`); `control` arrives with
`mixbridge.control`'s keys, checked and normalized, for the built-in engines. The built-in
"python" engine also receives `frame=`: the model frame the input checks already
evaluated (`mixbridge.formula.frames.ModelFrame`), so the data are read and factorized once.

Each registration says which kinds of data the engine fits (`DATA_KINDS`): "pandas" (every
engine) and "dask" (a Dask DataFrame, passed through as it is; the built-in "python" engine).

Engines are registered by object or by module path (imported on first use), so `import
mixbridge` stays cheap and never starts R. Built in: "python" and "r"; other packages register
their own with `register("name", obj_or_module_path)` (the conformance adapters "statsmodels",
"glmm" and "mixedlm" register themselves when `mixbridge.conformance.adapters` is imported,
which `import mixbridge` does). Then `mixbridge.lmer(..., engine="name")` and
`mixbridge.compare` work with it like any other.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mixbridge.errors import ArgumentError

DATA_KINDS = ("pandas", "dask")


@dataclass(frozen=True)
class _Entry:
    engine: Any  # the engine object, or the path of the module that is the engine
    data: tuple[str, ...]


_REGISTRY: dict[str, _Entry] = {}


def register(name: str, engine: Any, *, data: Iterable[str] = ("pandas",)) -> None:
    """Make `engine` (an object, or a module path imported on first use) available as
    `engine=name` in every fitting call; `data`: the kinds of data it fits (`DATA_KINDS`)."""
    kinds = tuple(data)
    unknown = [k for k in kinds if k not in DATA_KINDS]
    if not isinstance(name, str) or not name or unknown:
        raise ArgumentError(
            f"register() needs an engine name and data kinds from {DATA_KINDS}, got {name!r}, "
            f"{kinds!r}",
            "engine",
        )
    _REGISTRY[name] = _Entry(engine, kinds)


def unregister(name: str) -> None:
    """Remove engine `name` (no error if it is not registered)."""
    _REGISTRY.pop(name, None)


register("python", "mixbridge.python_impl.engine", data=("pandas", "dask"))
register("r", "mixbridge.bridge")


def available() -> list[str]:
    return sorted(_REGISTRY)


def accepts(name: str, kind: str) -> bool:
    """Whether engine `name` fits data of kind `kind` ("pandas", "dask")."""
    entry = _REGISTRY.get(name)
    return entry is not None and kind in entry.data


def get(name: str) -> Any:
    if not isinstance(name, str):
        raise ArgumentError(f"engine must be an engine name (str), got {name!r}", "engine")
    entry = _REGISTRY.get(name)
    if entry is None:
        raise ArgumentError(
            f"unknown engine {name!r}; available: {', '.join(available())}", "engine"
        )
    if isinstance(entry.engine, str):
        return importlib.import_module(entry.engine)
    return entry.engine


def call(name: str, model: str, *args: Any, **kwargs: Any) -> Any:
    """Call `model` ("lmer", "glmer", ...) on engine `name`, with a clear error if unsupported."""
    engine = get(name)
    fn = getattr(engine, model, None)
    if fn is None:
        raise ArgumentError(f"engine {name!r} does not support {model}()", "engine")
    return fn(*args, **kwargs)
