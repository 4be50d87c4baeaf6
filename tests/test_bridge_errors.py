"""R's errors, warnings and messages as Python data; injection attempts; data conversion."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import mixbridge
from mixbridge import bridge
from mixbridge.errors import (
    ArgumentError,
    DataError,
    FormulaError,
    RModelError,
    RNotAvailableError,
    RWarning,
)


@pytest.fixture(scope="module")
def sleepstudy(r_dataset):
    return r_dataset("sleepstudy")


@pytest.fixture
def small() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    g = np.repeat(list("abcdef"), 5)
    return pd.DataFrame({"y": rng.normal(size=30), "x": rng.normal(size=30), "g": g})


INJECTIONS = [
    "y ~ system('ls') + (1|g)",
    'y ~ x + system("touch /tmp/mixbridge_pwned") + (1|g)',
    "y ~ `x` + (1|g)",
    "y ~ x; system('ls') + (1|g)",
    "y ~ x + (1|g) <- 3",
    "y ~ base::log(x) + (1|g)",
    "y ~ x + (1|g) + 'b'",
    "y ~ x + (1 | g)\nsystem('ls')",
]


@pytest.mark.parametrize("formula", INJECTIONS)
def test_injection_rejected_before_r(needs_r, small, formula):
    with pytest.raises(FormulaError):
        mixbridge.lmer(formula, small, engine="r")
    # The engine validates again when called directly (compare/conformance do that).
    with pytest.raises(FormulaError):
        bridge.lmer(formula, small, reml=True, weights=None, offset=None, control={})


def test_r_error_becomes_rmodelerror(needs_r):
    df = pd.DataFrame(
        {"y": [1, 0, 1, 0, 1, 1, 0, 0], "x": [1, 2, 3, 1, 2, 5, 1, 1.0], "g": list("aabbccdd")}
    )
    # the public call refuses this before R (the same check on every engine) ...
    with pytest.raises(ArgumentError, match="single, scalar random-effects term") as info:
        mixbridge.glmer("y ~ x + (x | g)", df, family="binomial", nagq=5, engine="r")
    assert info.value.argument == "nagq"
    # ... so R's own error is provoked through the engine itself
    with pytest.raises(RModelError) as info:
        bridge.glmer(
            "y ~ x + (x | g)", df, family="binomial", link=None, nagq=5, weights=None,
            offset=None, control={},
        )  # fmt: skip
    err = info.value
    assert "nAGQ > 1 is only available for models with a single, scalar random-effects term" in (
        err.r_message
    )
    assert "updateGlmerDevfun" in err.r_call
    assert "Traceback" not in str(err)


def test_bayesglm_r_error(needs_r, small):
    with pytest.raises(ArgumentError, match="invalid length for prior_mean: got 2, expected 6"):
        mixbridge.bayesglm("y ~ x + g", small, prior_mean=[0.0, 1.0], engine="r")
    args = dict(
        family="gaussian", link=None, weights=None, offset=None, prior_scale=None, prior_df=1.0,
        prior_mean_for_intercept=0.0, prior_scale_for_intercept=None, prior_df_for_intercept=1.0,
        min_prior_scale=1e-12, scaled=True, drop_baseline=True, maxit=100, epsilon=1e-8,
        dispersion=None,
    )  # fmt: skip
    with pytest.raises(RModelError, match="invalid length for prior.mean"):
        bridge.bayesglm("y ~ x + g", small, prior_mean=[0.0, 1.0], **args)


def test_r_warning_becomes_rwarning_and_message(needs_r, sleepstudy):
    df = sleepstudy.assign(Days=sleepstudy["Days"] * 1e7)
    with pytest.warns(RWarning, match="Some predictor variables are on very different scales"):
        fit = mixbridge.lmer("Reaction ~ Days + (1 | Subject)", df, engine="r")
    warn = [m for m in fit.messages if m.kind == "warning"]
    assert warn and warn[0].origin == "R"
    assert "very different scales" in warn[0].text
    assert warn[0].call == ""  # lme4 raises it with call. = FALSE


def test_r_warning_keeps_its_call(needs_r, small):
    df = small.assign(p=np.linspace(0.1, 0.9, len(small)))
    with pytest.warns(RWarning, match="non-integer #successes in a binomial glm"):
        fit = mixbridge.bayesglm("p ~ x", df, family="binomial", engine="r")
    warn = [m for m in fit.messages if "non-integer" in m.text]
    assert warn[0].kind == "warning" and warn[0].origin == "R"
    assert "family$initialize" in warn[0].call  # R's call, deparsed


def test_singular_fit_message(needs_r, r_dataset):
    dyestuff2 = r_dataset("Dyestuff2")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RWarning)  # a message is not a warning
        fit = mixbridge.lmer("Yield ~ 1 + (1 | Batch)", dyestuff2, engine="r")
    assert fit.singular and fit.theta[0] == 0.0
    singular = [m for m in fit.messages if m.code == "singular"]
    assert singular and singular[0].kind == "message"
    assert singular[0].text == "boundary (singular) fit: see help('isSingular')"
    assert fit.converged  # singular but the optimizer and lme4's checks are fine


def test_rank_deficient_message(needs_r, sleepstudy):
    df = sleepstudy.assign(Days2=2 * sleepstudy["Days"])
    fit = mixbridge.lmer("Reaction ~ Days + Days2 + (1 | Subject)", df, engine="r")
    assert fit.dropped_columns == ["Days2"]
    assert list(fit.fixef.index) == ["(Intercept)", "Days"]
    msg = [m for m in fit.messages if m.code == "rank_deficient"]
    assert msg and "rank deficient so dropping 1 column" in msg[0].text


def test_unknown_control_key(needs_r, small):
    with pytest.raises(ArgumentError) as info:
        mixbridge.lmer("y ~ x + (1|g)", small, engine="r", control={"tolPwrss": 1e-9})
    assert info.value.argument == "tolPwrss"
    with pytest.raises(ArgumentError, match="optimizer"):
        mixbridge.lmer("y ~ x + (1|g)", small, engine="r", control={"optimizer": "nope"})


def test_control_reaches_r(needs_r, small):
    fit = mixbridge.lmer(
        "y ~ x + (1|g)",
        small,
        engine="r",
        control={"optimizer": "bobyqa", "calc_derivs": False, "cond_var": False},
    )
    assert fit.optimizer["name"] == ["bobyqa"]
    assert fit.cond_var == {} and fit.ranef["g"].shape == (6, 1)


def test_missing_rscript_is_rnotavailable(small, monkeypatch):
    monkeypatch.setenv("MIXBRIDGE_RSCRIPT", "/nonexistent/Rscript")
    with pytest.raises(RNotAvailableError) as info:
        bridge.lmer(
            "y ~ x + (1|g)", small, reml=True, weights=None, offset=None, control={},
            transport="subprocess",
        )  # fmt: skip
    assert "apt-get install" in str(info.value) or "cran" in str(info.value)
    assert info.value.missing


def test_weights_length_mismatch(needs_r, small):
    with pytest.raises(DataError) as info:
        bridge.lmer("y ~ x + (1|g)", small, reml=True, weights=np.ones(3), offset=None, control={})
    assert info.value.column == "weights"


@pytest.mark.parametrize("transport", ["embedded", "subprocess"])
def test_conversion_types_levels_and_na(needs_r, transport):
    df = pd.DataFrame(
        {
            "dbl": [1.5, np.nan, -2.0, 1e300],
            "int": np.array([1, 2, 3, -4], dtype=np.int64),
            "nint": pd.array([1, None, 3, 4], dtype="Int64"),
            "lgl": [True, False, True, True],
            "nlgl": pd.array([True, None, False, True], dtype="boolean"),
            "cat": pd.Categorical(["z", "a", None, "z"], categories=["z", "m", "a"]),
            "ord": pd.Categorical(["lo", "hi", "lo", "mid"], ["lo", "mid", "hi"], ordered=True),
            "str": ["b", None, "c", "a"],
            "big": np.array([1, 2, 3, 2**40], dtype=np.int64),
        }
    )
    got = {c["name"][0]: c for c in bridge.describe_data(df, transport=transport)}
    assert got["dbl"]["type"] == ["double"] and got["dbl"]["na"] == [2]
    np.testing.assert_array_equal(got["dbl"]["values"][[0, 2, 3]], [1.5, -2.0, 1e300])
    assert got["int"]["type"] == ["integer"] and got["int"]["values"] == [1, 2, 3, -4]
    assert got["nint"]["type"] == ["integer"] and got["nint"]["values"] == [1, None, 3, 4]
    assert got["lgl"]["type"] == ["logical"] and got["lgl"]["values"] == [True, False, True, True]
    assert got["nlgl"]["values"] == [True, None, False, True] and got["nlgl"]["na"] == [2]
    assert got["cat"]["class"] == ["factor"]
    assert got["cat"]["levels"] == ["z", "m", "a"]  # pandas order kept, unused level kept
    assert got["cat"]["values"] == ["z", "a", None, "z"]
    assert got["ord"]["class"] == ["ordered", "factor"]
    assert got["ord"]["levels"] == ["lo", "mid", "hi"]
    assert got["str"]["class"] == ["factor"] and got["str"]["levels"] == ["a", "b", "c"]
    assert got["str"]["values"] == ["b", None, "c", "a"]
    assert got["big"]["type"] == ["double"]  # beyond int32: sent as double, not truncated
    np.testing.assert_array_equal(got["big"]["values"], [1, 2, 3, 2.0**40])


def test_nonconvergence_is_reported(needs_r, sleepstudy):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = mixbridge.lmer(
            "Reaction ~ Days + (Days | Subject)", sleepstudy, engine="r", control={"maxeval": 5}
        )
    texts = [str(w.message) for w in caught if w.category is RWarning]
    assert any("NLOPT_MAXEVAL_REACHED" in t for t in texts)
    assert texts == [m.text for m in fit.messages if m.kind == "warning"]
    assert not fit.converged
    assert fit.optimizer["code"] == 5 and fit.optimizer["feval"] == 5
    assert fit.optimizer["lme4_messages"]  # lme4's own post-fit checks complained too
    assert all(m.code == "convergence" for m in fit.messages if m.kind == "warning")
