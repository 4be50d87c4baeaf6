"""The benchmark suite runs end to end (--tiny sizes) and every timed fit agrees with R.

No timing assertions: speed is measured by benchmarks/run.py itself, not by tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


# `long`: `.ci/run` (ci/test.sh) already runs `benchmarks/run.py --quick`, which checks every
# timed fit of every model against R, before the default suite; this --tiny run repeats a subset
@pytest.mark.long
def test_benchmark_tiny_runs_and_estimates_agree_with_r(needs_r, tmp_path):
    out = tmp_path / "latest.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--tiny", "--no-plot"]
    cmd += ["--models", "lmm", "bayesglm", "--engines", "floor", "mixbridge-core", "mixbridge"]
    cmd += ["--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["mode"] == "tiny"
    rows = report["results"]
    engines = {(r["model"], r["engine"]) for r in rows}
    assert engines == {
        (m, e) for m in ("lmm", "bayesglm") for e in ("R (in R)", "floor", "mixbridge")
    } | {("lmm", "mixbridge-core")}
    for r in rows:
        assert "error" not in r, r
        assert "skipped" not in r, r
        assert r["median"] > 0 and len(r["times"]) >= 1
        if r["engine"] == "R (in R)":
            assert r["check"] == "reference"
        elif r["engine"] == "floor":
            assert r["check"] == "n/a (floor)"
        else:
            # The estimates were compared with lme4/arm fitted in the same run (run.TOL).
            assert r["check"] == "ok", r
            assert r["vs_lme4"] is not None and r["vs_floor"] is not None
    table = out.with_suffix(".md").read_text()
    assert "| lmm | 2000 | 100 | mixbridge |" in table


def test_parameter_gap_is_explained_only_by_a_lower_criterion():
    """A fit off lme4's parameters passes only when its criterion is lower than lme4's (lme4
    stopped early); at an equal or higher criterion it stays a MISMATCH."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from run import check

    ref = {"fixef": [1.0, 2.0], "se": [0.01, 0.01], "theta": [0.8], "criterion": 1000.0}
    est = {"fixef": [1.0005, 2.0], "theta": [0.8], "criterion": 999.4}
    assert check("glmm", est, ref).startswith("explained: fixef off by 0.05 SE")
    assert check("glmm", {**est, "criterion": 1000.0}, ref).startswith("MISMATCH")
    assert check("glmm", {**est, "criterion": 1000.3}, ref).startswith("MISMATCH")
    assert check("glmm", {k: v for k, v in est.items() if k != "criterion"}, ref).startswith(
        "MISMATCH"
    )
    assert check("glmm", {**est, "fixef": [1.0, 2.0]}, ref) == "ok"
