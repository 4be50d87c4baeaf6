"""The embedded R session (rpy2, low-level `rinterface` only).

R starts on first use. Embedded R is single-threaded, so every call into it, including the
conversion of its results, holds ONE process-wide re-entrant lock. Only `rinterface` is used:
no pandas2ri / numpy2ri conversion contexts (slow, and they do not follow threads).
"""

from __future__ import annotations

import os
import threading
import warnings
from typing import Any

import numpy as np

from mixbridge.bridge import locate
from mixbridge.bridge.convert import NA_INTEGER, Column
from mixbridge.errors import RModelError, RNotAvailableError

LOCK = threading.RLock()
_STATE: dict[str, Any] = {}


def _import_rinterface() -> Any:
    try:
        import rpy2.rinterface as ri
    except ImportError as exc:
        raise RNotAvailableError(
            f"rpy2 cannot be imported ({exc}); the embedded R transport needs it "
            "(transport='subprocess' needs only Rscript)",
            missing=["rpy2"],
            install=locate.RPY2_INSTALL,
        ) from exc
    except Exception as exc:  # rpy2 raises various errors when it cannot find/load libR
        raise RNotAvailableError(
            f"rpy2 failed to load R ({type(exc).__name__}: {exc})",
            missing=["R"],
            install=locate.install_r_hint(),
        ) from exc
    return ri


def session() -> tuple[Any, Any]:
    """(rinterface module, environment holding the mb_* functions); starts R once."""
    with LOCK:
        if "env" in _STATE:
            return _STATE["ri"], _STATE["env"]
        # rpy2 puts R's and the system library folders first on LD_LIBRARY_PATH while loading
        # libR; left there, every process this Python starts afterwards (Dask workers,
        # benchmark workers) loads the system libpython and fails. Restore it once R is up.
        saved_library_path = os.environ.get("LD_LIBRARY_PATH")
        r_home = os.environ.get("R_HOME")
        if r_home and not os.path.isdir(r_home):
            # rpy2 would otherwise let R abort the whole Python process
            raise RNotAvailableError(
                f"R_HOME points at {r_home!r}, which is not a directory",
                missing=["R"],
                install="unset R_HOME, or set it to the output of `R RHOME`",
            )
        try:
            ri = _import_rinterface()
            with warnings.catch_warnings():
                # Starting R from a worker thread only means Ctrl-C cannot interrupt R.
                warnings.filterwarnings("ignore", message="R is not initialized by the main")
                ri.initr_simple()
        except RNotAvailableError:
            raise
        except Exception as exc:
            raise RNotAvailableError(
                f"embedded R failed to start ({type(exc).__name__}: {exc})",
                missing=["R"],
                install=locate.install_r_hint(),
            ) from exc
        finally:
            if saved_library_path is None:
                os.environ.pop("LD_LIBRARY_PATH", None)
            else:
                os.environ["LD_LIBRARY_PATH"] = saved_library_path
        probe = ri.evalr(
            "local({p <- c('lme4', 'arm', 'Matrix');"
            " p[!nzchar(vapply(p, function(x) system.file(package = x), ''))]})"
        )
        missing = [str(p) for p in probe]
        if missing:
            raise RNotAvailableError(
                f"R packages missing in the embedded R: {', '.join(missing)}",
                missing=missing,
                install=locate.install_packages_hint(missing),
            )
        env = ri.evalr("new.env(parent = globalenv())")
        ri.baseenv["sys.source"](ri.StrSexpVector([locate.script_path("mixbridge.R")]), envir=env)
        _STATE["ri"] = ri
        _STATE["env"] = env
        return ri, env


# ---------------------------------------------------------------------------------------------
# Python -> R


def to_r(ri: Any, value: Any) -> Any:
    """A Python argument as an R object (scalars, sequences, dicts as named lists)."""
    if value is None:
        return ri.NULL
    if isinstance(value, ri.Sexp):
        return value
    if isinstance(value, (bool, np.bool_)):
        return ri.BoolSexpVector([bool(value)])
    if isinstance(value, (int, np.integer)):
        return ri.IntSexpVector([int(value)])
    if isinstance(value, (float, np.floating)):
        return ri.FloatSexpVector([float(value)])
    if isinstance(value, str):
        return ri.StrSexpVector([value])
    if isinstance(value, dict):
        return ri.baseenv["list"](**{k: to_r(ri, v) for k, v in value.items()})
    seq = list(value)
    if all(isinstance(v, str) for v in seq):
        return ri.StrSexpVector(seq)
    return ri.FloatSexpVector.from_memoryview(memoryview(np.asarray(seq, dtype=np.float64)))


def data_frame(ri: Any, env: Any, columns: list[Column], nrow: int) -> Any:
    """An R data.frame built from the encoded columns (one memory copy per column)."""
    vecs = []
    for c in columns:
        v = np.ascontiguousarray(c.values)
        if c.kind == "double":
            vecs.append(ri.FloatSexpVector.from_memoryview(memoryview(v)))
        else:
            vecs.append(ri.IntSexpVector.from_memoryview(memoryview(v)))
    levels = ri.ListSexpVector([ri.StrSexpVector(list(c.levels)) for c in columns])
    try:
        return env.find("mb_make_df")(
            ri.ListSexpVector(vecs),
            ri.StrSexpVector([c.name for c in columns]),
            ri.StrSexpVector([c.kind for c in columns]),
            levels,
            ri.IntSexpVector([nrow]),
        )
    except ri.embedded.RRuntimeError as exc:
        raise RModelError(str(exc).strip(), function="mb_make_df") from None


# ---------------------------------------------------------------------------------------------
# R -> Python (the same plain structure the subprocess transport decodes from JSON)


def from_r(ri: Any, x: Any) -> Any:
    """Nested lists -> dict/list; doubles -> float64 arrays; ints/logicals/strings -> lists.

    NA becomes None in int/logical/string vectors; closures are returned as they are.
    """
    if x is ri.NULL or isinstance(x, type(ri.NULL)):
        return None
    if isinstance(x, ri.ListSexpVector):
        names = x.names
        items = [from_r(ri, v) for v in x]
        if names is ri.NULL or isinstance(names, type(ri.NULL)):
            return items
        return dict(zip([str(n) for n in names], items, strict=True))
    if isinstance(x, ri.FloatSexpVector):
        return np.array(x.memoryview(), dtype=np.float64) if len(x) else np.zeros(0)
    if isinstance(x, (ri.IntSexpVector, ri.BoolSexpVector)):
        if len(x) == 0:
            return []
        arr = np.array(x.memoryview(), dtype=np.int64)
        out: list[Any] = arr.tolist()
        if (arr == NA_INTEGER).any():
            out = [None if v == NA_INTEGER else v for v in out]
        if isinstance(x, ri.BoolSexpVector):
            out = [None if v is None else bool(v) for v in out]
        return out
    if isinstance(x, ri.StrSexpVector):
        return [None if v is ri.NA_Character else str(v) for v in x]
    return x


def call(function: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Call an mb_* entry point; returns the decoded {ok, value, messages, error} list."""
    with LOCK:
        ri, env = session()
        fn = env.find(function)
        r_args = [to_r(ri, a) for a in args]
        r_kwargs = {k: to_r(ri, v) for k, v in kwargs.items()}
        try:
            res = fn(*r_args, **r_kwargs)
        except ri.embedded.RRuntimeError as exc:
            # The mb_* functions catch R errors themselves; this is a failure around them.
            raise RModelError(str(exc).strip(), function=function) from None
        return from_r(ri, res)
