"""The embedded R session (rpy2, low-level `rinterface` only).

R starts on first use. Embedded R is single-threaded, so every call into it, including the
conversion of its results, holds ONE process-wide re-entrant lock. Only `rinterface` is used:
no pandas2ri / numpy2ri conversion contexts (slow, and they do not follow threads).

A running call can be stopped from outside (a `timeout`, or Ctrl-C in the main thread): R is
asked to interrupt itself at its next interrupt check, unwinds to the top level, and its session
stays usable for the next call.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import warnings
from typing import Any

import numpy as np

from mixbridge.bridge import locate
from mixbridge.bridge.convert import NA_INTEGER, Column
from mixbridge.errors import RModelError, RNotAvailableError, RTimeoutError

LOCK = threading.RLock()
_STATE: dict[str, Any] = {}


def _rpy2_cannot_load(exc: BaseException) -> RNotAvailableError:
    """The error for an rpy2 that is installed but cannot load this R (or R is missing)."""
    text = str(exc).strip()
    symbol = re.search(r"undefined symbol:? (\w+)", text)
    detail = f"undefined symbol {symbol.group(1)}" if symbol else f"{type(exc).__name__}: {text}"
    r_version = locate.r_version()
    if r_version is None:
        return RNotAvailableError(
            f"rpy2 cannot load R, and no R was found ({detail[:300]})",
            missing=["R"],
            install=locate.install_r_hint(),
        )
    rpy2 = locate.rpy2_version() or "(unknown version)"
    return RNotAvailableError(
        f"rpy2 {rpy2} cannot load R {r_version} ({detail[:300]}): rpy2 3.6.7 and later need "
        f"R >= 4.5, older R needs rpy2 {locate.RPY2_FOR_OLD_R}; transport='subprocess' needs "
        "no rpy2",
        missing=["rpy2"],
        install=locate.rpy2_install_hint(r_version),
    )


def _import_rinterface() -> Any:
    if locate.rpy2_version() is None:
        raise RNotAvailableError(
            "rpy2 is not installed; the embedded R transport needs it "
            "(transport='subprocess' needs only Rscript)",
            missing=["rpy2"],
            install=locate.rpy2_install_hint(locate.r_version()),
        )
    try:
        import rpy2.rinterface as ri
    except Exception as exc:  # ImportError, cffi's error (a missing symbol), OSError, ...
        raise _rpy2_cannot_load(exc) from exc
    return ri


def session() -> tuple[Any, Any]:
    """(rinterface module, environment holding the mb_* functions); starts R once.

    Raises RNotAvailableError (never exits the process) when R cannot start: `missing` is
    ["rpy2"] when rpy2 is the problem (absent, or built for another R), ["R_HOME"] for a wrong
    R_HOME, ["R"] or the R packages otherwise.
    """
    with LOCK:
        if "env" in _STATE:
            if not _STATE["ri"].embedded.isready():
                # rpy2's endr() ended R; R cannot start twice in one process
                raise RNotAvailableError(
                    "the embedded R session has ended (rpy2's endr()) and R cannot be started "
                    "again in this process; fit fields not read before then (see "
                    "fit.deferred_fields()) cannot be fetched. Use transport='subprocess', or "
                    "call fit.fetch_deferred() before ending R",
                    missing=["R"],
                    install="start a new Python process",
                )
            return _STATE["ri"], _STATE["env"]
        problem = locate.r_home_problem()
        if problem:
            # rpy2 would start R there, and R would exit the whole process.
            raise RNotAvailableError(problem, missing=["R_HOME"], install=locate.r_home_fix())
        if "failure" in _STATE:  # importing a broken rpy2 again is slow and noisy
            raise _STATE["failure"]
        # rpy2 puts R's and the system library folders first on LD_LIBRARY_PATH while loading
        # libR; left there, every process this Python starts afterwards (Dask workers,
        # benchmark workers) loads the system libpython and fails. Restore it once R is up.
        saved_library_path = os.environ.get("LD_LIBRARY_PATH")
        try:
            ri = _import_rinterface()
            with warnings.catch_warnings():
                # Starting R from a worker thread only means rpy2 cannot take over SIGINT; the
                # bridge handles Ctrl-C itself (_Interrupt).
                warnings.filterwarnings("ignore", message="R is not initialized by the main")
                ri.initr_simple()
        except RNotAvailableError as exc:
            if "rpy2" in exc.missing:
                _STATE["failure"] = exc
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
        from rpy2.rinterface_lib import openrlib

        logging.getLogger("rpy2.rinterface_lib.callbacks").addFilter(_drop_blank_console_writes)
        _STATE["rlib"] = openrlib.rlib
        _STATE["ri"] = ri
        _STATE["env"] = env
        return ri, env


# ---------------------------------------------------------------------------------------------
# Stopping a running call


def _drop_blank_console_writes(record: logging.LogRecord) -> bool:
    """rpy2 logs R's stderr; an interrupted R writes a bare newline there, which says nothing."""
    return bool(str(record.getMessage()).removeprefix("R[write to console]:").strip())


class _Interrupt:
    """Asks R to interrupt itself after `timeout` seconds or on Ctrl-C (main thread only).

    R polls `R_interrupts_pending` at its interrupt checks (the evaluator does so every few
    hundred steps) and then unwinds to the top level: the call fails, the session stays usable.
    rpy2's own Ctrl-C path cannot be used: Python raises KeyboardInterrupt inside whichever R
    callback runs next, where it can only be printed and dropped, and R carries on.
    """

    def __init__(self, rlib: Any, timeout: float | None) -> None:
        self.rlib = rlib
        self.timeout = timeout
        self.reason: str | None = None  # "timeout" or "sigint"
        self._lock = threading.Lock()
        self._active = False
        self._timer: threading.Timer | None = None
        self._previous_handler: Any = None

    def _request(self, reason: str) -> None:
        with self._lock:
            if not self._active:
                return
            if self.reason is None:
                self.reason = reason
            self.rlib.R_interrupts_pending = 1

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self._request("sigint")

    def __enter__(self) -> _Interrupt:
        self._active = True
        if self.timeout is not None:
            self._timer = threading.Timer(self.timeout, self._request, ("timeout",))
            self._timer.daemon = True
            self._timer.start()
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            if callable(previous):  # SIG_IGN / SIG_DFL: the user's choice, left alone
                self._previous_handler = previous
                signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        with self._lock:
            self._active = False
            # A request that came after R's last interrupt check must not stop the next call.
            self.rlib.R_interrupts_pending = 0
        if self._timer is not None:
            self._timer.cancel()
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)

    def deliver_sigint(self, interrupted: bool) -> None:
        """After the call: hand a Ctrl-C received during it to the handler it was meant for.

        `interrupted`: R was stopped, so there is no result; KeyboardInterrupt if the user's
        own handler does not raise.
        """
        if self.reason != "sigint":
            return
        handler = self._previous_handler
        if handler is not None and handler is not signal.default_int_handler:
            handler(signal.SIGINT, None)
            if not interrupted:
                return
        raise KeyboardInterrupt


def _invoke(ri: Any, fn: Any, args: list[Any], kwargs: dict[str, Any], function: str,
            timeout: float | None) -> Any:  # fmt: skip
    """fn(*args, **kwargs) in R, stoppable by `timeout` and Ctrl-C; R errors as RModelError."""
    interrupt = _Interrupt(_STATE["rlib"], timeout)
    try:
        with interrupt:
            res = fn(*args, **kwargs)
    except ri.embedded.RRuntimeError as exc:
        interrupt.deliver_sigint(interrupted=True)
        if interrupt.reason == "timeout":
            raise RTimeoutError(
                f"R did not finish {function} within {timeout:g} s; it was interrupted and the "
                "embedded R session remains usable",
                timeout=float(timeout or 0.0),
                function=function,
                transport="embedded",
            ) from None
        # The mb_* functions catch R errors themselves; this is a failure around them.
        raise RModelError(str(exc).strip(), function=function) from None
    interrupt.deliver_sigint(interrupted=False)
    return res


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
    args = [
        ri.ListSexpVector(vecs),
        ri.StrSexpVector([c.name for c in columns]),
        ri.StrSexpVector([c.kind for c in columns]),
        levels,
        ri.IntSexpVector([nrow]),
    ]
    with LOCK:
        return _invoke(ri, env.find("mb_make_df"), args, {}, "mb_make_df", timeout=None)


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


def call(function: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> dict[str, Any]:
    """Call an mb_* entry point; returns the decoded {ok, value, messages, error} list.

    `timeout` (seconds): interrupt R after that long (RTimeoutError). Ctrl-C interrupts R too
    and raises KeyboardInterrupt; either way the session stays usable.
    """
    with LOCK:
        ri, env = session()
        fn = env.find(function)
        r_args = [to_r(ri, a) for a in args]
        r_kwargs = {k: to_r(ri, v) for k, v in kwargs.items()}
        res = _invoke(ri, fn, r_args, r_kwargs, function, timeout)
        return from_r(ri, res)
