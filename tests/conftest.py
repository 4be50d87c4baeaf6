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


_R_PACKAGES: dict[str, bool] = {}


def require_r_packages(config: pytest.Config, *packages: str) -> None:
    """Skip (locally) or fail (CI=true / --require-r) unless R has all of `packages`
    (e.g. broom.mixed, emmeans, lmerTest: Debian's r-cran-*, installed by ci/setup.sh)."""
    unknown = [p for p in packages if p not in _R_PACKAGES]
    if unknown and r_problem() is None:
        probe = "cat(vapply(commandArgs(TRUE), function(p) nzchar(system.file(package = p)), NA))"
        out = subprocess.run(
            ["Rscript", "--vanilla", "-e", probe, *unknown],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        found = out.stdout.split()
        for name, flag in zip(unknown, found + ["FALSE"] * len(unknown), strict=False):
            _R_PACKAGES[name] = flag == "TRUE"
    problem = r_problem()
    missing = [p for p in packages if not _R_PACKAGES.get(p, False)]
    if problem is None and not missing:
        return
    why = problem or f"R packages missing: {', '.join(missing)} (apt-get install r-cran-...)"
    if _r_required(config):
        pytest.fail(f"R packages required but unavailable: {why}", pytrace=False)
    pytest.skip(f"R packages unavailable: {why}")


@pytest.fixture(scope="session")
def cluster_client():
    """A local Dask cluster (2 worker processes, 1 thread each) and its client, started once
    for the session's Dask tests (test_dask.py, test_dask_glmer.py; see tests/dask_harness.py)."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    client = Client(cluster)
    yield cluster, client
    client.close()
    cluster.close()
