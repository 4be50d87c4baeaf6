"""`mixbridge compare` and `mixbridge conformance` end to end, in a subprocess, with live R."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mixbridge
from mixbridge.conformance.suite import load_suite

_GROUPS = pd.DataFrame({"y": [1.0, 2.1, 2.9, 4.2, 5.1, 5.7, 3.3, 2.2, 6.1], "g": list("aaabbbccc")})


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mixbridge.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _grouped_csv(path: Path, seed: int = 4) -> Path:
    rng = np.random.default_rng(seed)
    g = np.repeat([f"s{j}" for j in range(8)], [12, 3, 7, 20, 1, 9, 15, 5])
    b = rng.normal(0, 1.5, 8)[pd.factorize(g)[0]]
    x = rng.uniform(0, 4, len(g))
    y = 2 + 0.7 * x + b + rng.normal(0, 1, len(g))
    pd.DataFrame({"y": y, "x": x, "g": g}).to_csv(path, index=False)
    return path


SUITE = """
[[case]]
name = "csv_intercept"
model = "lmer"
formula = "y ~ x + (1 | g)"
data = "grouped.csv"

[[case]]
name = "twelve_shrinkage"
model = "shrinkage"
formula = "y ~ 0 + factor(g)"
mixed_formula = "y ~ 1 + (1 | g)"
data = "sim:twelve_groups:2"
engine_a = "python"
engine_b = "r"
reml = false

[[case]]
name = "reml_vs_ml"
model = "lmer"
formula = "y ~ x + (1 | g)"
data = "grouped.csv"
options_b = { reml = false }
"""


def test_conformance_small_suite_with_report(needs_r, tmp_path):
    _grouped_csv(tmp_path / "grouped.csv")
    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE)
    report = tmp_path / "report"
    out = _run("conformance", "--suite", str(suite), "--report", str(report))
    # reml_vs_ml compares a REML fit with an ML fit: a genuine FAIL, so the exit status is 1
    assert out.returncode == 1, out.stdout + out.stderr
    assert "3 cases (FAIL: 1" in out.stdout, out.stdout
    assert "== reml_vs_ml" in out.stdout and "criterion" in out.stdout
    # progress on stderr, one line per finished case
    assert "1/3 csv_intercept: ok" in out.stderr
    assert "3/3 reml_vs_ml: FAIL" in out.stderr
    index = report / "index.html"
    text = index.read_text()
    assert "csv_intercept" in text and "<table" in text and "FAIL" in text
    pngs = sorted(p.name for p in report.glob("*.png"))
    assert "csv_intercept_margin.png" in pngs
    assert "csv_intercept_caterpillar.png" in pngs
    assert "twelve_shrinkage_shrinkage.png" in pngs
    for name in pngs:
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"src='{name}'" in text


def test_compare_command_prints_table(needs_r, tmp_path):
    csv = _grouped_csv(tmp_path / "grouped.csv")
    out = _run(
        "compare", "--model", "lmer", "--formula", "y ~ x + (1 | g)", "--data", str(csv), "--ml"
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "compare lmer: a = python, b = r" in out.stdout
    assert "verdict: OK" in out.stdout
    for q in ("fixef", "theta", "ranef", "loglik"):
        assert q in out.stdout


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    from mixbridge.conformance.cli import compare_main, conformance_main

    rc = compare_main(["--model", "lmer", "--formula", "y ~ 1 + (1|g)", "--data", "nope.csv"])
    err = capsys.readouterr().err
    assert rc == 2 and "data file not found" in err and "nope.csv" in err
    bad = tmp_path / "bad.toml"
    bad.write_text('[[case]]\nname = "x"\nmodel = "lm"\nformula = "y ~ 1"\ndata = "a.csv"\n')
    assert conformance_main(["--suite", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "model must be one of" in err and "'x'" in err
    assert conformance_main(["--case", "no_such_case"]) == 2
    assert "no_such_case" in capsys.readouterr().err


def test_builtin_suite_loads_and_lists(capsys):
    from mixbridge.conformance.cli import conformance_main

    cases = load_suite("builtin")
    names = [c.name for c in cases]
    assert len(names) == len(set(names))
    for expected in ("sleepstudy_slope_reml", "dyestuff2_singular", "penicillin_crossed",
                     "pastes_nested", "cbpp_agq25", "grouseticks_agq10", "verbagg_crossed",
                     "twelve_shrinkage_reml_r", "bayesglm_cbpp_binomial"):  # fmt: skip
        assert expected in names
    assert conformance_main(["--list"]) == 0
    assert "dyestuff" in capsys.readouterr().out


def test_suite_file_errors_name_the_problem(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text('[[case]]\nname = "a"\nmodel = "lmer"\nformula = "y ~ 1"\n')
    with pytest.raises(ValueError, match="lacks data"):
        load_suite(p)
    p.write_text("[[case]\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_suite(p)
    with pytest.raises(ValueError, match="not found"):
        load_suite(tmp_path / "missing.toml")


def test_suite_flags_are_true_or_false(tmp_path):
    """reml = "false" in a TOML suite fitted REML (and the shrinkage case's reml too); each
    such case is now an error naming the flag, before any engine runs."""
    from mixbridge.conformance.suite import run_case

    _grouped_csv(tmp_path / "grouped.csv")
    p = tmp_path / "flags.toml"
    p.write_text(
        """
[[case]]
name = "string_reml"
model = "lmer"
formula = "y ~ x + (1 | g)"
data = "grouped.csv"
reml = "false"

[[case]]
name = "shrinkage_string_reml"
model = "shrinkage"
formula = "y ~ 0 + factor(g)"
mixed_formula = "y ~ 1 + (1 | g)"
data = "grouped.csv"
engine_b = "python"
reml = "no"

[[case]]
name = "per_engine_string_reml"
model = "lmer"
formula = "y ~ x + (1 | g)"
data = "grouped.csv"
engine_b = "python"
options_b = { reml = "FALSE" }
"""
    )
    for case in load_suite(p):
        result = run_case(case)
        assert result.status == "ERROR", case.name
        assert "ArgumentError" in result.error and "reml must be True or False" in result.error
    p.write_text(
        '[[case]]\nname = "s"\nmodel = "lmer"\nformula = "y ~ 1"\ndata = "a.csv"\nslow = "no"\n'
    )
    with pytest.raises(ValueError, match="case 's': slow must be true or false"):
        load_suite(p)


_GOOD_CASE = {
    "name": '"a"',
    "model": '"lmer"',
    "formula": '"y ~ 1 + (1 | g)"',
    "data": '"sim:twelve_groups"',
}


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("name", '["a"]', "name must be a string"),
        ("model", "3", "model must be a string"),
        ("formula", '["y ~ 1"]', "formula must be a string"),
        ("data", "5", "data must be a string"),
        ("engine_b", "1", "engine_b must be a string"),
        ("mixed_formula", "3", "mixed_formula must be a string"),
        ("slow", '"yes"', "slow must be true or false"),
        ("options_a", "1", "options_a must be a table"),
        ("tolerance", "1", "tolerance must be one of"),
        ("tolerance", '"nope"', "tolerance must be one of"),
        ("data", '"sim:twelve_groups:x"', "must be a whole number"),
        ("data", '"sim:nope"', "unknown simulator 'nope'"),
    ],
)
def test_suite_with_a_wrongly_typed_field_is_a_one_line_error(
    tmp_path, capsys, key, value, message
):
    from mixbridge.conformance.cli import conformance_main

    fields = {**_GOOD_CASE, key: value}
    suite = tmp_path / "s.toml"
    suite.write_text("[[case]]\n" + "".join(f"{k} = {v}\n" for k, v in fields.items()))
    # in-process: an exception (what printed a traceback) fails the test by itself
    assert conformance_main(["--suite", str(suite)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mixbridge conformance: ") and message in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_suite_error_from_the_command_has_no_traceback(tmp_path):
    suite = tmp_path / "s.toml"
    suite.write_text("[[case]]\n" + "".join(f"{k} = {v}\n" for k, v in _GOOD_CASE.items()))
    suite.write_text(suite.read_text().replace('name = "a"', 'name = ["a"]'))
    out = _run("conformance", "--suite", str(suite))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert (
        out.stderr.strip() == f"mixbridge conformance: case #1 in {suite}: name must be a "
        "string, got ['a']"
    )


def test_report_pointing_at_an_existing_file_is_a_one_line_error(tmp_path):
    suite = tmp_path / "s.toml"
    suite.write_text("[[case]]\n" + "".join(f"{k} = {v}\n" for k, v in _GOOD_CASE.items()))
    existing = tmp_path / "report.html"
    existing.write_text("keep me")
    out = _run("conformance", "--suite", str(suite), "--report", str(existing))
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    assert "is an existing file" in out.stderr and str(existing) in out.stderr
    assert existing.read_text() == "keep me"
    assert "1/1" not in out.stderr  # refused before any case ran


def test_compare_with_an_unknown_tolerance_is_a_one_line_error(tmp_path):
    csv = _grouped_csv(tmp_path / "grouped.csv")
    out = _run(
        "compare", "--model", "lmer", "--formula", "y ~ x + (1 | g)", "--data", str(csv),
        "--engine-b", "python", "--tolerance", "nope",
    )  # fmt: skip
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and "KeyError" not in out.stderr, out.stderr
    assert "unknown --tolerance 'nope'" in out.stderr and "lmer" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_unknown_tolerance_in_the_api_is_an_argument_error():
    from mixbridge.conformance.tolerance import policy_for

    fit = mixbridge.lmer("y ~ 1 + (1 | g)", _GROUPS)
    with pytest.raises(mixbridge.ArgumentError, match="unknown tolerance policy 'nope'"):
        mixbridge.compare(fit, fit, tolerance="nope")
    with pytest.raises(mixbridge.ArgumentError, match="unknown quantity 'nonsense'"):
        policy_for(fit, fit, {"nonsense": 1.0})
