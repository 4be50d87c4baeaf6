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
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Iterable

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


def r_sorted_strings(values: Iterable[str]) -> list[str]:
    """Distinct strings in the order R's factor() gives them."""
    if r_collation() == "c":
        return sorted(set(values), key=lambda s: s.encode("utf-8"))
    return sorted(set(values), key=r_collate_key)


def r_label(value: object) -> str:
    """as.character() of one value (numbers with R's 15-significant-digit formatting)."""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, (int,)) and not isinstance(value, bool):
        return str(value)
    try:
        import numpy as np

        if isinstance(value, np.bool_):
            return "TRUE" if bool(value) else "FALSE"
        if isinstance(value, np.integer):
            return str(int(value))
        if isinstance(value, (float, np.floating)):
            return format_r_number(float(value))
    except ImportError:  # pragma: no cover
        pass
    return str(value)
