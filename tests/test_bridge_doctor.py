"""`mixbridge doctor` run as a command: with R present, and with R hidden."""

from __future__ import annotations

import os
import subprocess
import sys


def _doctor(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mixbridge.cli", "doctor"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


def test_doctor_with_r(needs_r):
    out = _doctor(dict(os.environ))
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    for name in ("Python", "numpy", "scipy", "pandas", "rpy2", "R package lme4", "Matrix", "arm"):
        assert name in text
    assert "engine r (embedded)    OK" in text
    assert "engine r (subprocess)  OK" in text
    assert "No problems found." in text


def test_doctor_without_r():
    # PATH without R and MIXBRIDGE_RSCRIPT pointing nowhere: R cannot be found.
    env = {
        "HOME": os.environ.get("HOME", "/tmp"),
        "PATH": os.path.dirname(sys.executable),
        "MIXBRIDGE_RSCRIPT": "/nonexistent/bin/Rscript",
    }
    out = _doctor(env)
    assert out.returncode == 1, out.stdout + out.stderr
    text = out.stdout
    assert "NOT FOUND" in text
    assert "engine r (embedded)    CANNOT RUN" in text
    assert "engine r (subprocess)  CANNOT RUN" in text
    assert "engine python          OK" in text
    assert "fix:" in text and ("apt-get install" in text or "cran.r-project.org" in text)
