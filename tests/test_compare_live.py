"""compare() on live fits: Python vs lme4/arm, statsmodels vs lme4, embedded vs subprocess R,
and a known divergence (glmer nAGQ > 1 saturated constant) explained by its check."""

from __future__ import annotations

import pytest

import mixbridge


@pytest.fixture(scope="module")
def sleepstudy(r_dataset):
    return r_dataset("sleepstudy")


def test_python_lmer_vs_lme4_sleepstudy(sleepstudy):
    f = "Reaction ~ Days + (Days | Subject)"
    py = mixbridge.lmer(f, sleepstudy)
    r = mixbridge.lmer(f, sleepstudy, engine="r")
    cmp = mixbridge.compare(py, r)
    cmp.assert_ok()
    assert cmp.row("objective").status == "ok"  # each engine's criterion at the other's θ
    assert cmp.row("theta").max_rel < 1e-4


def test_statsmodels_engine_vs_lme4(sleepstudy):
    f = "Reaction ~ Days + (Days | Subject)"
    sm = mixbridge.lmer(f, sleepstudy, engine="statsmodels", reml=False)
    r = mixbridge.lmer(f, sleepstudy, engine="r", reml=False)
    cmp = mixbridge.compare(sm, r)
    assert cmp.policy == "third_party_lmer"
    cmp.assert_ok()
    # statsmodels' profiled likelihood equals lme4's deviance function at the same θ
    assert cmp.row("objective").max_rel < 1e-9
    with pytest.raises(mixbridge.ArgumentError, match="exactly one random-effects term"):
        mixbridge.lmer("Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)", sleepstudy,
                       engine="statsmodels")  # fmt: skip


@pytest.mark.slow  # each subprocess call (fit, objective) starts a fresh Rscript: ~30 s in all
def test_r_embedded_vs_subprocess(sleepstudy):
    f = "Reaction ~ Days + (1 | Subject)"
    emb = mixbridge.lmer(f, sleepstudy, engine="r", transport="embedded")
    sub = mixbridge.lmer(f, sleepstudy, engine="r", transport="subprocess")
    cmp = mixbridge.compare(sub, emb)
    cmp.assert_ok()
    assert cmp.row("fixef").max_abs == 0.0  # same R, same numbers, transported losslessly


def test_agq_saturated_constant_is_explained(r_dataset):
    cbpp = r_dataset("cbpp")
    f = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
    py = mixbridge.glmer(f, cbpp, family="binomial", nagq=25)
    r = mixbridge.glmer(f, cbpp, family="binomial", nagq=25, engine="r")
    cmp = mixbridge.compare(py, r)
    cmp.assert_ok()
    assert py.loglik_constant < -40  # the saturated constant (cbpp: -41.98)
    row = cmp.row("loglik")
    assert row.status == "explained" and "glmer_agq_saturated_constant" in row.reason
    assert cmp.row("fixef").status == "ok"
