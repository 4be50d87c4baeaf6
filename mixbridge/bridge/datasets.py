"""Data sets from installed R packages as pandas DataFrames (cached per process).

Factors become pandas Categoricals with R's level order (ordered factors stay ordered), integer
columns stay integers (floats when they hold NA), logicals become booleans (object with None
when they hold NA).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pandas as pd

from mixbridge.bridge import build, resolve_transport

_CACHE: dict[tuple[str, str], pd.DataFrame] = {}
_CACHE_LOCK = threading.Lock()


def _column(spec: dict[str, Any]) -> Any:
    kind = spec["kind"][0]
    values = spec["values"]
    if kind in ("factor", "ordered"):
        codes = np.array([-1 if v is None else v - 1 for v in values], dtype=np.int64)
        return pd.Categorical.from_codes(
            codes, categories=list(spec["levels"]), ordered=(kind == "ordered")
        )
    if kind == "double":
        return np.asarray(values, dtype=np.float64)
    if kind == "integer":
        if any(v is None for v in values):
            return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        return np.asarray(values, dtype=np.int64)
    if kind == "logical":
        if any(v is None for v in values):
            return pd.array([None if v is None else bool(v) for v in values], dtype="boolean")
        return np.asarray(values, dtype=bool)
    return np.asarray(values, dtype=object)


def load_r_dataset(name: str, package: str = "lme4", transport: str | None = None) -> pd.DataFrame:
    """`data(name, package = package)` from R as a DataFrame (a fresh copy each call).

    transport: "embedded", "subprocess", or None: embedded when rpy2 can start R, else
    subprocess.
    """
    key = (name, package)
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key].copy()
    transport, _ = resolve_transport(transport)
    if transport == "subprocess":
        from mixbridge.bridge import subproc

        res = subproc.call("mb_dataset", {"name": name, "package": package})
    else:
        from mixbridge.bridge import embedded

        res = embedded.call("mb_dataset", name=name, package=package)
    value = build.check(res, "load_r_dataset")
    frame = pd.DataFrame(
        {str(n): _column(c) for n, c in zip(value["names"], value["columns"], strict=True)}
    )
    with _CACHE_LOCK:
        _CACHE[key] = frame
    return frame.copy()
