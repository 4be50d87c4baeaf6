"""Where R lives, what is missing, and how to install it.

`MIXBRIDGE_RSCRIPT` overrides the Rscript used by the subprocess transport (and by `doctor`);
the embedded transport uses rpy2, which finds R through `R_HOME` or `R RHOME` on PATH.
"""

from __future__ import annotations

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
