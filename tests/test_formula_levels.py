"""Factor level order of string columns against live R, under the locales R distinguishes."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixbridge.formula import build_glm_terms
from mixbridge.formula.levels import r_collation, r_sorted_strings

ASCII = [
    "b", "A", "a", "B", "_x", "1", "Z10", "z2", "a b", "ab", "a-b", "10", "9", "Ab", "aB", ".x",
    "x.1", "x_1", "x1", "a1", "a.1", "A_2", "zz", "ss", "$a", "+a", "~", "(a", "a,b", "a;b",
    "'q", '"q', "a:b", "a!", "a?", "[a]", "{a}", "@a", "*a", "/a", "&a", "#a", "%a", "^a", "<a",
    "=a", ">a", "|a", "a\\b",
]  # fmt: skip
NON_ASCII = ["é", "e", "E", "É", "Ä", "ß", "Ω", "ä", "ö", "o", "Ö"]

# R reads the strings from JSON and prints its factor levels as JSON (base R + jsonlite only)
R_CODE = (
    "x <- jsonlite::fromJSON(file('stdin')); "
    "cat(jsonlite::toJSON(levels(factor(x))), Sys.getlocale('LC_COLLATE'))"
)
LOCALE_VARS = ("LC_ALL", "LC_COLLATE", "LANG")


def _r_levels(strings: list[str], env_update: dict[str, str]) -> tuple[list[str], str]:
    env = {k: v for k, v in os.environ.items() if k not in LOCALE_VARS}
    env.update(env_update)
    out = subprocess.run(
        ["Rscript", "--vanilla", "-e", R_CODE],
        input=json.dumps(strings),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    levels_json, locale = out.stdout.rsplit(" ", 1)
    return json.loads(levels_json), locale


@pytest.mark.parametrize(
    "env,collation,strings",
    [
        ({}, "c", ASCII),
        ({"LANG": "C.UTF-8", "LC_COLLATE": "POSIX"}, "c", ASCII),
        ({"LANG": "C.UTF-8"}, "icu", ASCII + NON_ASCII),
    ],
)
def test_string_levels_sorted_like_r(needs_r, monkeypatch, env, collation, strings):
    for var in LOCALE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("MIXBRIDGE_COLLATION", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    expected, r_locale = _r_levels(strings, env)
    assert r_collation() == collation
    assert r_sorted_strings(strings) == expected, r_locale


def test_collation_override(monkeypatch):
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    monkeypatch.setenv("MIXBRIDGE_COLLATION", "c")
    assert r_sorted_strings(["b", "B", "a"]) == ["B", "a", "b"]
    monkeypatch.setenv("MIXBRIDGE_COLLATION", "icu")
    monkeypatch.setenv("LC_ALL", "C")
    assert r_sorted_strings(["b", "B", "a"]) == ["a", "b", "B"]


# ---------------------------------------------------------------------------------------------
# Fast paths for factors with many levels: the same levels, in the same order, as R

R_NUMERIC_CODE = (
    "x <- jsonlite::fromJSON(file('stdin')); "
    "cat(jsonlite::toJSON(list(i = levels(factor(as.integer(x$i))), "
    "d = levels(factor(as.numeric(x$d))))))"
)


def test_numeric_factor_levels_like_r(needs_r):
    """factor() of an integer column (R integer: "100000") and of a double column (R double:
    "1e+05"), with many levels, through the vectorized lookup path (narrow range) and the hashing
    path (wide range), against R's levels(factor(x))."""
    import numpy as np
    import pandas as pd

    from mixbridge.formula import build_mixed_terms

    rng = np.random.default_rng(3)
    special = [100000, 200000, 1000000, -300000, 0, 7, 2**31 - 1, -(2**31) + 1, 120000, 5]
    # narrow: range <= 2n, whole numbers (direct lookup), around 1e5 where R switches to "1e+05"
    narrow = rng.integers(60_000, 110_000, 30_000).tolist() + [100000]
    wide = rng.integers(-(10**9), 10**9, 2000).tolist() + special
    fractions = [0.1, 1 / 3, 1e-20, 2.5e-7, 1e15, 123456789012345678.0, -1e5, 99999.5]
    for ints, doubles in ((narrow, narrow), (wide, wide + fractions)):
        out = subprocess.run(
            ["Rscript", "--vanilla", "-e", R_NUMERIC_CODE],
            input=json.dumps({"i": ints, "d": doubles}),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        expected = json.loads(out.stdout)
        for key, values in (("i", ints), ("d", doubles)):
            col = pd.Series(values, dtype="int64" if key == "i" else "float64")
            df = pd.DataFrame({"y": np.zeros(len(col)), "g": col})
            levels = build_mixed_terms("y ~ 1 + (1 | g)", df).reterms[0].levels
            assert levels == expected[key], key
            glm_names = build_glm_terms("y ~ 0 + factor(g)", df, sparse=True).x_names
            assert glm_names == [f"factor(g){lv}" for lv in expected[key]]


def test_integer_group_labels_match_r_through_the_bridge(needs_r):
    """An int64 grouping column reaches R as an integer vector: lme4 labels its levels "100000",
    not "1e+05"; the Python engine must name ranef rows identically."""
    import numpy as np
    import pandas as pd

    import mixbridge

    rng = np.random.default_rng(5)
    g = np.repeat([100000, 200000, 7, 1000000, 31], 8)
    y = rng.normal(size=5)[np.searchsorted([7, 31, 100000, 200000, 1000000], g)] + rng.normal(
        size=len(g)
    )
    df = pd.DataFrame({"y": y, "g": g})
    py = mixbridge.lmer("y ~ 1 + (1 | g)", df, engine="python")
    r = mixbridge.lmer("y ~ 1 + (1 | g)", df, engine="r")
    assert list(py.ranef["g"].index) == list(r.ranef["g"].index)
    assert list(r.ranef["g"].index) == ["7", "31", "100000", "200000", "1000000"]


@settings(max_examples=200, deadline=None)
@given(
    st.sets(
        st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=127), max_size=6),
        max_size=40,
    )
)
def test_ascii_fast_path_orders_like_the_icu_key(strings):
    """The ASCII fast path (str.translate keys) gives exactly the order of r_collate_key, which
    test_string_levels_sorted_like_r checks against R."""
    import os

    from mixbridge.formula.levels import r_collate_key

    old = os.environ.get("MIXBRIDGE_COLLATION")
    os.environ["MIXBRIDGE_COLLATION"] = "icu"
    try:
        assert r_sorted_strings(strings) == sorted(strings, key=r_collate_key)
    finally:
        if old is None:
            del os.environ["MIXBRIDGE_COLLATION"]
        else:
            os.environ["MIXBRIDGE_COLLATION"] = old


def test_number_labels_vectorized_equal_format_r_number():
    """r_number_labels (vectorized, used for factor() of doubles) equals the scalar R formatter
    (checked against R in test_formula_vs_r / above) on whole numbers around the fixed/scientific
    switch and on fractions."""
    import numpy as np

    from mixbridge.formula.levels import r_number_labels
    from mixbridge.formula.parse import format_r_number

    rng = np.random.default_rng(0)
    values = np.concatenate(
        [
            np.arange(-3000, 3001) * 10.0 ** rng.integers(0, 8, 6001),
            rng.integers(-(10**15), 10**15, 2000).astype(float),
            [1e15, -1e15, 1e16, 0.5, 1 / 3, -0.0, 99999.5, 1e5, 123456789012345.0],
        ]
    )
    got = r_number_labels(values)
    assert got == [format_r_number(float(v)) for v in values]
