"""Where R lives, what is missing, and how to install it.

`MIXBRIDGE_RSCRIPT` overrides the Rscript used by the subprocess transport (and by `doctor`);
the embedded transport uses rpy2, which finds R through `R_HOME` or `R RHOME` on PATH.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import subprocess
from importlib import resources
from pathlib import Path

from mixbridge.errors import RNotAvailableError

R_PACKAGES = ("lme4", "arm", "Matrix", "jsonlite")

APT_INSTALL = (
    "apt-get install -y --no-install-recommends r-base-core r-cran-lme4 r-cran-arm r-cran-jsonlite"
)
RPY2_INSTALL = 'pip install "rpy2==3.5.17"  (rpy2 >= 3.6.7 needs R >= 4.5)'
# The newest rpy2 that loads R < 4.5: later releases call R_getVar, which R added in 4.5.
RPY2_FOR_OLD_R = "3.5.17"


def _is_debian() -> bool:
    return Path("/etc/debian_version").exists()


def install_r_hint() -> str:
    """The command that installs R with lme4, arm and jsonlite on this system."""
    if _is_debian():
        return APT_INSTALL
    if platform.system() == "Darwin":
        return "brew install r  (then the install.packages(...) line below)"
    return "install R from https://cran.r-project.org"


def install_packages_hint(missing: list[str]) -> str:
    """How to install missing R packages (apt on Debian, else install.packages)."""
    if _is_debian():
        deb = {"lme4": "r-cran-lme4", "arm": "r-cran-arm", "Matrix": "r-cran-matrix"}
        names = " ".join(deb.get(p, f"r-cran-{p.lower()}") for p in missing)
        return f"apt-get install -y --no-install-recommends {names}"
    quoted = ", ".join(f'"{p}"' for p in missing)
    return f"Rscript -e 'install.packages(c({quoted}), repos = \"https://cloud.r-project.org\")'"


def script_path(name: str) -> str:
    """Absolute path of a shipped R script (package data in mixbridge/r_scripts)."""
    return str(resources.files("mixbridge").joinpath("r_scripts", name))


def find_rscript() -> str:
    """Path of Rscript, or RNotAvailableError saying how to get it."""
    override = os.environ.get("MIXBRIDGE_RSCRIPT")
    if override:
        if Path(override).is_file() and os.access(override, os.X_OK):
            return override
        raise RNotAvailableError(
            f"MIXBRIDGE_RSCRIPT={override!r} is not an executable file",
            missing=["Rscript"],
            install=install_r_hint(),
        )
    found = shutil.which("Rscript")
    if found is None:
        raise RNotAvailableError(
            "Rscript (R) was not found on PATH", missing=["R"], install=install_r_hint()
        )
    return found


def missing_r_packages(rscript: str, timeout: float = 120.0) -> list[str]:
    """R packages among R_PACKAGES that the given Rscript cannot load."""
    probe = (
        f"p <- c({', '.join(repr(p) for p in R_PACKAGES)});"
        "cat(p[!vapply(p, requireNamespace, logical(1), quietly = TRUE)], sep = ' ')"
    )
    out = subprocess.run(
        [rscript, "--vanilla", "-e", probe], capture_output=True, text=True, timeout=timeout
    )
    if out.returncode != 0:
        raise RNotAvailableError(
            f"{rscript} failed to run: {out.stderr.strip()[-400:]}",
            missing=["R"],
            install=install_r_hint(),
        )
    return out.stdout.split()


def _without_r_home() -> dict[str, str]:
    """This process's environment minus R_HOME (a wrong R_HOME must not steer the probes)."""
    return {k: v for k, v in os.environ.items() if k != "R_HOME"}


@functools.lru_cache(maxsize=8)
def _rscript_output(rscript: str, expr: str) -> str | None:
    try:
        out = subprocess.run(
            [rscript, "--vanilla", "-e", expr],
            capture_output=True,
            text=True,
            timeout=120,
            env=_without_r_home(),
        )
    except (OSError, subprocess.SubprocessError):
        return None
    text = out.stdout.strip()
    return text.splitlines()[-1] if out.returncode == 0 and text else None


def r_version(rscript: str | None = None) -> str | None:
    """The version of the R that `rscript` (default: the one found on PATH) runs, or None."""
    try:
        rscript = rscript or find_rscript()
    except RNotAvailableError:
        return None
    return _rscript_output(rscript, "cat(as.character(getRversion()))")


def r_home(rscript: str | None = None) -> str | None:
    """R's own idea of its home directory (`R.home()`), or None when R cannot run."""
    try:
        rscript = rscript or find_rscript()
    except RNotAvailableError:
        return None
    return _rscript_output(rscript, "cat(R.home())")


def r_home_problem() -> str | None:
    """Why the R_HOME environment variable, when set, is not an R installation; else None.

    Embedded R started from a wrong R_HOME cannot find its base package and exits the whole
    process, so this is checked before rpy2 is asked to start R.
    """
    value = os.environ.get("R_HOME")
    if not value:
        return None
    if not os.path.isdir(value):
        return f"R_HOME points at {value!r}, which is not a directory"
    if not os.path.isfile(os.path.join(value, "library", "base", "DESCRIPTION")):
        return f"R_HOME points at {value!r}, which is not an R installation (no library/base)"
    return None


def r_home_fix() -> str:
    """The command that repairs a wrong R_HOME."""
    home = r_home()
    if home:
        return f"unset R_HOME  (or: export R_HOME={home})"
    return "unset R_HOME, or set it to the output of `R RHOME`"


def rpy2_version() -> str | None:
    """The installed rpy2's version, or None when rpy2 is not installed.

    Read from the package metadata: rpy2 3.6 is a namespace package without `__version__`, and
    uninstalling it can leave an empty `rpy2` folder behind, so a bare `rpy2` is not enough.
    """
    try:
        return importlib.metadata.version("rpy2")
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        if importlib.util.find_spec("rpy2.rinterface") is None:
            return None
    except (ImportError, ValueError):
        return None
    try:
        import rpy2

        return str(getattr(rpy2, "__version__", "(unknown version)"))
    except Exception:
        return "(unknown version)"


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def rpy2_install_hint(r_version_: str | None) -> str:
    """The pip command that installs an rpy2 able to load R `r_version_` (None: not known)."""
    if r_version_ is None:
        return RPY2_INSTALL
    if _version_tuple(r_version_) < (4, 5):
        return f'pip install "rpy2=={RPY2_FOR_OLD_R}"'
    return 'pip install "rpy2>=3.6.7"'
