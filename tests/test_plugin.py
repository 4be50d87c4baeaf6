"""The pytest plugin as a user's CI sees it (pytester runs real pytest sessions in a subprocess)."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

USER_TESTS = """
import numpy as np
import pandas as pd
import pytest

import mixbridge


def data():
    rng = np.random.default_rng(7)
    g = np.repeat([f"g{j}" for j in range(10)], 8)
    y = 1.0 + rng.normal(0, 1.2, 10)[np.repeat(np.arange(10), 8)] + rng.normal(0, 1, 80)
    return pd.DataFrame({"y": y, "g": pd.Categorical(g)})


def test_session(r_session):
    assert r_session.transport in ("embedded", "subprocess")
    fit = r_session.lmer("y ~ 1 + (1 | g)", data())
    assert fit.nobs == 80


def test_python_matches_r(assert_matches_r):
    d = data()
    fit = mixbridge.lmer("y ~ 1 + (1 | g)", d, reml=False)
    cmp = assert_matches_r(fit, d)
    assert cmp.ok and cmp.row("fixef").status == "ok"


def test_drift_is_caught(assert_matches_r):
    d = data()
    fit = mixbridge.lmer("y ~ 1 + (1 | g)", d)
    fit.fixef = fit.fixef + 0.05   # a drifted implementation
    with pytest.raises(AssertionError) as info:
        assert_matches_r(fit, d)
    assert "fixef" in str(info.value) and "FAIL" in str(info.value)
"""

NO_R_TEST = """
def test_needs_r(r_session):
    pass
"""


def test_plugin_fixtures_against_live_r(needs_r, pytester):
    # in a subprocess: pytester's in-process run drops the modules first imported inside it
    # (rpy2's, when this test runs first), and rpy2 imported twice rejects its own objects
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


def _no_r_env(monkeypatch, tmp_path):
    # R cannot be reached: rpy2 fails to import (a stub package first on the path) and the
    # Rscript override is not an executable file
    stub = tmp_path / "stub" / "rpy2"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('rpy2 hidden for this test')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "stub"))
    monkeypatch.setenv("MIXBRIDGE_RSCRIPT", str(tmp_path / "no-Rscript"))
    monkeypatch.delenv("CI", raising=False)


def test_without_r_skips_locally(pytester, monkeypatch, tmp_path):
    _no_r_env(monkeypatch, tmp_path)
    pytester.makepyfile(test_user=NO_R_TEST)
    result = pytester.runpytest_subprocess("-q", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*R engine unavailable*"])


@pytest.mark.parametrize("how", ["option", "ci"])
def test_without_r_fails_when_required(pytester, monkeypatch, tmp_path, how):
    _no_r_env(monkeypatch, tmp_path)
    pytester.makepyfile(test_user=NO_R_TEST)
    if how == "ci":
        monkeypatch.setenv("CI", "true")
        result = pytester.runpytest_subprocess("-q")
    else:
        result = pytester.runpytest_subprocess("-q", "--require-r")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*R engine required*"])


def test_hypothesis_profiles_registered():
    from hypothesis import settings

    from mixbridge.testing.strategies import CI_EXAMPLES, register_profiles

    register_profiles()
    ci = settings.get_profile("ci")
    assert ci.derandomize and ci.deadline is None and ci.max_examples == CI_EXAMPLES
    assert settings.get_profile("thorough").max_examples > CI_EXAMPLES


DRIFT_TESTS = """
import numpy as np
import pandas as pd

import mixbridge


def data():
    rng = np.random.default_rng(7)
    g = np.repeat([f"g{j}" for j in range(10)], 8)
    y = 1.0 + rng.normal(0, 1.2, 10)[np.repeat(np.arange(10), 8)] + rng.normal(0, 1, 80)
    return pd.DataFrame({"y": y, "g": pd.Categorical(g)})


def test_plain_assert_on_a_comparison():
    d = data()
    fit = mixbridge.lmer("y ~ 1 + (1 | g)", d)
    ref = mixbridge.lmer("y ~ 1 + (1 | g)", d)
    fit.fixef = fit.fixef + 0.05
    assert mixbridge.compare(fit, ref).ok


def test_assert_ok():
    d = data()
    fit = mixbridge.lmer("y ~ 1 + (1 | g)", d)
    ref = mixbridge.lmer("y ~ 1 + (1 | g)", d)
    ref.sigma = ref.sigma * 1.01
    mixbridge.compare(fit, ref).assert_ok()


def test_passing_comparison_adds_nothing():
    d = data()
    assert mixbridge.compare(mixbridge.lmer("y ~ 1 + (1 | g)", d),
                             mixbridge.lmer("y ~ 1 + (1 | g)", d)).ok
"""


def test_failing_tests_show_the_comparison_table(pytester):
    """A test that fails after compare(...) gets the full table in its report, whether it
    asserted `cmp.ok` itself or called assert_ok(); no R needed (python against python)."""
    pytester.makepyfile(test_drift=DRIFT_TESTS)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", "-rf")
    result.assert_outcomes(failed=2, passed=1)
    out = result.stdout.str()
    assert out.count("mixbridge comparisons (1)") == 2
    result.stdout.fnmatch_lines([
        "*mixbridge comparisons (1)*",
        "compare lmer: a = python, b = python*",
        "fixef * FAIL *(Intercept): a=*",
        "verdict: FAIL*",
    ])  # fmt: skip
    result.stdout.fnmatch_lines(["*sigma * FAIL *"])
    # the short summary names the failing quantity
    result.stdout.fnmatch_lines(["FAILED test_drift.py::test_assert_ok - AssertionError: fits "
                                 "disagree beyond tolerance: *sigma*"])  # fmt: skip
