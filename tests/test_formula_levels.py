"""Factor level order of string columns against live R, under the locales R distinguishes."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

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
