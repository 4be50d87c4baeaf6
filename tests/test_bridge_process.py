"""The Python process survives R: timeouts, Ctrl-C, killed processes, temporary folders.

The long-running R call is a real lme4 fit (a binomial GLMM with thousands of groups, many
seconds in lme4), stopped long before it would finish.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mixbridge
from mixbridge.bridge import describe_data, subproc

ROOT = Path(__file__).resolve().parent.parent

# A glmer that takes lme4 well over ten seconds (the tests stop it after one or two).
LONG_FIT_CODE = """
import numpy as np, pandas as pd
rng = np.random.default_rng(1)
n, G = 100_000, 5_000
g = rng.integers(0, G, n)
x = rng.normal(size=n)
eta = -0.5 + 0.3 * x + rng.normal(size=G)[g]
long_data = pd.DataFrame({"y": (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(float),
                          "x": x, "g": [f"g{i}" for i in g]})
LONG_FORMULA = "y ~ x + (1 | g)"
"""


def _long_fit_data() -> tuple[pd.DataFrame, str]:
    space: dict = {}
    exec(LONG_FIT_CODE, space)
    return space["long_data"], space["LONG_FORMULA"]


def _small_data() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    g = np.repeat(np.arange(8), 6)
    return pd.DataFrame(
        {"y": rng.normal(size=48) + rng.normal(size=8)[g], "g": [f"g{i}" for i in g]}
    )


def _child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def _processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains `text` (Linux /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if text.encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


# ---------------------------------------------------------------------------------------------
# timeout=


def test_timeout_is_checked_and_belongs_to_the_r_engine():
    d = _small_data()
    for bad in (-1, 0, "5", True, float("nan")):
        with pytest.raises(mixbridge.ArgumentError, match="timeout"):
            mixbridge.lmer("y ~ 1 + (1 | g)", d, engine="r", timeout=bad)
    with pytest.raises(mixbridge.ArgumentError, match="timeout= applies only to engine='r'"):
        mixbridge.lmer("y ~ 1 + (1 | g)", d, timeout=10)


def test_every_r_call_takes_a_timeout(needs_r):
    # 50 ms is far less than starting Rscript: each call must stop with RTimeoutError.
    d = _small_data()
    quick = dict(engine="r", transport="subprocess", timeout=0.05)
    calls = [
        lambda: mixbridge.lmer("y ~ 1 + (1 | g)", d, **quick),
        lambda: mixbridge.glmer("y ~ 1 + (1 | g)", d.assign(y=d.y > 0), **quick),
        lambda: mixbridge.bayesglm("y ~ g", d, **quick),
        lambda: mixbridge.lmer_objective("y ~ 1 + (1 | g)", d, [1.0], **quick),
        lambda: mixbridge.glmer_objective(
            "y ~ 1 + (1 | g)", d.assign(y=d.y > 0), [1.0], [0.0], **quick
        ),
    ]
    for call in calls:
        with pytest.raises(mixbridge.RTimeoutError, match="within 0.05 s"):
            call()


def test_timeout_subprocess_kills_rscript_and_removes_its_folder(needs_r, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    data, formula = _long_fit_data()
    with pytest.raises(mixbridge.RTimeoutError, match="Rscript process was killed") as info:
        mixbridge.glmer(formula, data, engine="r", transport="subprocess", timeout=3)
    assert info.value.timeout == 3 and info.value.transport == "subprocess"
    assert not list(tmp_path.glob("mixbridge-*"))
    assert _processes_mentioning(str(tmp_path)) == []


def test_timeout_embedded_interrupts_r_and_the_session_stays_usable(needs_r):
    d = _small_data()
    before = mixbridge.lmer("y ~ 1 + (1 | g)", d, engine="r", transport="embedded")
    data, formula = _long_fit_data()
    with pytest.raises(mixbridge.RTimeoutError, match="interrupted") as info:
        mixbridge.glmer(formula, data, engine="r", transport="embedded", timeout=2)
    assert info.value.transport == "embedded"
    after = mixbridge.lmer("y ~ 1 + (1 | g)", d, engine="r", transport="embedded", timeout=120)
    np.testing.assert_array_equal(after.theta, before.theta)
    np.testing.assert_array_equal(after.fixef, before.fixef)
    # the objective closure of a fit is usable too
    assert after.objective(after.theta) == pytest.approx(after.reml_criterion, rel=1e-12)


def test_a_timeout_in_one_thread_leaves_the_other_threads_call_alone(needs_r):
    # Embedded R is shared: one lock serializes the calls, and the interrupt meant for one call
    # must not stop the next one.
    d = _small_data()
    ref = mixbridge.lmer("y ~ 1 + (1 | g)", d, engine="r", transport="embedded")
    data, formula = _long_fit_data()
    outcome: dict[str, object] = {}

    def long_call() -> None:
        try:
            mixbridge.glmer(formula, data, engine="r", transport="embedded", timeout=2)
            outcome["long"] = "finished"
        except BaseException as exc:  # collected for the main thread
            outcome["long"] = exc

    def short_call() -> None:
        try:
            outcome["short"] = mixbridge.lmer("y ~ 1 + (1 | g)", d, engine="r")
        except BaseException as exc:
            outcome["short"] = exc

    first = threading.Thread(target=long_call)
    first.start()
    time.sleep(0.5)
    second = threading.Thread(target=short_call)
    second.start()
    first.join(300)
    second.join(300)
    assert isinstance(outcome["long"], mixbridge.RTimeoutError), outcome["long"]
    short = outcome["short"]
    assert isinstance(short, mixbridge.MixedFit), short
    np.testing.assert_array_equal(short.theta, ref.theta)


# ---------------------------------------------------------------------------------------------
# Ctrl-C


SIGINT_CHILD = (
    LONG_FIT_CODE
    + """
import sys, time
import mixbridge
small = long_data.iloc[:600]
ref = mixbridge.lmer("y ~ x + (1 | g)", small, engine="r", transport="embedded")
print("FITTING", flush=True)
try:
    mixbridge.glmer(LONG_FORMULA, long_data, engine="r", transport="embedded")
    print("FINISHED", flush=True)
except KeyboardInterrupt:
    print("INTERRUPTED", repr(time.time()), flush=True)
again = mixbridge.lmer("y ~ x + (1 | g)", small, engine="r", transport="embedded")
print("USABLE", bool((again.theta == ref.theta).all() and (again.fixef == ref.fixef).all()))
"""
)


def test_ctrl_c_stops_an_embedded_fit_promptly_and_r_stays_usable(needs_r):
    child = subprocess.Popen(
        [sys.executable, "-c", SIGINT_CHILD],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_child_env(),
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.strip() == "FITTING", line + child.stderr.read()
        time.sleep(2.0)  # the data are in R and lme4 is fitting
        sent = time.time()
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=300)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err[-2000:]
    lines = out.splitlines()
    assert lines[0].startswith("INTERRUPTED"), out + err[-2000:]
    # Behaviour, not speed: before, the fit ran on to its end, seconds later.
    assert float(lines[0].split()[1]) - sent < 1.0, out
    assert lines[1] == "USABLE True", out
    assert "Exception ignored" not in err, err[-2000:]


# ---------------------------------------------------------------------------------------------
# Temporary folders


KILLED_CHILD = (
    LONG_FIT_CODE
    + """
import mixbridge
mixbridge.glmer(LONG_FORMULA, long_data, engine="r", transport="subprocess")
"""
)


def test_folder_of_a_killed_python_is_removed_and_its_rscript_killed(needs_r, tmp_path):
    env = _child_env(TMPDIR=str(tmp_path))
    victim = subprocess.Popen([sys.executable, "-c", KILLED_CHILD], env=env)
    orphans: list[int] = []
    try:
        deadline = time.time() + 300
        folder = None
        while time.time() < deadline and folder is None:
            found = [p for p in tmp_path.glob(f"mixbridge-{victim.pid}-*") if p.is_dir()]
            if found and (found[0] / "child.pid").exists():
                folder = found[0]
            time.sleep(0.1)
        assert folder is not None, "the subprocess transport never started Rscript"
        time.sleep(1.0)
        victim.kill()  # SIGKILL: no finally, no atexit
        victim.wait()
        orphans = _processes_mentioning(str(folder))
        assert folder.exists() and orphans, "the setup must leave a folder and a running R"
        # The next process that uses the subprocess transport cleans up.
        nxt = subprocess.run(
            [
                sys.executable,
                "-c",
                "import pandas as pd\n"
                "from mixbridge.bridge import describe_data\n"
                "describe_data(pd.DataFrame({'y': [1.0, 2.0]}), transport='subprocess')\n",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert nxt.returncode == 0, nxt.stderr[-2000:]
        assert not folder.exists()
        time.sleep(0.5)
        assert _processes_mentioning(str(folder)) == []
        assert not list(tmp_path.glob("mixbridge-*"))
    finally:
        if victim.poll() is None:
            victim.kill()
        for pid in orphans:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def test_stale_cleanup_keeps_live_and_foreign_folders(tmp_path):
    mine = tmp_path / f"mixbridge-{os.getpid()}-abc"
    other = tmp_path / "mixbridge-demo-output"  # not a transport folder
    mine.mkdir()
    other.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"mixbridge-{dead.pid}-xyz"
    stale.mkdir()
    (stale / "request.json").write_text("{}")
    removed = subproc.clean_stale_tempdirs(tmp_path)
    assert removed == [stale] and not stale.exists()
    assert mine.exists() and other.exists()


# ---------------------------------------------------------------------------------------------
# A response the bridge cannot read


@pytest.mark.parametrize(
    "corrupt, expected",
    [
        ('rm -f "$resp.bin"', "could not be read"),
        ('printf "{not json" > "$resp"', "could not be read"),
        ('printf "[1, 2]" > "$resp"', "is not a mixbridge result"),
        ('rm -f "$resp"', "without writing a response"),
    ],
)
def test_malformed_rscript_response_is_an_rbridgeerror(
    needs_r, tmp_path, monkeypatch, corrupt, expected
):
    import shutil

    real = shutil.which("Rscript")
    wrapper = tmp_path / "Rscript"
    # Runs the real Rscript, then damages what it wrote (the response path is the last argument).
    wrapper.write_text(
        textwrap.dedent(
            f"""\
            #!/bin/sh
            {real} "$@"
            status=$?
            for resp in "$@"; do :; done
            {corrupt}
            exit $status
            """
        )
    )
    wrapper.chmod(0o755)
    monkeypatch.setenv("MIXBRIDGE_RSCRIPT", str(wrapper))
    with pytest.raises(mixbridge.RBridgeError, match=expected):
        # the cheapest call through the transport: R describes the data it received
        describe_data(_small_data(), transport="subprocess")
