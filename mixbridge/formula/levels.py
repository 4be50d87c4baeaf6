"""How R orders and labels factor levels.

R sorts character levels with the collation of its locale, which R (embedded or Rscript) takes
from the environment: LC_ALL, else LC_COLLATE, else LANG. Verified with R 4.2.2 on Debian:
* unset, "C" or "POSIX": byte order (`strcmp`):  "1" "A" "B" "Z10" "_x" "a" "b" "z2"
  (non-ASCII strings are not meaningful to R in the C locale)
* any other locale, e.g. C.UTF-8 (R is built with ICU, `capabilities("ICU")`): ICU root
  collation, punctuation < digits < letters, letters compared case-insensitively first, then
  lowercase before uppercase:  "_x" "1" "a" "A" "b" "B" "Z10" "z2"
`MIXBRIDGE_COLLATION=c|icu` overrides the detection. The ICU key below reproduces ICU for ASCII
and accented Latin text (with CLDR's order of ASCII punctuation); other scripts and non-ASCII
symbols fall back to code points. A locale that is not installed makes R fall back to C;
that is not detected here.

Speed: only the distinct values are sorted (callers hash the rows first). ASCII labels under ICU
use str.translate keys equivalent to `r_collate_key` (C speed); other text uses the full key.
Numeric levels are formatted vectorized (`r_number_labels`).
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd

from mixbridge.formula.parse import format_r_number

# ICU root (CLDR) order of ASCII punctuation and symbols, which all sort before digits
_PUNCT_ORDER = {c: i for i, c in enumerate("_-,;:!?.'\"()[]{}@*/\\&#%`^+<=>|~$")}


def _primary(ch: str) -> tuple:
    if ch.isspace():
        return (0, ord(ch))
    if ch.isdigit():
        return (2, ch)
    if ch.isalpha():
        return (3, ch.casefold())
    return (1, _PUNCT_ORDER.get(ch, len(_PUNCT_ORDER) + ord(ch)))


def r_collate_key(s: str) -> tuple:
    """Sort key approximating R's ICU root collation of strings."""
    base = unicodedata.normalize("NFD", s)
    letters = [c for c in base if not unicodedata.combining(c)]
    primary = tuple(_primary(c) for c in letters)
    secondary = tuple(unicodedata.combining(c) for c in base)
    # tertiary: at equal spelling, lowercase sorts first (ICU's default caseFirst=off)
    tertiary = tuple(1 if c.isupper() else 0 for c in letters)
    return (primary, secondary, tertiary, s)


def r_collation() -> str:
    """ "c" or "icu": the collation R started from this process's environment would use."""
    forced = os.environ.get("MIXBRIDGE_COLLATION", "").lower()
    if forced in ("c", "icu"):
        return forced
    for var in ("LC_ALL", "LC_COLLATE", "LANG"):
        value = os.environ.get(var, "")
        if value:
            return "c" if value in ("C", "POSIX") else "icu"
    return "c"


def _ascii_tables() -> tuple[dict[int, str], dict[int, str]]:
    """str.translate tables giving, for ASCII text, strings that sort like r_collate_key.

    Each character maps to one character whose code point is the rank of its ICU primary weight
    (equal weights, e.g. "a" and "A", share it), so comparing translated strings compares the
    primary tuples; a second table gives the tertiary (case) string. ASCII has no combining
    marks, so the secondary tuples of strings with equal primaries are always equal.
    """
    chars = [chr(i) for i in range(128)]
    weights = sorted({_primary(c) for c in chars})
    rank = {w: i for i, w in enumerate(weights)}
    primary = {ord(c): chr(0x100 + rank[_primary(c)]) for c in chars}
    tertiary = {ord(c): ("1" if c.isupper() else "0") for c in chars}
    return primary, tertiary


_PRIMARY_TABLE, _TERTIARY_TABLE = _ascii_tables()


def r_sorted_strings(values: Iterable[str]) -> list[str]:
    """Distinct strings in the order R's factor() gives them (sorts the distinct values only)."""
    distinct = set(values)
    if r_collation() == "c":
        # C collation is byte order; for str, UTF-8 byte order is code point order (Python's)
        return sorted(distinct)
    if all(s.isascii() for s in distinct):
        # the same order as r_collate_key, from C-speed translations (1e5 labels in ~0.1 s)
        # one key string, primary + tertiary + the string itself, compares like the tuple
        # (primary chars are >= U+0100, so "\x01" ends a primary that is a prefix of another)
        return sorted(
            distinct,
            key=lambda s: f"{s.translate(_PRIMARY_TABLE)}\x01{s.translate(_TERTIARY_TABLE)}\x01{s}",
        )
    return sorted(distinct, key=r_collate_key)


def r_label(value: object) -> str:
    """as.character() of one value (numbers with R's 15-significant-digit formatting)."""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, (int,)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, np.bool_):
        return "TRUE" if bool(value) else "FALSE"
    if isinstance(value, np.integer):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return format_r_number(float(value))
    return str(value)


def r_number_labels(values: np.ndarray) -> list[str]:
    """as.character() of many distinct doubles at once (R's factor() labels of a numeric column).

    Whole numbers below 1e15 are formatted vectorized: R writes them in fixed notation unless the
    scientific form is shorter, which needs trailing zeros (1e+05), so only whole numbers with at
    least four trailing zeros, and non-whole numbers, go through format_r_number one by one.
    """
    v = np.asarray(values, dtype=float)
    whole = np.isfinite(v) & (np.abs(v) < 1e15) & (v == np.round(v))
    labels = np.empty(len(v), dtype=object)
    ints = v[whole].astype(np.int64)
    labels[whole] = ints.astype(str).astype(object)
    # at most 3 trailing zeros: fixed is never wider than scientific ("1000" vs "1e+03")
    slow = ~whole
    slow[whole] = (ints != 0) & (ints % 10_000 == 0)
    for j in np.flatnonzero(slow):
        labels[j] = format_r_number(float(v[j]))
    return labels.tolist()


class IntegerLevels(Sequence[str]):
    """The level labels of a factor of integer ids ("1", "2", ...), made only when read.

    A grouping factor with 5e5 ids would otherwise build 5e5 Python strings on every fit; the
    ranef index comes straight from the integers (`to_index`). Reads like a list of str.
    """

    def __init__(self, values: np.ndarray) -> None:
        self.values = np.asarray(values, dtype=np.int64)  # distinct ids, in level order
        self._labels: list[str] | None = None

    def _list(self) -> list[str]:
        if self._labels is None:
            self._labels = [str(v) for v in self.values.tolist()]  # as.character(): digits
        return self._labels

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def __getitem__(self, i):  # noqa: ANN001, ANN204 - Sequence protocol (int or slice)
        return self._list()[i]

    def __iter__(self) -> Iterator[str]:
        return iter(self._list())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, IntegerLevels):
            return np.array_equal(self.values, other.values)
        return isinstance(other, (list, tuple)) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]  # mutable-sequence semantics, like list

    def __add__(self, other: list[str]) -> list[str]:
        return self._list() + list(other)

    def __repr__(self) -> str:
        return f"IntegerLevels({len(self)} levels)"

    def to_index(self) -> pd.Index:
        """The labels as a pandas Index of strings (through Arrow: no Python strings)."""
        try:
            import pyarrow as pa
        except ImportError:
            return pd.Index(self._list())
        text = pa.array(self.values).cast(pa.string())
        return pd.Index(pd.array(text, dtype=pd.Index(["0"]).dtype))


def level_index(levels: Sequence[str]) -> pd.Index:
    """Factor levels as the pandas Index of a ranef frame."""
    if isinstance(levels, IntegerLevels):
        return levels.to_index()
    return pd.Index([str(v) for v in levels])
