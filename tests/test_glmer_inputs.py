"""glmer (engine="python"): bad input, boundary cases, predict/simulate and the PIRLS internals.

These need no R: they check errors, diagnostics and identities that hold by construction.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import mixbridge
from mixbridge.errors import ArgumentError, DataError
from mixbridge.python_impl.agq import gh_rule


def make_data(seed: int = 0, groups: int = 15, per: int = 12) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(groups), per)
    x = rng.standard_normal(g.size)
    eta = -0.3 + 0.7 * x + rng.normal(0, 0.8, groups)[g]
    return pd.DataFrame(
        {
            "g": pd.Categorical([f"g{i:02d}" for i in g]),
            "h": pd.Categorical([f"h{i % 4}" for i in range(g.size)]),
            "x": x,
            "y": (rng.random(g.size) < 1 / (1 + np.exp(-eta))).astype(float),
            "c": rng.poisson(np.exp(eta)).astype(float),
        }
    )


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    return make_data()


@pytest.fixture(scope="module")
def fit(data):
    return mixbridge.glmer("y ~ x + (1 | g)", data, family="binomial")


def test_gh_rule_is_normalized():
    z, w = gh_rule(7)
    assert w.sum() == pytest.approx(1.0, abs=1e-14)
    assert np.sum(w * z**2) == pytest.approx(1.0, abs=1e-12)  # N(0, 1) second moment
    assert np.sum(w * z**4) == pytest.approx(3.0, abs=1e-10)


def test_binomial_response_out_of_range(data):
    bad = data.assign(y=data["y"] * 2)
    with pytest.raises(DataError) as err:
        mixbridge.glmer("y ~ x + (1 | g)", bad, family="binomial")
    assert "y" in str(err.value)


def test_negative_poisson_counts(data):
    bad = data.assign(c=data["c"] - 5)
    with pytest.raises(DataError) as err:
        mixbridge.glmer("c ~ x + (1 | g)", bad, family="poisson")
    assert "c" in str(err.value)


def test_nagq_needs_single_scalar_term(data):
    with pytest.raises(ArgumentError, match="single, scalar random-effects term"):
        mixbridge.glmer("y ~ x + (1 | g) + (1 | h)", data, family="binomial", nagq=5)
    with pytest.raises(ArgumentError, match="single, scalar random-effects term"):
        mixbridge.glmer("y ~ x + (x | g)", data, family="binomial", nagq=5)


def test_unsupported_family_link_and_control(data):
    with pytest.raises((ArgumentError, DataError)):
        mixbridge.glmer("y ~ x + (1 | g)", data, family="binomial", link="log")
    with pytest.raises(ArgumentError, match="tol_pwrs"):
        mixbridge.glmer("y ~ x + (1 | g)", data, family="binomial", control={"tol_pwrs": 1})


def test_non_integer_counts_warn(data):
    d = data.assign(c=data["c"] + 0.5)
    fit = mixbridge.glmer("c ~ x + (1 | g)", d, family="poisson")
    assert any(m.kind == "warning" and "non-integer" in m.text for m in fit.messages)


def test_all_zero_groups_and_boundary(data):
    """Groups with all-0 responses still fit; a tiny variance ends on the boundary, flagged."""
    d = data.copy()
    d.loc[d["g"].isin(["g00", "g01"]), "y"] = 0.0
    fit = mixbridge.glmer("y ~ x + (1 | g)", d, family="binomial")
    assert np.all(np.isfinite(fit.fixef)) and fit.theta[0] > 0
    # no group effect at all: θ goes to the boundary and the fit says so
    rng = np.random.default_rng(5)
    flat = pd.DataFrame(
        {
            "g": pd.Categorical(np.repeat([f"g{i}" for i in range(10)], 30)),
            "y": (rng.random(300) < 0.4).astype(float),
        }
    )
    fit0 = mixbridge.glmer("y ~ 1 + (1 | g)", flat, family="binomial")
    if fit0.theta[0] < 1e-4:
        assert fit0.singular
        assert any(m.code == "singular" for m in fit0.messages)


def test_complete_separation_warns():
    rng = np.random.default_rng(2)
    g = np.repeat(np.arange(10), 20)
    x = rng.standard_normal(g.size)
    d = pd.DataFrame({"g": pd.Categorical(g), "x": x, "y": (x > 0).astype(float)})
    fit = mixbridge.glmer("y ~ x + (1 | g)", d, family="binomial")
    # the slope diverges: lme4 warns through its convergence checks; we must not stay silent
    assert abs(fit.fixef["x"]) > 5
    assert any(m.kind == "warning" for m in fit.messages) or not fit.converged
    # fitted probabilities pinned at 0/1: the criterion has no minimum, so no optimum was found
    if any(m.code == "separation" for m in fit.messages):
        assert not fit.converged


def test_predict_and_fitted(data, fit):
    np.testing.assert_allclose(fit.predict(type="response"), fit.fitted, rtol=0, atol=0)
    link = fit.predict()
    np.testing.assert_allclose(fit.predict(data), link, rtol=1e-12, atol=1e-12)
    pop = fit.predict(re_form="~0")
    np.testing.assert_allclose(pop, fit.fixef["(Intercept)"] + fit.fixef["x"] * data["x"])
    # a level not in the fit: an error naming the factor, or population level when allowed
    new = data.head(3).copy()
    new["g"] = pd.Categorical(["zz"] * 3)
    with pytest.raises(DataError, match="'g'"):
        fit.predict(new)
    np.testing.assert_allclose(fit.predict(new, allow_new_levels=True), pop[:3], atol=1e-12)
    resp = fit.predict(data, type="response")
    np.testing.assert_allclose(resp, fit.fitted, atol=1e-12)


def test_ranef_and_conditional_modes_are_consistent(data, fit):
    b = fit.ranef["g"]["(Intercept)"]
    eta = fit.fixef["(Intercept)"] + fit.fixef["x"] * data["x"].to_numpy()
    eta = eta + b.loc[data["g"].astype(str)].to_numpy()
    np.testing.assert_allclose(1 / (1 + np.exp(-eta)), fit.fitted, atol=1e-12)
    dev_r = fit.residuals**2
    assert abs(dev_r.sum() - fit.deviance) < 1e-8
    assert fit.cond_var["g"].shape == (15, 1, 1)
    assert np.all(fit.cond_var["g"] > 0)


def test_objective_is_deterministic(fit):
    th, be = fit.theta, fit.fixef.to_numpy()
    v1 = fit.objective(th, be)
    fit.objective(th + 0.3, be - 0.2)  # a different point in between must not change the next
    assert fit.objective(th, be) == v1
    assert v1 == pytest.approx(-2 * fit.loglik, abs=1e-9)


def test_simulate(fit, data):
    s1 = fit.simulate(3, seed=11)
    s2 = fit.simulate(3, seed=11)
    assert s1.shape == (len(data), 3)
    np.testing.assert_array_equal(s1, s2)
    assert set(np.unique(s1)) <= {0.0, 1.0}


def test_agq_deviance_converges_in_nagq(data):
    """AGQ with many nodes is the exact integral: successive orders agree, and Laplace is close."""
    fits = {
        k: mixbridge.glmer("y ~ x + (1 | g)", data, family="binomial", nagq=k) for k in (1, 9, 15)
    }
    assert abs(fits[9].loglik - fits[15].loglik) < 1e-4
    assert abs(fits[1].loglik - fits[15].loglik) < 0.5
    assert fits[9].loglik_constant == pytest.approx(0.0, abs=1e-12)  # 0/1 data
