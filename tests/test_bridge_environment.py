"""Starting embedded R must not change the environment that later child processes inherit."""

from __future__ import annotations

import os
import subprocess
import sys


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
