"""The subprocess transport: one `Rscript mixbridge_cli.R request.json response.json` per call.

Data columns travel as raw little-endian bytes next to the JSON request; every double in the
response comes back the same way ({"__bin__": [offset, length]} in the JSON), so results are
bit-identical to the embedded transport.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from mixbridge.bridge import locate
from mixbridge.bridge.convert import Column
from mixbridge.errors import RModelError, RNotAvailableError


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


def call(
    function: str,
    args: dict[str, Any],
    columns: list[Column] | None = None,
    nrow: int = 0,
    timeout: float | None = None,
    newdata: tuple[list[Column], int] | None = None,
) -> dict[str, Any]:
    """Run one mb_* entry point in a fresh Rscript; returns {ok, value, messages, error}."""
    rscript = locate.find_rscript()
    tmp = Path(tempfile.mkdtemp(prefix="mixbridge-"))
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
        proc = subprocess.run(
            [
                rscript,
                "--vanilla",
                locate.script_path("mixbridge_cli.R"),
                str(req_path),
                str(resp_path),
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0 or not resp_path.exists():
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
        doubles = np.fromfile(str(resp_path) + ".bin", dtype="<f8")
        return _decode(json.loads(resp_path.read_text()), doubles)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
