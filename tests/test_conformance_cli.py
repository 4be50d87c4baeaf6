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
"""

FAILING = """
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
    assert out.returncode == 0, out.stdout + out.stderr
    assert "csv_intercept" in out.stdout and "twelve_shrinkage" in out.stdout
    assert "2 cases" in out.stdout
    # progress on stderr, one line per finished case
    assert "1/2 csv_intercept" in out.stderr and "2/2 twelve_shrinkage" in out.stderr
    index = report / "index.html"
    text = index.read_text()
    assert "csv_intercept" in text and "<table" in text
    pngs = sorted(p.name for p in report.glob("*.png"))
    assert "csv_intercept_scatter.png" in pngs
    assert "csv_intercept_caterpillar.png" in pngs
    assert "twelve_shrinkage_shrinkage.png" in pngs
    for name in pngs:
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"src='{name}'" in text


def test_conformance_exits_nonzero_on_fail(needs_r, tmp_path):
    _grouped_csv(tmp_path / "grouped.csv")
    suite = tmp_path / "suite.toml"
    suite.write_text(FAILING)
    out = _run("conformance", "--suite", str(suite))
    assert out.returncode == 1, out.stdout + out.stderr
    assert "FAIL" in out.stdout
    # the failing case's table is printed, naming the quantities that differ
    assert "== reml_vs_ml" in out.stdout and "criterion" in out.stdout


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


def test_compare_command_bad_input_is_a_clear_error(tmp_path):
    out = _run("compare", "--model", "lmer", "--formula", "y ~ 1 + (1|g)", "--data", "nope.csv")
    assert out.returncode == 2
    assert "data file not found" in out.stderr and "nope.csv" in out.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[[case]]\nname = "x"\nmodel = "lm"\nformula = "y ~ 1"\ndata = "a.csv"\n')
    out = _run("conformance", "--suite", str(bad))
    assert out.returncode == 2
    assert "model must be one of" in out.stderr and "'x'" in out.stderr
    out = _run("conformance", "--case", "no_such_case")
    assert out.returncode == 2 and "no_such_case" in out.stderr


def test_builtin_suite_loads_and_lists():
    cases = load_suite("builtin")
    names = [c.name for c in cases]
    assert len(names) == len(set(names))
    for expected in ("sleepstudy_slope_reml", "dyestuff2_singular", "penicillin_crossed",
                     "pastes_nested", "cbpp_agq25", "grouseticks_agq10", "verbagg_crossed",
                     "twelve_shrinkage_reml_r", "bayesglm_cbpp_binomial"):  # fmt: skip
        assert expected in names
    out = _run("conformance", "--list")
    assert out.returncode == 0 and "dyestuff" in out.stdout


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
