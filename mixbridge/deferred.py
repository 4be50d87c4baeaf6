"""Deferred fields of the result types (`mixbridge.results`): a field whose value may be computed
when first read.

A result type declares which of its fields may be deferred (`DeferredField`). An engine may
give such a field a `Deferred(fetch)` instead of its value: the first read runs `fetch` once,
under the Deferred's lock, stores the value in the field and returns it; every later read is a
plain attribute read. `DeferredFields` (the result types' base) names the fields not fetched
yet, fetches them on demand, and makes copies and pickles carry values.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Generic, TypeVar

from mixbridge.errors import ArgumentError

T = TypeVar("T")


class Deferred(Generic[T]):
    """A field value computed when first read: `fetch()` runs once, under `lock`.

    `lock`: the lock the fetch needs anyway (the R engine passes the embedded R session's lock,
    so a fetch never waits on a second lock while holding R's); default a lock of its own.
    `source` says where the value comes from (shown by repr before it is fetched). A fetch that
    raises leaves the Deferred unfetched: the next read tries again. Once fetched, the Deferred
    drops `fetch` and with it whatever it held (e.g. the R object).
    """

    def __init__(
        self,
        fetch: Callable[[], T],
        *,
        lock: AbstractContextManager[Any] | None = None,
        source: str = "",
    ) -> None:
        self._fetch: Callable[[], T] | None = fetch
        self._lock = lock if lock is not None else threading.Lock()
        self._value: T | None = None
        self.source = source

    @property
    def fetched(self) -> bool:
        return self._fetch is None

    def get(self) -> T:
        """The value, fetched now if it was not yet."""
        if self._fetch is not None:
            with self._lock:
                if self._fetch is not None:  # another thread may have fetched it meanwhile
                    self._value = self._fetch()
                    self._fetch = None
        return self._value  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"<deferred: {self.source or 'not fetched yet'}>"


class DeferredField:
    """A dataclass field that may hold a `Deferred`: the first read fetches and stores the value.

    Declared in the class body as `name: type = DeferredField()`; the field stays required in
    the constructor (reading the descriptor on the class raises AttributeError, which dataclasses
    take as "no default").
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            raise AttributeError(self.name)
        try:
            value = obj.__dict__[self.name]
        except KeyError:
            raise AttributeError(self.name) from None
        if isinstance(value, Deferred):
            fetched = value.get()
            if obj.__dict__.get(self.name) is value:  # unless set anew meanwhile
                obj.__dict__[self.name] = fetched
            return fetched
        return value

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self.name] = value


class DeferredFields:
    """What a result type with `DeferredField`s offers: which fields are not fetched yet, fetch
    them now, and copies and pickles that carry values (the fetched ones)."""

    # fields holding the engine's functions: not pickled (see __getstate__); each holds an
    # object that is false when empty and whose type() is its empty value (FitMethods)
    _HOOKS: ClassVar[tuple[str, ...]] = ()

    def deferred_fields(self) -> tuple[str, ...]:
        """Names of the fields whose value has not been fetched yet."""
        return tuple(
            name
            for name, value in self.__dict__.items()
            if isinstance(value, Deferred) and not value.fetched
        )

    def fetch_deferred(self, *names: str) -> None:
        """Fetch these deferred fields now (all of them when none are named), e.g. before the
        engine's session goes away. Fields that hold their value already are left alone."""
        for name in names or self.deferred_fields():
            if not isinstance(type(self).__dict__.get(name), DeferredField):
                raise ArgumentError(f"{type(self).__name__} has no deferred field {name!r}", name)
            getattr(self, name)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled: every field with its value (deferred ones fetched first). The engine's
        functions (objective, predict, simulate) are closures over the engine's live state and
        stay in the process that fitted: an unpickled fit has all fields, not those methods."""
        self.fetch_deferred()
        state = dict(self.__dict__)
        dropped = [hook for hook in self._HOOKS if state.get(hook)]
        for hook in dropped:
            state[hook] = type(state[hook])()
        if dropped:
            state["_unpickled_without"] = tuple(dropped)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __copy__(self) -> Any:
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)  # shares the Deferreds: a fetch serves both
        return new

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        self.fetch_deferred()
        new = object.__new__(type(self))
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            # the engine's functions are shared, not copied (closures over live state)
            new.__dict__[key] = value if key in self._HOOKS else copy.deepcopy(value, memo)
        return new

    def missing_engine_function(self, what: str, hook: str = "methods") -> NotImplementedError:
        """The error to raise when the engine attached no function for `what` (objective,
        predict, simulate, tests: e.g. "predict()") in the hook field `hook`: an unpickled fit
        says the functions stayed in the fitting process, any other that the engine lacks it."""
        engine = self.__dict__.get("engine")
        if hook in self.__dict__.get("_unpickled_without", ()):
            return NotImplementedError(
                f"{what} is not available on an unpickled fit: engine {engine!r}'s functions "
                "stay in the process that fitted it (every field was pickled)"
            )
        return NotImplementedError(f"engine {engine!r} does not implement {what}")

    def __repr__(self) -> str:
        shown = []
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if not f.repr:
                continue
            raw = self.__dict__.get(f.name)
            shown.append(f"{f.name}={raw!r}")  # a Deferred shows as <deferred: ...>
        return f"{type(self).__name__}({', '.join(shown)})"
