"""`mixbridge doctor` run as a command: with R present, and with R hidden."""

from __future__ import annotations

import os
import subprocess
import sys


def _doctor(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mixbridge", "doctor"],
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
    assert 'engine="r" uses        the embedded transport' in text
    assert "No problems found." in text


def test_doctor_with_r_home_at_a_folder_that_is_not_r(needs_r, tmp_path):
    # Used to end in a ValueError traceback (and embedded R takes its process down there).
    out = _doctor(dict(os.environ, R_HOME=str(tmp_path)))
    assert "Traceback" not in out.stderr, out.stderr
    text = out.stdout
    assert f"R_HOME                 {tmp_path}  NOT AN R INSTALLATION" in text, text
    assert "engine r (embedded)    CANNOT RUN: R_HOME" in text
    # Rscript ignores a wrong R_HOME: the subprocess transport still works
    assert "engine r (subprocess)  OK" in text and out.returncode == 0
    assert f"R_HOME points at {str(tmp_path)!r}" in text
    assert "fix: unset R_HOME  (or: export R_HOME=" in text


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
