"""Starting embedded R must not change the environment that later child processes inherit."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def test_embedded_r_leaves_library_path_alone(needs_r):
    from mixbridge.bridge import embedded

    before = os.environ.get("LD_LIBRARY_PATH")
    embedded.session()
    assert os.environ.get("LD_LIBRARY_PATH") == before
    # What broke before: a child Python (Dask or benchmark worker) loaded the system libpython
    # through R's library path and could not import ssl.
    child = subprocess.run(
        [sys.executable, "-c", "import ssl, numpy; print('ok')"], capture_output=True, text=True
    )
    assert child.returncode == 0 and child.stdout.strip() == "ok", child.stderr[-1000:]


@pytest.mark.parametrize("existing", [False, True], ids=["missing-dir", "existing-non-r-dir"])
def test_bad_r_home_is_a_clear_error_not_an_exit(tmp_path, existing):
    # An existing folder that is not R (the temporary folder, say) used to end the process
    # with exit status 2 from inside R. A fresh interpreter: this process's R may be running.
    r_home = tmp_path if existing else tmp_path / "no-such-r"
    code = (
        "import mixbridge, pandas as pd\n"
        "d = pd.DataFrame({'y': [1.0, 2.0, 3.0, 4.0], 'g': ['a', 'a', 'b', 'b']})\n"
        "try:\n"
        "    mixbridge.lmer('y ~ 1 + (1|g)', d, engine='r')\n"
        "except mixbridge.RNotAvailableError as exc:\n"
        "    print('RNotAvailableError:', exc, exc.missing)\n"
    )
    env = dict(os.environ, R_HOME=str(r_home))
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert child.returncode == 0, child.stderr[-1000:]
    assert f"RNotAvailableError: R_HOME points at {str(r_home)!r}" in child.stdout, child.stdout
    assert "To fix: unset R_HOME" in child.stdout and "['R_HOME']" in child.stdout
