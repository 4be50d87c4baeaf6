"""The R engine without a working rpy2: no rpy2, or an rpy2 built for another R.

`pip install "mixbridge[r]"` brings the newest rpy2, which cannot load R < 4.5. Then the
subprocess transport must still work (it needs no rpy2), errors and `doctor` must say what is
wrong and give the pip command that fixes it, and engine="r" falls back to the subprocess
transport with a message. The fast tests simulate the broken rpy2 in a child Python (an import
hook); the slow one builds a real fresh virtual environment with `pip install "<checkout>[r]"`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mixbridge

ROOT = Path(__file__).resolve().parent.parent
OLD_R_COMMAND = 'pip install "rpy2==3.5.17"'

# Import hooks run in the child before mixbridge is imported.
HIDE_RPY2 = """
import importlib.abc, sys
class _NoRpy2(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "rpy2" or name.startswith("rpy2."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _NoRpy2())
"""
# What rpy2 >= 3.6.7 does on R < 4.5: its C layer needs a symbol this libR lacks.
BREAK_RPY2 = """
import importlib.abc, sys
class _BrokenRpy2(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "rpy2.rinterface":
            raise ImportError("/usr/lib/R/lib/libR.so: undefined symbol: R_getVar")
        return None
sys.meta_path.insert(0, _BrokenRpy2())
"""

# The child fits with the transport choices in STEPS and reports what happened as JSON.
PROBE = """
import json, sys, warnings
import numpy as np, pandas as pd
import mixbridge
d = pd.DataFrame({"y": [1.0, 2.1, 2.9, 4.2, 5.1, 5.7, 3.3, 2.2, 6.1, 4.4],
                  "g": list("aaabbbcccc")})
out = {}
if "subprocess" in STEPS:
    fit = mixbridge.lmer("y ~ 1 + (1 | g)", d, engine="r", transport="subprocess")
    out["subprocess"] = {"theta": fit.theta.tolist(), "versions": fit.versions}
    out["rpy2_imported"] = any(m == "rpy2" or m.startswith("rpy2.") for m in sys.modules)
if "default" in STEPS:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = mixbridge.lmer("y ~ 1 + (1 | g)", d, engine="r")
    out["default"] = {
        "theta": fit.theta.tolist(),
        "transport": fit.extra.get("transport"),
        "messages": [m.to_dict() for m in fit.messages],
        "warnings": [(w.category.__name__, str(w.message)) for w in caught],
    }
try:
    mixbridge.lmer("y ~ 1 + (1 | g)", d, engine="r", transport="embedded")
    out["embedded"] = "fitted"
except mixbridge.RNotAvailableError as exc:
    out["embedded"] = {"text": str(exc), "missing": exc.missing, "install": exc.install}
print("RESULT " + json.dumps(out))
"""

DATA = pd.DataFrame(
    {"y": [1.0, 2.1, 2.9, 4.2, 5.1, 5.7, 3.3, 2.2, 6.1, 4.4], "g": list("aaabbbcccc")}
)


def _probe(
    python: str,
    hook: str = "",
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    steps: tuple[str, ...] = ("subprocess", "default"),
) -> dict:
    out = subprocess.run(
        [python, "-c", hook + f"STEPS = {list(steps)!r}\n" + PROBE],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=cwd,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def _check_fallback(result: dict, reference: np.ndarray, reason: str) -> None:
    default = result["default"]
    assert default["transport"] == "subprocess"
    np.testing.assert_array_equal(default["theta"], reference)
    notes = [m for m in default["messages"] if m["code"] == "transport_fallback"]
    assert len(notes) == 1, default["messages"]
    note = notes[0]
    assert note["kind"] == "warning" and note["origin"] == "mixbridge"
    assert reason in note["text"] and "subprocess transport (Rscript)" in note["text"]
    assert OLD_R_COMMAND in note["text"]
    assert ("MixbridgeWarning", note["text"]) in [tuple(w) for w in default["warnings"]]


@pytest.fixture(scope="module")
def reference_theta(needs_r) -> np.ndarray:
    return mixbridge.lmer("y ~ 1 + (1 | g)", DATA, engine="r", transport="embedded").theta


def _r_is_older_than_4_5() -> bool:
    out = subprocess.run(
        ["Rscript", "--vanilla", "-e", "cat(as.character(getRversion()))"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    version = out.stdout.strip().splitlines()[-1]
    return tuple(int(p) for p in version.split(".")[:2]) < (4, 5)


def test_subprocess_transport_needs_no_rpy2(reference_theta):
    result = _probe(sys.executable, HIDE_RPY2, _child_env(), steps=("subprocess",))
    np.testing.assert_array_equal(result["subprocess"]["theta"], reference_theta)
    assert "rpy2" not in result["subprocess"]["versions"]
    # an explicit embedded transport says rpy2 is the problem
    assert result["embedded"]["missing"] == ["rpy2"]


def test_rpy2_that_cannot_load_this_r_falls_back_and_names_the_fix(reference_theta):
    assert _r_is_older_than_4_5(), "the fix named below is the one for R < 4.5"
    result = _probe(sys.executable, BREAK_RPY2, _child_env(), steps=("default",))
    _check_fallback(result, reference_theta, "cannot load R 4.")
    embedded = result["embedded"]
    assert embedded["missing"] == ["rpy2"]
    assert embedded["install"] == OLD_R_COMMAND
    assert "undefined symbol R_getVar" in embedded["text"]
    assert "apt-get" not in embedded["text"]  # R is installed: the fix is rpy2, not R


# ---------------------------------------------------------------------------------------------
# A real fresh virtual environment


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory, needs_r) -> Path:
    """`python -m venv` + `pip install "<checkout>[r]"`, exactly as a user would (~30 s)."""
    base = tmp_path_factory.mktemp("fresh-venv")
    checkout = base / "checkout"  # a copy: pip builds in the source tree
    checkout.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, checkout / name)
    shutil.copytree(
        ROOT / "mixbridge", checkout / "mixbridge", ignore=shutil.ignore_patterns("__pycache__")
    )
    env_dir = base / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    # --no-compile: the same files, without byte-compiling scipy & co. up front (saves a minute)
    out = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-compile", f"{checkout}[r]"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return python


def _clean_env() -> dict[str, str]:
    # nothing from this test process's environment may leak the worktree into the venv
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def _venv_run(python: Path, *args: str) -> subprocess.CompletedProcess:
    # run outside the checkout: `python -c` puts the working directory first on sys.path
    return subprocess.run(
        [str(python), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=_clean_env(),
        cwd=python.parents[2],
    )


def _installed(python: Path, package: str) -> str | None:
    out = _venv_run(python, "-c", f"import importlib.metadata as m; print(m.version({package!r}))")
    return out.stdout.strip() if out.returncode == 0 else None


# `long`: a real pip install (~45 s on 2 cores); the fallback, its message and the fix it names
# are checked in the default suite by the simulated rpy2 tests above
@pytest.mark.slow
@pytest.mark.long
def test_fresh_venv_pip_install_r_extra(fresh_venv, reference_theta):
    python = fresh_venv
    assert _r_is_older_than_4_5(), "the broken pairing needs R < 4.5"
    rpy2 = _installed(python, "rpy2")
    assert rpy2 is not None and tuple(int(p) for p in rpy2.split(".")[:3]) >= (3, 6, 7), rpy2
    where = _venv_run(python, "-c", "import mixbridge; print(mixbridge.__file__)").stdout
    assert where.startswith(str(python.parents[1])), where  # the installed copy, not this one

    # 1. rpy2 3.6 installed, R 4.2: it cannot load R.
    result = _probe(str(python), env=_clean_env(), cwd=python.parents[2])
    assert not result["rpy2_imported"]  # the subprocess transport never touches rpy2
    np.testing.assert_array_equal(result["subprocess"]["theta"], reference_theta)
    assert "rpy2" not in result["subprocess"]["versions"]
    _check_fallback(result, reference_theta, f"rpy2 {rpy2} cannot load R 4.")
    assert result["embedded"]["missing"] == ["rpy2"]
    assert result["embedded"]["install"] == OLD_R_COMMAND
    assert "R >= 4.5" in result["embedded"]["text"]

    doctor = _venv_run(python, "-m", "mixbridge", "doctor")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    text = doctor.stdout
    assert f"rpy2                   {rpy2}" in text
    assert f"engine r (embedded)    CANNOT RUN: rpy2 {rpy2} cannot load R 4." in text
    assert "engine r (subprocess)  OK" in text
    assert 'engine="r" uses        the subprocess transport' in text
    assert f"fix: {OLD_R_COMMAND}" in text
    assert "not installed" not in text and "apt-get" not in text

    # 2. No rpy2 at all.
    out = _venv_run(
        python, "-m", "pip", "uninstall", "-y", "-q", "rpy2", "rpy2-rinterface", "rpy2-robjects"
    )
    assert out.returncode == 0, out.stderr
    assert _installed(python, "rpy2") is None
    result = _probe(str(python), env=_clean_env(), cwd=python.parents[2])
    np.testing.assert_array_equal(result["subprocess"]["theta"], reference_theta)
    _check_fallback(result, reference_theta, "rpy2 is not installed")
    doctor = _venv_run(python, "-m", "mixbridge", "doctor")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "rpy2                   not installed" in doctor.stdout
    assert f"fix: {OLD_R_COMMAND}" in doctor.stdout
    assert 'engine="r" uses        the subprocess transport' in doctor.stdout
