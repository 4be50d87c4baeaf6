"""pytest plugin (entry point `pytest11`) for checking a Python model against R in users' CI.

Option `--require-r`: tests that need R FAIL (instead of skipping) when R, lme4 or arm is missing;
`CI=true` in the environment does the same.

Fixtures:
- `r_session`: the bridge's R session (embedded through rpy2 when it imports, else Rscript), an
  `RSession` with `.transport`, `.versions` and `lmer`/`glmer`/`bayesglm` methods fitting with
  `engine="r"`. Skips, or fails under --require-r / CI=true, when R cannot run.
- `assert_matches_r`: `assert_matches_r(fit, data, **same_kwargs)` refits the model of `fit` with
  R (formula, REML/ML, family, link and nAGQ taken from the fit; pass weights/offset/prior
  arguments as you fitted them), runs `mixbridge.compare(fit, r_fit)` and raises AssertionError
  with the comparison table on any FAIL. Returns the Comparison.

A failing test's report gets a "mixbridge comparisons" section: the full table of every
`compare(...)` made during the test (through `assert_matches_r` or directly), so a CI log shows
which quantity missed, by how much, against which tolerance, without re-running anything.

Hypothesis profiles "ci" (derandomized, few examples) and "thorough" are registered here (see
`mixbridge.testing.strategies.register_profiles`); select with HYPOTHESIS_PROFILE.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mixbridge")
    group.addoption(
        "--require-r",
        action="store_true",
        default=False,
        help="fail, instead of skipping, tests that need R when R, lme4 or arm is missing",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs_r: the test calls R through the mixbridge bridge")
    try:
        from mixbridge.testing.strategies import register_profiles
    except ImportError:  # hypothesis not installed: profiles are optional
        return
    register_profiles()


_COMPARISONS = pytest.StashKey[list]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """Record the comparisons a test makes (shown in its report when it fails)."""
    from mixbridge.conformance.compare import recording

    with recording() as made:
        item.stash[_COMPARISONS] = made
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    made = item.stash.get(_COMPARISONS, None)
    if report.when == "call" and report.failed and made:
        text = "\n\n".join(str(c) for c in made)
        report.sections.append((f"mixbridge comparisons ({len(made)})", text))
    return report


def r_required(config: pytest.Config) -> bool:
    """R is mandatory under --require-r or CI=true."""
    return os.environ.get("CI", "").lower() == "true" or bool(
        config.getoption("--require-r", default=False)
    )


@dataclass
class RSession:
    """The R engine as the tests see it: one transport, the R package versions."""

    transport: str
    versions: dict[str, str] = field(default_factory=dict)

    def lmer(self, formula: str, data: Any, **kwargs: Any) -> Any:
        import mixbridge

        return mixbridge.lmer(formula, data, engine="r", transport=self.transport, **kwargs)

    def glmer(self, formula: str, data: Any, **kwargs: Any) -> Any:
        import mixbridge

        return mixbridge.glmer(formula, data, engine="r", transport=self.transport, **kwargs)

    def bayesglm(self, formula: str, data: Any, **kwargs: Any) -> Any:
        import mixbridge

        return mixbridge.bayesglm(formula, data, engine="r", transport=self.transport, **kwargs)


def _start_session() -> RSession:
    """Start (or reuse) the bridge's R; raises RNotAvailableError when R cannot run."""
    from mixbridge.bridge import locate
    from mixbridge.errors import RNotAvailableError

    try:
        from mixbridge.bridge import embedded

        ri, _ = embedded.session()
        with embedded.LOCK:
            probe = ri.evalr(
                "local({p <- c('lme4','arm','Matrix'); "
                "c(R = paste(R.version$major, R.version$minor, sep = '.'), "
                "vapply(p, function(x) as.character(packageVersion(x)), ''))})"
            )
            names = list(probe.names)
            versions = {str(n): str(v) for n, v in zip(names, probe, strict=True)}
        return RSession("embedded", versions)
    except RNotAvailableError as exc:
        if "rpy2" not in getattr(exc, "missing", []):
            raise
    rscript = locate.find_rscript()
    missing = locate.missing_r_packages(rscript)
    if missing:
        raise RNotAvailableError(
            f"R packages missing: {', '.join(missing)}",
            missing=missing,
            install=locate.install_packages_hint(missing),
        )
    return RSession("subprocess", {})


@pytest.fixture(scope="session")
def r_session(request: pytest.FixtureRequest) -> RSession:
    """The bridge's R session; skip (or fail under --require-r / CI=true) without R."""
    try:
        return _start_session()
    except Exception as exc:  # RNotAvailableError, or a bridge that cannot load at all
        if r_required(request.config):
            pytest.fail(f"R engine required but unavailable: {exc}", pytrace=False)
        pytest.skip(f"R engine unavailable: {exc}")


def _refit_kwargs(fit: Any, kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The model call and keyword arguments that reproduce `fit` with another engine."""
    from mixbridge.results import BayesGLMFit, MixedFit

    if isinstance(fit, MixedFit):
        if fit.model == "lmer":
            return "lmer", {"reml": fit.reml, **kwargs}
        return "glmer", {"family": fit.family, "link": fit.link, "nagq": fit.nagq, **kwargs}
    if isinstance(fit, BayesGLMFit):
        return "bayesglm", {"family": fit.family, "link": fit.link, **kwargs}
    raise TypeError(f"assert_matches_r needs a MixedFit or BayesGLMFit, got {type(fit).__name__}")


@pytest.fixture
def assert_matches_r(r_session: RSession):
    """`assert_matches_r(fit, data, tolerance=None, **fit_kwargs)` -> Comparison (or raises)."""
    from mixbridge.conformance.compare import compare

    def check(fit: Any, data: Any, tolerance: Any = None, **kwargs: Any) -> Any:
        model, call_kwargs = _refit_kwargs(fit, kwargs)
        reference = getattr(r_session, model)(fit.formula, data, **call_kwargs)
        comparison = compare(fit, reference, tolerance=tolerance)
        comparison.assert_ok()
        return comparison

    return check
