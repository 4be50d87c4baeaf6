"""The optional peer engines `glmm` and `mixedlm` (mixbridge[peers]) against lme4, live.

Each case fits the same model through a peer adapter and through lme4 (`engine="r"`) and compares
them with `mixbridge.compare` under the one tolerance policy (third_party_lmer for lmer, glmer for
glmer: tolerance.py explains every number). Where a peer differs for a known reason (a different
column dropped on a rank-deficient X) the test asserts that the comparison reports it with the
right status and reason (explained by a registry entry whose check recomputes the difference).
A missing peer skips locally and FAILS under CI=true, like a missing R.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os

import numpy as np
import pandas as pd
import pytest

import mixbridge
from mixbridge.conformance.adapters._peer import r_name

PEERS = ("glmm", "mixedlm")


def require_peer(name: str) -> str:
    """Skip (locally) or fail (CI=true, as `needs_r` does) when the peer package is missing."""
    try:
        importlib.import_module(name)
    except ImportError as exc:
        msg = f"peer package {name!r} not installed (pip install 'mixbridge[peers]'): {exc}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    return name


@pytest.fixture(params=PEERS)
def peer(request: pytest.FixtureRequest) -> str:
    """The peer's engine name (each test runs once per peer)."""
    return require_peer(request.param)


@pytest.fixture(scope="module")
def sleepstudy(r_dataset) -> pd.DataFrame:
    return r_dataset("sleepstudy")


def _simulated(q: int, seed: int) -> pd.DataFrame:
    """Unbalanced groups (sizes 1-40), a 4-level factor `period` (levels "1".."4", as cbpp's),
    and q correlated random-effect columns (intercept, x1, x2)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 41, size=30)
    g = np.repeat(np.arange(30), sizes)
    n = g.size
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    chol = np.array([[1.0, 0.0, 0.0], [0.5, 0.8, 0.0], [-0.3, 0.4, 0.6]])[:q, :q]
    b = rng.normal(size=(30, q)) @ chol.T
    z = np.column_stack([np.ones(n), x1, x2])[:, :q]
    period = rng.choice(["1", "2", "3", "4"], size=n)
    y = 2.0 + x1 - 0.5 * x2 + 0.4 * (period == "3") + (z * b[g]).sum(axis=1)
    y = y + rng.normal(scale=0.7, size=n)
    return pd.DataFrame({
        "y": y, "x1": x1, "x2": x2,
        "period": pd.Categorical(period, categories=["1", "2", "3", "4"]),
        "g": pd.Categorical([f"s{i:02d}" for i in g]),
    })  # fmt: skip


def _check_matches_lme4(fit: mixbridge.MixedFit, ref: mixbridge.MixedFit) -> None:
    cmp = mixbridge.compare(fit, ref)
    cmp.assert_ok()
    # names mapped to R's: fixef (period2, not period.1), θ and ranef labels, level order
    assert list(fit.fixef.index) == list(ref.fixef.index)
    assert list(fit.theta_names) == list(ref.theta_names)
    for factor, frame in ref.ranef.items():
        assert list(fit.ranef[factor].index) == list(frame.index)
        assert list(fit.ranef[factor].columns) == list(frame.columns)
    # lme4's objective at the peer's θ is the peer's own criterion (same likelihood, same data)
    assert cmp.row("objective").status == "ok"


@pytest.mark.parametrize("reml", [True, False], ids=["REML", "ML"])
def test_sleepstudy_random_slope(peer, sleepstudy, reml):
    f = "Reaction ~ Days + (Days | Subject)"
    fit = mixbridge.lmer(f, sleepstudy, engine=peer, reml=reml)
    ref = mixbridge.lmer(f, sleepstudy, engine="r", reml=reml)
    assert fit.engine == peer and fit.reml == reml
    _check_matches_lme4(fit, ref)


@pytest.mark.parametrize("q", [1, 3], ids=["intercept", "three_columns"])
def test_simulated_unbalanced(peer, needs_r, q):
    data = _simulated(q, seed=20 + q)
    re = {1: "1", 3: "1 + x1 + x2"}[q]
    f = f"y ~ x1 + x2 + period + ({re} | g)"
    fit = mixbridge.lmer(f, data, engine=peer)
    ref = mixbridge.lmer(f, data, engine="r")
    _check_matches_lme4(fit, ref)
    assert [n for n in fit.fixef.index if n.startswith("period")] == ["period2", "period3",
                                                                      "period4"]  # fmt: skip
    if peer == "mixedlm":
        # the peer's own deviance function, called with lme4-ordered θ (reordered for the peer
        # from 3 columns on), must reproduce its criterion at its optimum and lme4's at lme4's θ
        assert fit.objective(fit.theta) == pytest.approx(fit.criterion, rel=1e-12)
        assert fit.objective(ref.theta) == pytest.approx(ref.criterion, rel=1e-9)


def test_integer_groups_string_factor_and_na_rows(peer, needs_r):
    """lme4's rows and names: NA only in an unused column drops nothing, an NA response drops its
    row; an integer grouping column's levels in numeric order; a string factor's levels sorted."""
    rng = np.random.default_rng(5)
    g = rng.integers(1, 15, size=200)
    x = rng.normal(size=200)
    data = pd.DataFrame({
        "y": 1 + x + rng.normal(size=14)[g - 1] + rng.normal(size=200), "x": x, "g": g,
        "f": rng.choice(["lo", "hi", "mid"], size=200), "unused": np.nan,
    })  # fmt: skip
    data.loc[3, "y"] = np.nan
    f = "y ~ x + f + (1 | g)"
    fit = mixbridge.lmer(f, data, engine=peer)
    ref = mixbridge.lmer(f, data, engine="r")
    assert fit.nobs == ref.nobs == 199
    _check_matches_lme4(fit, ref)
    assert list(fit.fixef.index) == ["(Intercept)", "x", "flo", "fmid"]


def test_glmm_glmer_cbpp(r_dataset):
    require_peer("glmm")
    cbpp = r_dataset("cbpp")
    f = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
    fit = mixbridge.glmer(f, cbpp, family="binomial", engine="glmm")
    ref = mixbridge.glmer(f, cbpp, family="binomial", engine="r")
    cmp = mixbridge.compare(fit, ref)
    assert cmp.policy == "glmer"
    cmp.assert_ok()
    assert list(fit.fixef.index) == ["(Intercept)", "period2", "period3", "period4"]
    # the Laplace criterion itself agrees (the objective row: lme4's deviance at glmm's (θ, β))
    assert cmp.row("objective").status == "ok" and cmp.row("loglik").status == "ok"


def test_mixedlm_glmer_is_refused(sleepstudy):
    require_peer("mixedlm")
    with pytest.raises(mixbridge.ArgumentError, match="does not map glmer"):
        mixbridge.glmer("Reaction ~ Days + (1 | Subject)", sleepstudy, engine="mixedlm",
                        family="poisson")  # fmt: skip


def test_rank_deficient_x(peer, sleepstudy):
    """D2 = 2·Days: lme4 drops D2 (the later aliased column); glmm flags D2 as aliased (mapped to
    a dropped column, so it matches); mixedlm drops Days and keeps D2: not mapped, the comparison
    explains it through the registry entry rank_deficient_other_column_dropped, whose check
    recomputes the difference from the fits."""
    data = sleepstudy.assign(D2=2.0 * sleepstudy["Days"])
    f = "Reaction ~ Days + D2 + (1 | Subject)"
    ref = mixbridge.lmer(f, data, engine="r")
    assert ref.dropped_columns == ["D2"]
    fit = mixbridge.lmer(f, data, engine=peer)
    cmp = mixbridge.compare(fit, ref)
    if peer == "glmm":
        assert fit.dropped_columns == ["D2"]
        cmp.assert_ok()
        assert all(r.status == "ok" for r in cmp.rows), str(cmp)
        return
    assert list(fit.fixef.index) == ["(Intercept)", "D2"]
    assert any("rank deficient" in m.text for m in fit.messages)
    cmp.assert_ok()
    explained = {r.quantity for r in cmp.rows if r.status == "explained"}
    assert explained == {"fixef", "fixef_se", "objective", "criterion", "loglik", "aic", "bic"}
    for q in explained:
        assert "rank_deficient_other_column_dropped" in cmp.row(q).reason
    assert "a kept ['D2'], b kept ['Days']" in cmp.row("fixef").reason
    # same column space: θ, σ and the conditional modes do not depend on the parametrization
    for q in ("theta", "sigma", "varcorr", "ranef", "cond_var"):
        assert cmp.row(q).status == "ok", cmp.row(q)
    # the same fit in the other parametrization: D2's coefficient is half Days'
    assert fit.fixef["D2"] == pytest.approx(ref.fixef["Days"] / 2, rel=1e-9)
    # REML's log det(X'V⁻¹X) grows by 2 log 2 when Days is replaced by 2·Days: the criterion
    # differs by exactly log 4 (1e-6: both optimizers' stopping noise, measured 2e-9)
    assert fit.criterion - ref.criterion == pytest.approx(math.log(4.0), abs=1e-6)
    # ML has no such term: the deviances agree and only the coefficients are explained
    ml = mixbridge.compare(mixbridge.lmer(f, data, engine=peer, reml=False),
                           mixbridge.lmer(f, data, engine="r", reml=False))  # fmt: skip
    ml.assert_ok()
    assert ml.row("criterion").status == "ok" and ml.row("fixef").status == "explained"
    # the entry never passes a difference its check does not reproduce
    shifted = dataclasses.replace(fit, fitted=fit.fitted + 0.01 * np.std(fit.fitted))
    bad = mixbridge.compare(shifted, ref).row("fixef")
    assert bad.status == "FAIL" and "does not hold" in bad.reason
    worse = dataclasses.replace(fit, reml_criterion=fit.reml_criterion + 0.01)
    bad = mixbridge.compare(worse, ref).row("criterion")
    assert bad.status == "FAIL" and "does not hold" in bad.reason


def test_unsupported_models_are_refused(peer, sleepstudy):
    with pytest.raises(mixbridge.ArgumentError, match="exactly one random-effects term"):
        mixbridge.lmer("Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)", sleepstudy,
                       engine=peer)  # fmt: skip
    with pytest.raises(mixbridge.ArgumentError, match="no weights or offset"):
        mixbridge.lmer("Reaction ~ Days + (1 | Subject)", sleepstudy, engine=peer,
                       weights=np.ones(len(sleepstudy)))  # fmt: skip


def test_r_name_mapping():
    levels = {"period": ["1", "2", "3", "4"], "f": ["a", "b"]}
    assert r_name("Intercept") == "(Intercept)"
    assert r_name("period.1", levels) == "period2"
    assert r_name("period.3", levels) == "period4"
    assert r_name("period.1:x", levels) == "period2:x"
    assert r_name("f[T.b]") == "fb"
    assert r_name("x.1", levels) == "x.1"  # not a factor: left alone
    assert r_name("period.4", levels) == "period.4"  # no such level: left alone
