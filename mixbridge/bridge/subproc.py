"""The subprocess transport: one `Rscript mixbridge_cli.R request.json response.json` per call.

Data columns travel as raw little-endian bytes next to the JSON request; every double in the
response comes back the same way ({"__bin__": [offset, length]} in the JSON), so results are
bit-identical to the embedded transport.

Each call works in a temporary folder `mixbridge-<pid>-*` (pid: this Python process), removed
when the call ends, also on a timeout or Ctrl-C (the Rscript process group is killed first). A
Python process killed outright cannot clean up, so the first call of every process removes the
folders of processes that no longer exist, and kills their Rscript if it still runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from mixbridge.bridge import locate
from mixbridge.bridge.convert import Column
from mixbridge.errors import RBridgeError, RModelError, RNotAvailableError, RTimeoutError

TEMP_PREFIX = "mixbridge-"
_TEMP_NAME = re.compile(r"mixbridge-(\d+)-[A-Za-z0-9_]+")
_CHILD_PID_FILE = "child.pid"
_STALE_CLEANED: list[bool] = []
_STALE_LOCK = threading.Lock()


def _jsonable(value: Any, doubles: list[np.ndarray]) -> Any:
    """JSON-ready arguments; every double goes to the binary side file (exact, Inf/NaN too)."""
    if isinstance(value, dict):
        return {k: _jsonable(v, doubles) for k, v in value.items()}
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) or (
        isinstance(value, np.ndarray) and value.dtype.kind == "f"
    ):
        arr = np.atleast_1d(np.asarray(value, dtype="<f8"))
        off = sum(a.size for a in doubles)
        doubles.append(arr)
        return {"__bin__": [off, int(arr.size)]}
    if isinstance(value, np.ndarray):
        return [_jsonable(v, doubles) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, doubles) for v in value]
    return value


def _decode(x: Any, doubles: np.ndarray) -> Any:
    if isinstance(x, dict):
        if set(x) == {"__bin__"}:
            off, n = (int(v) for v in x["__bin__"])
            if off < 0 or n < 0 or off + n > doubles.size:
                raise ValueError(f"doubles [{off}, {off + n}) lie outside the {doubles.size} sent")
            return doubles[off : off + n].copy()
        return {k: _decode(v, doubles) for k, v in x.items()}
    if isinstance(x, list):
        return [_decode(v, doubles) for v in x]
    return x


def _write_frame(path: Path, columns: list[Column], nrow: int) -> dict[str, Any]:
    with open(path, "wb") as fh:
        for c in columns:
            dtype = "<f8" if c.kind == "double" else "<i4"
            np.ascontiguousarray(c.values, dtype=dtype).tofile(fh)
    return {
        "file": str(path),
        "nrow": nrow,
        "columns": [{"name": c.name, "kind": c.kind, "levels": list(c.levels)} for c in columns],
    }


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _kill_orphan(folder: Path) -> None:
    """Kill the Rscript that a dead process left running in `folder` (Linux: checked by its
    command line, which names the folder, so a reused pid is never killed)."""
    try:
        pid = int((folder / _CHILD_PID_FILE).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return
    if str(folder).encode() in cmdline:
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)


def clean_stale_tempdirs(root: str | Path | None = None) -> list[Path]:
    """Remove `mixbridge-<pid>-*` folders whose process is gone; returns the removed ones."""
    base = Path(root or tempfile.gettempdir())
    removed = []
    try:
        candidates = list(base.glob(TEMP_PREFIX + "*"))
    except OSError:
        return removed
    for folder in candidates:
        match = _TEMP_NAME.fullmatch(folder.name)
        if match is None or folder.is_symlink() or not folder.is_dir():
            continue
        try:
            if hasattr(os, "getuid") and folder.stat().st_uid != os.getuid():
                continue
        except OSError:
            continue
        owner = int(match.group(1))
        if owner == os.getpid() or _process_alive(owner):
            continue
        _kill_orphan(folder)
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _clean_stale_once() -> None:
    with _STALE_LOCK:
        if not _STALE_CLEANED:
            _STALE_CLEANED.append(True)
            clean_stale_tempdirs()


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill Rscript and anything it started (it leads its own process group on POSIX)."""
    if hasattr(os, "killpg"):
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        proc.kill()
    proc.wait()
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def _run_rscript(
    command: list[str], folder: Path, timeout: float | None, function: str
) -> subprocess.CompletedProcess:
    # A new session: Ctrl-C reaches Python only, which then kills the whole group.
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        (folder / _CHILD_PID_FILE).write_text(str(proc.pid))
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise RTimeoutError(
            f"R did not finish {function} within {timeout:g} s; its Rscript process was killed",
            timeout=float(timeout or 0.0),
            function=function,
            transport="subprocess",
        ) from None
    except BaseException:
        _kill_group(proc)
        raise
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def _read_response(resp_path: Path, function: str) -> dict[str, Any]:
    """The decoded response, or RBridgeError saying what is wrong with it."""
    try:
        doubles = np.fromfile(str(resp_path) + ".bin", dtype="<f8")
        res = _decode(json.loads(resp_path.read_text()), doubles)
    except (OSError, ValueError, TypeError) as exc:  # JSONDecodeError is a ValueError
        raise RBridgeError(
            f"the response of Rscript to {function} could not be read ({type(exc).__name__}: "
            f"{exc})",
            function=function,
        ) from None
    if not isinstance(res, dict) or "ok" not in res:
        raise RBridgeError(
            f"the response of Rscript to {function} is not a mixbridge result "
            f"(got {type(res).__name__})",
            function=function,
        )
    return res


def call(
    function: str,
    args: dict[str, Any],
    columns: list[Column] | None = None,
    nrow: int = 0,
    timeout: float | None = None,
    newdata: tuple[list[Column], int] | None = None,
) -> dict[str, Any]:
    """Run one mb_* entry point in a fresh Rscript; returns {ok, value, messages, error}.

    `timeout` (seconds, None: no limit) covers the whole Rscript run, R's start-up included;
    when it passes the process is killed and RTimeoutError raised.
    """
    rscript = locate.find_rscript()
    _clean_stale_once()
    tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-"))
    try:
        arg_doubles: list[np.ndarray] = []
        request: dict[str, Any] = {
            "function": function,
            "args": _jsonable(args, arg_doubles),
            "args_file": str(tmp / "args.bin"),
            "data": None,
        }
        with open(tmp / "args.bin", "wb") as fh:
            for a in arg_doubles:
                a.tofile(fh)
        if columns is not None:
            request["data"] = _write_frame(tmp / "data.bin", columns, nrow)
        if newdata is not None:
            request["newdata"] = _write_frame(tmp / "newdata.bin", *newdata)
        req_path, resp_path = tmp / "request.json", tmp / "response.json"
        req_path.write_text(json.dumps(request))
        command = [
            rscript,
            "--vanilla",
            locate.script_path("mixbridge_cli.R"),
            str(req_path),
            str(resp_path),
        ]
        proc = _run_rscript(command, tmp, timeout, function)
        if proc.returncode < 0:
            name = signal.Signals(-proc.returncode).name
            raise RBridgeError(
                f"Rscript running {function} was killed by {name} (out of memory?)",
                function=function,
            )
        if proc.returncode != 0:
            err = proc.stderr.strip()
            if "there is no package called" in err:
                pkg = err.split("there is no package called")[-1].strip(" ‘’'\"\n")
                raise RNotAvailableError(
                    f"R package {pkg} is missing for {rscript}",
                    missing=[pkg],
                    install=locate.install_packages_hint([pkg]),
                )
            raise RModelError(
                err[-2000:] or f"Rscript exited with status {proc.returncode}", function=function
            )
        if not resp_path.exists():
            raise RBridgeError(
                f"Rscript finished {function} without writing a response "
                f"(stderr: {proc.stderr.strip()[-500:] or 'empty'})",
                function=function,
            )
        return _read_response(resp_path, function)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
