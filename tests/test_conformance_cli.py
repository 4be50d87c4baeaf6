"""`mixbridge compare` and `mixbridge conformance` end to end, in a subprocess, with live R."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mixbridge.conformance.suite import load_suite


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
