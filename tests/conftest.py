"""Shared test fixtures.

R is real, never mocked. Tests that need R request the `needs_r` fixture (or `r_dataset`): without
R, lme4 or arm they skip on a developer machine and FAIL under CI=true (or with --require-r).
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def _r_problem() -> str | None:
    """Why the R engine cannot run here, or None when R, lme4, arm and rpy2 are all present."""
    if shutil.which("Rscript") is None:
        return "Rscript not found on PATH"
    probe = (
        "p <- c('lme4','arm','Matrix','jsonlite');"
        "m <- p[!vapply(p, requireNamespace, logical(1), quietly=TRUE)];"
        "cat(m)"
    )
    out = subprocess.run(
        ["Rscript", "--vanilla", "-e", probe], capture_output=True, text=True, timeout=120
    )
    if out.returncode != 0:
        return f"Rscript failed: {out.stderr.strip()[-500:]}"
    if out.stdout.strip():
        return f"R packages missing: {out.stdout.strip()}"
    try:
        import rpy2  # noqa: F401
    except ImportError as exc:
        return f"rpy2 cannot be imported: {exc}"
    return None


_R_PROBLEM: list[str | None] = []


def r_problem() -> str | None:
    if not _R_PROBLEM:
        _R_PROBLEM.append(_r_problem())
    return _R_PROBLEM[0]


def _r_required(config: pytest.Config) -> bool:
    return os.environ.get("CI", "").lower() == "true" or bool(
        config.getoption("--require-r", default=False)
    )


@pytest.fixture(scope="session")
def needs_r(request: pytest.FixtureRequest) -> None:
    """Skip (locally) or fail (CI=true / --require-r) when the R engine cannot run."""
    problem = r_problem()
    if problem is None:
        return
    if _r_required(request.config):
        pytest.fail(f"R engine required but unavailable: {problem}", pytrace=False)
    pytest.skip(f"R engine unavailable: {problem}")


@pytest.fixture(scope="session")
def r_dataset(needs_r):
    """Load a data set from an installed R package as a pandas DataFrame, cached per session."""
    from mixbridge.bridge.datasets import load_r_dataset

    cache: dict[tuple[str, str], object] = {}

    def load(name: str, package: str = "lme4"):
        key = (name, package)
        if key not in cache:
            cache[key] = load_r_dataset(name, package=package)
        return cache[key].copy()

    return load
