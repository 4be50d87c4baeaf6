"""`mixbridge doctor`: what is installed, which engines and transports can run, how to fix.

Checks, each independently (one failure never hides the others):
Python packages (numpy, scipy, pandas, rpy2), Rscript and the R packages (lme4, Matrix, arm,
jsonlite) it can load, and a real round trip through each transport (a tiny lmer in R). Exit
status: 0 when the R engine can run through at least one transport, 1 otherwise.
`MIXBRIDGE_RSCRIPT` selects the Rscript to check.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import subprocess
import sys
from dataclasses import dataclass, field

from mixbridge.bridge import locate
from mixbridge.errors import RNotAvailableError

_R_VERSIONS = (
    "cat(paste(R.version$major, R.version$minor, sep = '.'));"
    "for (p in c('lme4', 'Matrix', 'arm', 'jsonlite')) cat(' ', p, '=',"
    " tryCatch(as.character(packageVersion(p)), error = function(e) 'missing'), sep = '')"
)


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    fixes: list[str] = field(default_factory=list)

    def row(self, name: str, status: str) -> None:
        self.lines.append(f"  {name:<22} {status}")

    def fix(self, problem: str, command: str) -> None:
        self.fixes.append(f"  - {problem}\n      fix: {command}")


def _py_version(mod: str) -> str | None:
    try:
        return str(importlib.import_module(mod).__version__)
    except Exception:
        return None


def _r_info(rep: Report) -> tuple[str | None, dict[str, str]]:
    """Rscript path and versions of R and its packages ('missing' when absent)."""
    try:
        rscript = locate.find_rscript()
    except RNotAvailableError as exc:
        rep.row("R (Rscript)", f"NOT FOUND ({str(exc).splitlines()[0]})")
        rep.fix("R is not installed or not on PATH", exc.install or locate.install_r_hint())
        return None, {}
    try:
        out = subprocess.run(
            [rscript, "--vanilla", "-e", _R_VERSIONS], capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        rep.row("R (Rscript)", f"FAILED to run {rscript}: {exc}")
        rep.fix(f"{rscript} does not run", locate.install_r_hint())
        return None, {}
    if out.returncode != 0:
        rep.row("R (Rscript)", f"FAILED: {out.stderr.strip()[-300:]}")
        rep.fix(f"{rscript} does not run", locate.install_r_hint())
        return None, {}
    parts = out.stdout.split()
    versions = {"R": parts[0]} | dict(p.split("=", 1) for p in parts[1:])
    rep.row("R", f"{versions['R']}  ({rscript})")
    missing = [p for p in ("lme4", "Matrix", "arm", "jsonlite") if versions.get(p) == "missing"]
    for p in ("lme4", "Matrix", "arm", "jsonlite"):
        rep.row(f"R package {p}", versions.get(p, "?"))
    if missing:
        rep.fix(f"R packages missing: {', '.join(missing)}", locate.install_packages_hint(missing))
    return rscript, versions


def _probe_transport(transport: str) -> str | None:
    """None when a tiny lmer round-trips through `transport`, else the problem."""
    import numpy as np
    import pandas as pd

    from mixbridge import bridge

    rng = np.random.default_rng(1)
    g = np.repeat(np.arange(6), 5)
    df = pd.DataFrame({"y": rng.normal(size=30) + g * 0.5, "g": pd.Categorical(g.astype(str))})
    try:
        fit = bridge.lmer(
            "y ~ 1 + (1 | g)",
            df,
            reml=True,
            weights=None,
            offset=None,
            control={},
            transport=transport,
        )
    except Exception as exc:  # report, never crash the doctor
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if not np.isfinite(fit.fixef.iloc[0]):
        return "the test fit returned a non-finite estimate"
    return None


def run(stdout=None) -> int:
    out = stdout or sys.stdout
    rep = Report()
    rep.lines.append("mixbridge doctor")
    rep.lines.append("")
    rep.lines.append("Versions:")
    rep.row("Python", f"{platform.python_version()}  ({sys.executable})")
    for mod in ("numpy", "scipy", "pandas"):
        v = _py_version(mod)
        rep.row(mod, v or "MISSING")
        if v is None:
            rep.fix(f"{mod} is not installed", f'pip install "{mod}"')
    rpy2_v = _py_version("rpy2")
    rep.row("rpy2", rpy2_v or "not installed")
    rscript, rvers = _r_info(rep)
    if rpy2_v is None:
        rep.fix("rpy2 missing: the embedded transport cannot run", locate.RPY2_INSTALL)

    rep.lines.append("")
    rep.lines.append("Engines and transports:")
    py_ok = all(_py_version(m) for m in ("numpy", "scipy", "pandas"))
    rep.row("engine python", "OK" if py_ok else "CANNOT RUN")
    r_ready = rscript is not None and not any(
        rvers.get(p) == "missing" for p in ("lme4", "Matrix", "arm")
    )
    results: dict[str, str | None] = {}
    for transport in ("embedded", "subprocess"):
        if not r_ready:
            problem = "R or its packages are missing (see above)"
        elif transport == "embedded" and rpy2_v is None:
            problem = "rpy2 is not installed"
        elif transport == "subprocess" and rvers.get("jsonlite") == "missing":
            problem = "R package jsonlite is missing"
        else:
            problem = _probe_transport(transport)
            if problem:
                rep.fix(f"transport {transport} fails: {problem}", _hint_for(problem))
        results[transport] = problem
        rep.row(f"engine r ({transport})", "OK" if problem is None else f"CANNOT RUN: {problem}")
    r_ok = any(p is None for p in results.values())

    rep.lines.append("")
    if rep.fixes:
        rep.lines.append("Problems and fixes:")
        rep.lines.extend(rep.fixes)
    else:
        rep.lines.append("No problems found.")
    out.write("\n".join(rep.lines) + "\n")
    return 0 if r_ok else 1


def _hint_for(problem: str) -> str:
    if "rpy2" in problem:
        return locate.RPY2_INSTALL
    if problem.startswith("RNotAvailableError") and "package" in problem:
        return locate.install_packages_hint(["lme4", "arm", "Matrix", "jsonlite"])
    if problem.startswith("RNotAvailableError"):
        return locate.install_r_hint()
    return "unexpected failure: run mixbridge.lmer(..., engine='r') to see the full error"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mixbridge doctor",
        description="Check R, lme4, arm, rpy2 and the engines; print what to fix.",
    )
    parser.parse_args(list(argv or []))
    return run()


if __name__ == "__main__":
    sys.exit(main())
