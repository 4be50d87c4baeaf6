"""bayesglm (engine="python"): bad input gives a clear mixbridge error naming what is wrong;
R-like warnings arrive both as Python warnings and as Message objects in `fit.messages`."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import mixbridge
from mixbridge.errors import ArgumentError, DataError, MixbridgeWarning
from mixbridge.python_impl.bayesglm import fit_from_matrix


@pytest.fixture
def data() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 30
    return pd.DataFrame(
        {
            "x": rng.normal(size=n),
            "z": rng.normal(size=n),
            "y": rng.normal(size=n),
            "yb": rng.integers(0, 2, n).astype(float),
            "cnt": rng.poisson(3, n).astype(float),
            "w": np.ones(n),
        }
    )


def test_prior_vector_of_wrong_length(data: pd.DataFrame) -> None:
    with pytest.raises(ArgumentError) as err:
        mixbridge.bayesglm("y ~ x + z", data, prior_mean=[1.0, 2.0, 3.0])
    assert str(err.value) == (
        "invalid length for prior_mean: got 3, expected 2 (number of non-intercept coefficients)"
    )
    assert err.value.argument == "prior_mean"
    with pytest.raises(ArgumentError, match=r"prior_df: got 3, expected 2 \(number of coeff"):
        mixbridge.bayesglm("y ~ 0 + x + z", data, prior_df=[1.0, 2.0, np.inf])


def test_negative_weights(data: pd.DataFrame) -> None:
    w = data["w"].to_numpy().copy()
    w[4] = -0.5
    with pytest.raises(DataError) as err:
        mixbridge.bayesglm("y ~ x", data, weights=w)
    assert err.value.column == "weights"
    # the engine checks on its own too (when called on a model matrix)
    X = np.column_stack([np.ones(len(data)), data["x"]])
    with pytest.raises(DataError, match=r"negative weights not allowed.*row 4, value -0.5"):
        fit_from_matrix(X, data["y"], ["(Intercept)", "x"], has_intercept=True, weights=w)


def test_binomial_response_outside_unit_interval(data: pd.DataFrame) -> None:
    bad = data.assign(yb=data["yb"].where(data.index != 2, 1.5))
    with pytest.raises(DataError) as err:
        mixbridge.bayesglm("yb ~ x", bad, family="binomial")
    assert err.value.column == "yb"
    X = np.column_stack([np.ones(len(data)), data["x"]])
    with pytest.raises(DataError, match=r"y values must be 0 <= y <= 1"):
        fit_from_matrix(X, bad["yb"], ["(Intercept)", "x"], family="binomial", has_intercept=True)


def test_unsupported_family_link_pair(data: pd.DataFrame) -> None:
    # The public call rejects the pair in the input checks, naming the argument ...
    with pytest.raises(ArgumentError, match="link 'logit' is not available for family") as info:
        mixbridge.bayesglm("cnt ~ x", data, family="poisson", link="logit")
    assert info.value.argument == "link"
    # ... and the engine, called directly, rejects it too.
    from mixbridge.python_impl.bayesglm import bayesglm as engine_bayesglm

    with pytest.raises(DataError, match="link 'logit' not available for the poisson family"):
        engine_bayesglm("cnt ~ x", data, family="poisson", link="logit")


@pytest.mark.parametrize(
    ("family", "column", "value", "text"),
    [
        ("binomial", "yb", 0.5, "non-integer #successes in a binomial glm!"),
        ("poisson", "cnt", 1.5, "non-integer x = 1.500000"),
    ],
)
def test_non_integer_counts_warn_like_r(
    data: pd.DataFrame, family: str, column: str, value: float, text: str
) -> None:
    d = data.copy()
    d.loc[3, column] = value
    with pytest.warns(MixbridgeWarning, match=text):
        fit = mixbridge.bayesglm(f"{column} ~ x", d, family=family)
    assert any(m.text == text and m.kind == "warning" for m in fit.messages)
    if family == "poisson":
        assert fit.aic == np.inf  # R: dpois() of a non-integer count is 0


def test_constant_gaussian_response_with_scaled_prior(data: pd.DataFrame) -> None:
    with pytest.raises(DataError, match="response 'w' is constant") as err:
        mixbridge.bayesglm("w ~ x", data)
    assert err.value.column == "w"
    fit = mixbridge.bayesglm("w ~ x", data.assign(w=data["w"] + 1e-3 * data["z"]), scaled=False)
    assert np.isfinite(fit.coef).all()


def test_non_convergence_is_reported(data: pd.DataFrame) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = mixbridge.bayesglm("yb ~ x", data, family="binomial", maxit=2)
    assert not fit.converged
    assert fit.iterations == 2
    assert any("algorithm did not converge" in str(w.message) for w in caught)
    assert any(m.code == "convergence" for m in fit.messages)


def test_min_prior_scale_floor_warns(data: pd.DataFrame) -> None:
    d = data.assign(big=data["x"] * 1e15)
    with pytest.warns(MixbridgeWarning, match="prior scale for varible 2 set to min.prior.scale"):
        fit = mixbridge.bayesglm("yb ~ big", d, family="binomial", min_prior_scale=1e-12)
    assert fit.prior_scale[1] == 1e-12


def test_flat_prior_matches_arm(needs_r: None) -> None:
    """prior_scale = Inf is a flat prior in arm (its pseudo-observations get weight 0)."""
    import math

    import mixbridge

    rng = np.random.default_rng(7)
    data = pd.DataFrame({"x": rng.normal(size=60), "z": rng.normal(size=60)})
    data["y"] = 1.0 + 0.5 * data["x"] + rng.normal(size=60)
    args = dict(prior_scale=[math.inf, 1.0], prior_df=math.inf)
    py = mixbridge.bayesglm("y ~ x + z", data, **args)
    r = mixbridge.bayesglm("y ~ x + z", data, engine="r", **args)
    # arm's own numbers, live; same algorithm, so only rounding differs (issue #4: 1e-8).
    np.testing.assert_allclose(py.coef.to_numpy(), r.coef.to_numpy(), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(py.se.to_numpy(), r.se.to_numpy(), rtol=1e-8, atol=1e-10)
    assert py.iterations == r.iterations
