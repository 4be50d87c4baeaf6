"""How R orders and labels factor levels.

R sorts character levels with the collation of its locale. The R here (Debian, C.UTF-8, built with
ICU: `capabilities("ICU")` is TRUE) uses ICU's root collation: punctuation < digits < letters,
letters compared case-insensitively first, then lowercase before uppercase at equal spelling.
Verified: `levels(factor(c("b","A","a","B","_x","1","Z10","z2")))` gives
"_x" "1" "a" "A" "b" "B" "Z10" "z2". This key reproduces that for ASCII and accented Latin text
(full ICU tables are not reproduced for other scripts or for the order among punctuation marks,
which falls back to code points).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

from mixbridge.formula.parse import format_r_number


def _char_class(ch: str) -> int:
    if ch.isdigit():
        return 2
    if ch.isalpha():
        return 3
    if ch.isspace():
        return 0
    return 1  # punctuation and symbols


def r_collate_key(s: str) -> tuple:
    """Sort key approximating R's (ICU root) collation of strings."""
    base = unicodedata.normalize("NFD", s)
    letters = [c for c in base if not unicodedata.combining(c)]
    primary = tuple((_char_class(c), c.casefold() if c.isalpha() else c) for c in letters)
    secondary = tuple(unicodedata.combining(c) for c in base)
    # tertiary: at equal spelling, lowercase sorts first (ICU's default caseFirst=off)
    tertiary = tuple(1 if c.isupper() else 0 for c in letters)
    return (primary, secondary, tertiary, s)


def r_sorted_strings(values: Iterable[str]) -> list[str]:
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
