"""Conformance results in CI formats: JUnit XML, JSON and a Markdown job summary, written by
`mixbridge conformance` and `mixbridge compare` (subprocess, as CI runs them). The cases use
engines that need no R (python against python or statsmodels), so the format checks run
everywhere; one case is a genuine FAIL (REML against ML) and one cannot run (an ERROR)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]

SUITE = """
[[case]]
name = "slopes_python_vs_statsmodels"
model = "lmer"
formula = "y ~ x + (x | g)"
data = "sim:unbalanced_slopes:3"
engine_b = "statsmodels"
reml = false

[[case]]
name = "reml_vs_ml"
model = "lmer"
formula = "y ~ x + (1 | g)"
data = "grouped.csv"
engine_b = "python"
options_b = { reml = false }

[[case]]
name = "broken|case"
model = "lmer"
formula = "y ~ x + (1 | g)"
data = "no_such_file.csv"
engine_b = "python"
"""


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "mixbridge.cli", *args], capture_output=True,
                          text=True, timeout=600, cwd=cwd, env=env)  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("ci")
    rng = np.random.default_rng(4)
    g = np.repeat([f"s{j}" for j in range(8)], [12, 3, 7, 20, 1, 9, 15, 5])
    y = 2 + rng.normal(0, 1.5, 8)[pd.factorize(g)[0]] + rng.normal(0, 1, len(g))
    pd.DataFrame({"y": y, "x": rng.uniform(0, 4, len(g)), "g": g}).to_csv(d / "grouped.csv",
                                                                         index=False)  # fmt: skip
    (d / "suite.toml").write_text(SUITE)
    out = _run("conformance", "--suite", "suite.toml", "--junit-xml", "out/junit.xml",
               "--json", "out/results.json", "--markdown", "out/summary.md", cwd=d)  # fmt: skip
    return d, out


def test_exit_status_and_files(run):
    d, out = run
    assert out.returncode == 1, out.stdout + out.stderr  # a FAIL and an ERROR
    for name in ("junit.xml", "results.json", "summary.md"):
        assert (d / "out" / name).is_file(), name
    assert "3 cases" in out.stdout


def test_junit_xml(run):
    d, _ = run
    root = ET.parse(d / "out" / "junit.xml").getroot()
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "1", "1")
    cases = {tc.get("name"): tc for tc in suite.findall("testcase")}
    assert list(cases) == ["slopes_python_vs_statsmodels", "reml_vs_ml", "broken|case"]
    assert all(tc.get("classname") == "mixbridge.conformance.suite" for tc in cases.values())
    ok = cases["slopes_python_vs_statsmodels"]
    assert ok.find("failure") is None and ok.find("error") is None
    assert "verdict: OK" in ok.find("system-out").text
    failure = cases["reml_vs_ml"].find("failure")
    assert failure is not None and failure.get("type") == "FAIL"
    message = failure.get("message")
    assert re.match(r"\d+ quantities beyond tolerance: ", message), message
    failing = message.split("beyond tolerance: ")[1].split(", ")
    assert "criterion" in failing and "theta" in failing
    # the failure's text is the table of exactly the failing rows
    lines = failure.text.strip().splitlines()
    assert lines[0].startswith("lmer: y ~ x + (1 | g) on grouped.csv")
    assert lines[1].split()[0] == "quantity"
    assert [ln.split()[0] for ln in lines[2:]] == failing
    assert all(" FAIL " in ln for ln in lines[2:])
    error = cases["broken|case"].find("error")
    assert error is not None and "data file not found" in error.get("message")
    assert float(ok.get("time")) > 0


def test_results_json(run):
    d, _ = run

    def reject(constant):
        raise ValueError(constant)

    doc = json.loads((d / "out" / "results.json").read_text(), parse_constant=reject)
    assert doc["schema"] == "mixbridge.conformance/1" and doc["ok"] is False
    assert doc["counts"] == {"ERROR": 1, "FAIL": 1, "ok": 1}
    by_name = {c["name"]: c for c in doc["cases"]}
    assert by_name["broken|case"]["comparison"] is None
    assert "data file not found" in by_name["broken|case"]["error"]
    rows = {r["quantity"]: r for r in by_name["reml_vs_ml"]["comparison"]["rows"]}
    assert rows["criterion"]["status"] == "FAIL" and rows["nobs"]["status"] == "ok"
    assert by_name["slopes_python_vs_statsmodels"]["comparison"]["ok"] is True


def test_markdown_summary(run):
    d, _ = run
    text = (d / "out" / "summary.md").read_text()
    assert text.startswith("## mixbridge conformance: suite.toml: 3 cases, 2 failing")
    table = [ln for ln in text.splitlines() if ln.startswith("| ")]
    assert table[0].startswith("| case | model | engines | status |")
    assert "| slopes_python_vs_statsmodels | lmer | python vs statsmodels | ✅ ok |" in text
    assert "| broken\\|case |" in text  # a pipe in a name does not break the table
    assert "### ❌ reml_vs_ml (FAIL)" in text
    section = text.split("### ❌ reml_vs_ml (FAIL)")[1].split("###")[0]
    assert "| criterion |" in section and "| nobs |" not in section
    assert "### 💥 broken\\|case (ERROR)" in text and "data file not found" in text


def test_compare_writes_the_same_formats(tmp_path, run):
    d, _ = run
    out = _run("compare", "--model", "lmer", "--formula", "y ~ x + (1 | g)", "--data",
               str(d / "grouped.csv"), "--engine-b", "python", "--junit-xml", "c.xml",
               "--markdown", "c.md", "--json", "c.json", cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "verdict: OK" in out.stdout
    (tc,) = ET.parse(tmp_path / "c.xml").getroot().iter("testcase")
    assert tc.get("name") == "compare" and tc.find("failure") is None
    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc["cases"][0]["comparison"]["ok"] is True and doc["suite"] == "compare"
    assert "1 cases, all agree" in (tmp_path / "c.md").read_text()
    # --json without a file: the document on stdout instead of the table
    out = _run("compare", "--model", "lmer", "--formula", "y ~ x + (1 | g)", "--data",
               str(d / "grouped.csv"), "--engine-b", "python", "--json", cwd=tmp_path)  # fmt: skip
    assert json.loads(out.stdout)["schema"] == "mixbridge.conformance/1"


def test_compare_error_is_an_error_testcase(tmp_path, run):
    d, _ = run
    out = _run("compare", "--model", "lmer", "--formula", "y ~ nope + (1 | g)", "--data",
               str(d / "grouped.csv"), "--engine-b", "python", "--junit-xml", "c.xml",
               cwd=tmp_path)  # fmt: skip
    assert out.returncode == 2
    (tc,) = ET.parse(tmp_path / "c.xml").getroot().iter("testcase")
    assert "FormulaError" in tc.find("error").get("message")
