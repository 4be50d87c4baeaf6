"""Control settings (`control=`): one set of keys, each with one meaning on every engine.

Every key is named and typed here once. The public calls check `control=` with `check_control`
before any engine runs: an unknown key, a key of another model, a value of the wrong type, or a
key the chosen engine cannot honour is an `ArgumentError` naming the key; nothing is ignored.
The R side maps the keys to lme4's arguments (r_scripts/mixbridge.R: `.mb_lmer_control`,
`.mb_glmer_control`, `start=`).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mixbridge.errors import ArgumentError

# lme4's optimizers the R engine can use (lmerControl/glmerControl `optimizer`)
R_OPTIMIZERS = ("nloptwrap", "bobyqa", "Nelder_Mead", "nlminbwrap")
ENGINES_CHECKED = ("python", "r")  # other engines document their own settings


@dataclass(frozen=True)
class ControlKey:
    """One control setting. `kind`: flag, count (integer >= 1), positive, nonnegative, theta
    (vector of finite numbers) or optimizer. `python` / `r`: the models each engine honours it
    for (empty: not available there, with `why`)."""

    kind: str
    models: tuple[str, ...]
    python: tuple[str, ...]
    r: tuple[str, ...]
    meaning: str
    why: str = ""


_BOTH = ("lmer", "glmer")
CONTROL_KEYS: dict[str, ControlKey] = {
    "start": ControlKey(
        "theta", ("lmer",), ("lmer",), ("lmer",), "starting θ, in lme4's order (lmer's start=)"
    ),
    "maxeval": ControlKey(
        "count",
        _BOTH,
        ("lmer",),
        _BOTH,
        "the optimizer's limit on criterion evaluations (lme4: optCtrl maxeval / maxfun / "
        "eval.max, by optimizer)",
        why="the Python glmer optimizer has no evaluation limit setting",
    ),
    "restart_edge": ControlKey(
        "flag",
        ("lmer",),
        ("lmer",),
        ("lmer",),
        "restart the optimizer once from a boundary solution (lmerControl restart_edge; lme4 "
        "implements it for lmer only)",
    ),
    "boundary_tol": ControlKey(
        "nonnegative",
        _BOTH,
        ("lmer",),
        _BOTH,
        "snap θ within this distance of its bound to the bound when that is no worse "
        "(boundary.tol; 0 switches it off)",
        why="the Python glmer uses lme4's default 1e-5",
    ),
    "calc_derivs": ControlKey(
        "flag",
        _BOTH,
        ("lmer",),
        _BOTH,
        "compute the gradient and Hessian at the optimum for the convergence checks (calc.derivs)",
        why="the Python glmer always runs its convergence checks",
    ),
    "optimizer": ControlKey(
        "optimizer",
        _BOTH,
        (),
        _BOTH,
        f"lme4's optimizer: one of {', '.join(R_OPTIMIZERS)} (glmer: one or two, per stage)",
        why="the Python engine has its own optimizer",
    ),
    "cond_var": ControlKey(
        "flag",
        _BOTH,
        _BOTH,
        _BOTH,
        "False: skip the conditional variances (fit.cond_var stays empty); lme4's condVar can "
        "cost more than the fit",
    ),
    "tol_pwrss": ControlKey(
        "positive", ("glmer",), ("glmer",), ("glmer",), "PIRLS convergence tolerance (tolPwrss)"
    ),
    "nagq0_init_step": ControlKey(
        "flag",
        ("glmer",),
        (),
        ("glmer",),
        "run the nAGQ = 0 stage before the Laplace/AGQ stage (nAGQ0initStep)",
        why="the Python glmer always runs that stage",
    ),
    "maxit": ControlKey(
        "count",
        ("glmer",),
        ("glmer",),
        (),
        "PIRLS iteration limit (default 100)",
        why="lme4's glmer() fixes the PIRLS iteration limit at 100",
    ),
}

# lme4 spellings and near misses, for the error message
_HINTS = {
    "maxfun": "maxeval",
    "eval.max": "maxeval",
    "tolPwrss": "tol_pwrss",
    "boundary.tol": "boundary_tol",
    "calc.derivs": "calc_derivs",
    "nAGQ0initStep": "nagq0_init_step",
    "condVar": "cond_var",
}


def known_keys(model: str) -> list[str]:
    return [k for k, spec in CONTROL_KEYS.items() if model in spec.models]


def check_control(
    model: str, control: Mapping[str, Any] | None, engine: str = "python"
) -> dict[str, Any]:
    """`control` checked for `model` ("lmer" or "glmer") on `engine`, values normalized (flags
    as bool, counts as int, numbers as float, start as a float array, optimizer as a list).

    Engines other than "python" and "r" get the mapping as given (their own settings)."""
    if control is None:
        return {}
    if not isinstance(control, Mapping):
        raise ArgumentError(
            f"control must be a dict of settings, got {type(control).__name__}", "control"
        )
    if engine not in ENGINES_CHECKED:
        return dict(control)
    out: dict[str, Any] = {}
    for key, value in control.items():
        spec = CONTROL_KEYS.get(key) if isinstance(key, str) else None
        if spec is None or model not in spec.models:
            raise ArgumentError(_unknown(model, key, spec), str(key))
        supported = spec.python if engine == "python" else spec.r
        if model not in supported:
            reason = f" ({spec.why})" if spec.why else ""
            raise ArgumentError(
                f"control[{key!r}] is not available on engine={engine!r} for {model}{reason}",
                key,
            )
        out[key] = _value(key, spec, value, model)
    return out


def _unknown(model: str, key: Any, spec: ControlKey | None) -> str:
    if spec is not None:
        return f"control[{key!r}] applies to {' and '.join(spec.models)}, not {model}"
    known = known_keys(model)
    text = f"unknown control key {key!r} for {model}; known: {', '.join(known)}"
    hint = _HINTS.get(key) if isinstance(key, str) else None
    if hint is None and isinstance(key, str):
        close = difflib.get_close_matches(key.lower().replace(".", "_"), list(CONTROL_KEYS), n=1)
        hint = close[0] if close else None
    if hint is None:
        return text
    where = "" if hint in known else f", a {' and '.join(CONTROL_KEYS[hint].models)} setting"
    return f"{text} (did you mean {hint!r}{where}?)"


def _value(key: str, spec: ControlKey, value: Any, model: str) -> Any:
    kind = spec.kind
    if kind == "flag":
        if not isinstance(value, (bool, np.bool_)):
            raise ArgumentError(f"control[{key!r}] must be True or False, got {value!r}", key)
        return bool(value)
    if kind == "count":
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise ArgumentError(f"control[{key!r}] must be an integer >= 1, got {value!r}", key)
        if value < 1:
            raise ArgumentError(f"control[{key!r}] must be an integer >= 1, got {value!r}", key)
        return int(value)
    if kind in ("positive", "nonnegative"):
        ok_type = isinstance(value, (int, float, np.integer, np.floating))
        if isinstance(value, (bool, np.bool_)) or not ok_type:
            raise ArgumentError(f"control[{key!r}] must be a number, got {value!r}", key)
        v = float(value)
        if not math.isfinite(v) or v < 0 or (kind == "positive" and v == 0):
            need = "> 0" if kind == "positive" else ">= 0"
            raise ArgumentError(f"control[{key!r}] must be a finite number {need}, got {v!r}", key)
        return v
    if kind == "theta":
        return _theta(key, value)
    names = [value] if isinstance(value, str) else value
    most = 2 if model == "glmer" else 1
    if (
        not isinstance(names, (list, tuple))
        or not 1 <= len(names) <= most
        or any(not isinstance(n, str) or n not in R_OPTIMIZERS for n in names)
    ):
        raise ArgumentError(
            f"control['optimizer'] must be one of {', '.join(R_OPTIMIZERS)}"
            f"{' (or a list of two, one per stage)' if model == 'glmer' else ''}, got {value!r}",
            key,
        )
    return list(names)


def _theta(key: str, value: Any) -> np.ndarray:
    bad = ArgumentError(
        f"control[{key!r}] must be a vector of finite numbers (θ in lme4's order), got {value!r}",
        key,
    )
    if isinstance(value, (str, bytes, Mapping)) or isinstance(value, (bool, np.bool_)):
        raise bad
    try:
        arr = np.atleast_1d(np.asarray(value, dtype=float))
    except (TypeError, ValueError):
        raise bad from None
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)):
        raise bad
    if np.asarray(value).dtype == bool:
        raise bad
    return arr
