"""Exception and warning types shared by every engine.

Errors are structured: each carries the fields a caller needs (what is missing, R's message and
call, the offending token or column) besides a readable message.
"""

from __future__ import annotations


class MixbridgeError(Exception):
    """Base class of every mixbridge error."""


class FormulaError(MixbridgeError, ValueError):
    """A formula is malformed, uses a function that is not allowed, or names unknown variables.

    `token` is the offending piece of the formula, when there is one.
    """

    def __init__(self, message: str, token: str | None = None) -> None:
        super().__init__(message)
        self.token = token


class DataError(MixbridgeError, ValueError):
    """The data cannot be fitted as given: missing columns, empty data, a bad response or factor.

    `column` names the offending column or argument, when there is one.
    """

    def __init__(self, message: str, column: str | None = None) -> None:
        super().__init__(message)
        self.column = column


class ArgumentError(MixbridgeError, TypeError):
    """An unknown, misspelled or invalid keyword argument."""

    def __init__(self, message: str, argument: str | None = None) -> None:
        super().__init__(message)
        self.argument = argument


class RNotAvailableError(MixbridgeError, RuntimeError):
    """R, an R package, rpy2 or Rscript is missing. `missing` lists what; `install` is the fix."""

    def __init__(self, message: str, missing: list[str] | None = None, install: str = "") -> None:
        full = message if not install else f"{message}\nTo fix: {install}"
        super().__init__(full)
        self.missing = list(missing or [])
        self.install = install


class RModelError(MixbridgeError, RuntimeError):
    """R raised an error while fitting. Carries R's full message and the call that raised it."""

    def __init__(self, r_message: str, r_call: str = "", function: str = "") -> None:
        where = f" in {r_call}" if r_call else ""
        super().__init__(f"R error{where}: {r_message}")
        self.r_message = r_message
        self.r_call = r_call
        self.function = function


class RTimeoutError(MixbridgeError, TimeoutError):
    """An R call did not finish within `timeout` seconds and was stopped.

    The subprocess transport kills its Rscript process; the embedded one interrupts R, whose
    session stays usable. `function` is the bridge entry point, `transport` the transport.
    """

    def __init__(self, message: str, timeout: float, function: str = "", transport: str = ""):
        super().__init__(message)
        self.timeout = timeout
        self.function = function
        self.transport = transport


class RBridgeError(MixbridgeError, RuntimeError):
    """The bridge could not talk to R: its process died, or its response could not be read.

    Not an error of the model (that is `RModelError`). `function` is the bridge entry point.
    """

    def __init__(self, message: str, function: str = "") -> None:
        super().__init__(message)
        self.function = function


class ConvergenceError(MixbridgeError, RuntimeError):
    """An inner iteration (PIRLS, IRLS) failed in a way that leaves no usable estimate."""


class RWarning(UserWarning):
    """A warning raised inside R, re-emitted in Python (the fit's `messages` hold the same)."""


class MixbridgeWarning(UserWarning):
    """A warning raised by a Python engine (the fit's `messages` hold the same)."""
