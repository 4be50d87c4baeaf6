"""`mixbridge doctor`: what is installed, which engines and transports can run, how to fix.

Checks, each independently (one failure never hides the others):
Python packages (numpy, scipy, pandas, rpy2), R_HOME when it is set, Rscript and the R packages
(lme4, Matrix, arm, jsonlite) it can load, and a real round trip through each transport (a tiny
lmer in R). The embedded transport is tried in a child Python process, so an R that takes its
process down (rpy2 built for another R, a wrong R_HOME) is reported instead of ending the doctor.
Exit status: 0 when the R engine can run through at least one transport, 1 otherwise.
`MIXBRIDGE_RSCRIPT` selects the Rscript to check.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mixbridge.bridge import locate
from mixbridge.errors import RNotAvailableError

_R_PACKAGES = ("lme4", "Matrix", "arm", "jsonlite")
# the R engine's tests and df (fit.coef_table / fit.anova): reported, not required to fit
_R_INFERENCE_PACKAGES = ("lmerTest", "pbkrtest")
_R_VERSIONS = (
    "cat('mixbridge-versions', paste(R.version$major, R.version$minor, sep = '.'));"
    f"for (p in c({', '.join(repr(p) for p in _R_PACKAGES + _R_INFERENCE_PACKAGES)}))"
    " cat(' ', p, '=',"
    " tryCatch(as.character(packageVersion(p)), error = function(e) 'missing'), sep = '')"
)
_PROBE_TIMEOUT = 300.0


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    fixes: list[str] = field(default_factory=list)

    def row(self, name: str, status: str) -> None:
        self.lines.append(f"  {name:<22} {status}")

    def fix(self, problem: str, command: str) -> None:
        entry = f"  - {problem}\n      fix: {command}"
        if entry not in self.fixes:
            self.fixes.append(entry)


@dataclass
class Probe:
    """The outcome of one round trip through a transport: ok, or the problem and its fix."""

    problem: str | None = None
    fix: str = ""
    # the problem is rpy2 (absent, or unable to load this R): engine="r" falls back to Rscript
    rpy2: bool = False


def _py_version(mod: str) -> str | None:
    try:
        return str(importlib.import_module(mod).__version__)
    except Exception:
        return None


def _r_home(rep: Report) -> bool:
    """A row for R_HOME when it is set; False when it is not an R installation."""
    value = os.environ.get("R_HOME")
    if not value:
        return True
    problem = locate.r_home_problem()
    if problem is None:
        rep.row("R_HOME", value)
        return True
    rep.row("R_HOME", f"{value}  NOT AN R INSTALLATION")
    rep.fix(problem, locate.r_home_fix())
    return False


def _r_info(rep: Report) -> tuple[str | None, dict[str, str]]:
    """Rscript path and versions of R and its packages ('missing' when absent)."""
    try:
        rscript = locate.find_rscript()
    except RNotAvailableError as exc:
        rep.row("R (Rscript)", f"NOT FOUND ({str(exc).splitlines()[0]})")
        rep.fix("R is not installed or not on PATH", exc.install or locate.install_r_hint())
        return None, {}
    env = {k: v for k, v in os.environ.items() if k != "R_HOME"}
    try:
        out = subprocess.run(
            [rscript, "--vanilla", "-e", _R_VERSIONS],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        rep.row("R (Rscript)", f"FAILED to run {rscript}: {exc}")
        rep.fix(f"{rscript} does not run", locate.install_r_hint())
        return None, {}
    # Only the marked line counts: R may print warnings (e.g. about R_HOME) on stdout too.
    found = re.search(r"mixbridge-versions (\S+)((?: \S+=\S+)*)", out.stdout)
    if out.returncode != 0 or found is None:
        rep.row("R (Rscript)", f"FAILED: {(out.stderr or out.stdout).strip()[-300:]}")
        rep.fix(f"{rscript} does not run", locate.install_r_hint())
        return None, {}
    versions = {"R": found.group(1)} | dict(p.split("=", 1) for p in found.group(2).split())
    rep.row("R", f"{versions['R']}  ({rscript})")
    missing = [p for p in _R_PACKAGES if versions.get(p) == "missing"]
    for p in _R_PACKAGES:
        rep.row(f"R package {p}", versions.get(p, "?"))
    for p in _R_INFERENCE_PACKAGES:
        rep.row(f"R package {p} (tests, df)", versions.get(p, "?"))
    if missing:
        rep.fix(f"R packages missing: {', '.join(missing)}", locate.install_packages_hint(missing))
    return rscript, versions


def _probe_fit(transport: str) -> Probe:
    """A tiny lmer through `transport`, in this process."""
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
            timeout=_PROBE_TIMEOUT,
        )
    except RNotAvailableError as exc:
        return Probe(
            str(exc).splitlines()[0], exc.install or locate.install_r_hint(), "rpy2" in exc.missing
        )
    except Exception as exc:  # report, never crash the doctor
        text = str(exc).splitlines()[0] if str(exc) else ""
        return Probe(
            f"{type(exc).__name__}: {text}",
            "unexpected failure: run mixbridge.lmer(..., engine='r') to see the full error",
        )
    if not np.isfinite(fit.fixef.iloc[0]):
        return Probe("the test fit returned a non-finite estimate", "report this as a bug")
    return Probe()


def _probe_embedded() -> Probe:
    """The embedded round trip in a child Python: R may take its process down."""
    package_root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    code = (
        "import json\n"
        "from mixbridge.doctor import _probe_fit\n"
        "p = _probe_fit('embedded')\n"
        "print('mixbridge-probe ' + json.dumps(p.__dict__))\n"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=_PROBE_TIMEOUT + 60,
            env=env,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Probe(f"the embedded R check did not finish ({exc})", "run mixbridge doctor again")
    for line in out.stdout.splitlines():
        if line.startswith("mixbridge-probe "):
            return Probe(**json.loads(line.removeprefix("mixbridge-probe ")))
    detail = (out.stderr.strip().splitlines() or ["no output"])[-1]
    rpy2 = locate.rpy2_version()
    return Probe(
        f"starting the embedded R ended its Python process (exit status {out.returncode}: "
        f"{detail})",
        locate.rpy2_install_hint(locate.r_version()) if rpy2 else locate.install_r_hint(),
    )


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
    rpy2_v = locate.rpy2_version()
    rep.row("rpy2", rpy2_v or "not installed")
    r_home_ok = _r_home(rep)
    rscript, rvers = _r_info(rep)
    if rpy2_v is None:
        rep.fix(
            "rpy2 is not installed: the embedded transport cannot run (the subprocess "
            "transport needs no rpy2)",
            locate.rpy2_install_hint(rvers.get("R")),
        )

    rep.lines.append("")
    rep.lines.append("Engines and transports:")
    py_ok = all(_py_version(m) for m in ("numpy", "scipy", "pandas"))
    rep.row("engine python", "OK" if py_ok else "CANNOT RUN")
    r_ready = rscript is not None and not any(
        rvers.get(p) == "missing" for p in ("lme4", "Matrix", "arm")
    )
    results: dict[str, Probe] = {}
    for transport in ("embedded", "subprocess"):
        if not r_ready:
            probe = Probe("R or its packages are missing (see above)")
        elif transport == "embedded" and rpy2_v is None:
            probe = Probe("rpy2 is not installed", rpy2=True)
        elif transport == "embedded" and not r_home_ok:
            probe = Probe("R_HOME is not an R installation (see above)")
        elif transport == "subprocess" and rvers.get("jsonlite") == "missing":
            probe = Probe("R package jsonlite is missing")
        else:
            probe = _probe_embedded() if transport == "embedded" else _probe_fit(transport)
            if probe.problem:
                rep.fix(f"transport {transport} fails: {probe.problem}", probe.fix)
        results[transport] = probe
        status = "OK" if probe.problem is None else f"CANNOT RUN: {probe.problem}"
        rep.row(f"engine r ({transport})", status)
    r_ok = any(p.problem is None for p in results.values())
    # What engine="r" without transport= does (bridge.resolve_transport)
    if results["embedded"].problem is None:
        default = "the embedded transport"
    elif results["embedded"].rpy2 and results["subprocess"].problem is None:
        default = "the subprocess transport, with a warning (rpy2 cannot start R; see the fix)"
    else:
        default = "nothing: it raises RNotAvailableError (see the fixes)"
    rep.row('engine="r" uses', default)

    rep.lines.append("")
    if rep.fixes:
        rep.lines.append("Problems and fixes:")
        rep.lines.extend(rep.fixes)
    else:
        rep.lines.append("No problems found.")
    out.write("\n".join(rep.lines) + "\n")
    return 0 if r_ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mixbridge doctor",
        description="Check R, lme4, arm, rpy2 and the engines; print what to fix.",
    )
    parser.parse_args(list(argv or []))
    return run()


if __name__ == "__main__":
    sys.exit(main())
