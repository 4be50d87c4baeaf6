"""Both engines return the same inference objects, and they agree under the tolerance policy:
the R engine's fit.confint / mixbridge.anova are lme4's confint.merMod / anova.merMod (run live
through the bridge), compared with the Python engine's by mixbridge.inference.compare."""

from __future__ import annotations

import pytest

import mixbridge
from mixbridge.inference.compare import compare_anova, compare_intervals

SLEEP_RI = "Reaction ~ Days + (1 | Subject)"
SLEEP_SLOPE = "Reaction ~ Days + (Days | Subject)"
GROUSE = "TICKS ~ YEAR + cHEIGHT + (1 | BROOD)"


@pytest.fixture(scope="module")
def sleep(r_dataset):
    return r_dataset("sleepstudy")


@pytest.mark.parametrize("method", ["wald", "profile"])
def test_engines_agree_on_intervals(sleep, method):
    py = mixbridge.lmer(SLEEP_RI, sleep)
    r = mixbridge.lmer(SLEEP_RI, sleep, engine="r")
    a, b = py.confint(method), r.confint(method)
    assert list(a.columns) == list(b.columns) == ["lower", "upper"]
    compare_intervals(a, b, model="lmer", method=method).assert_ok()


@pytest.mark.parametrize("method", ["wald", pytest.param("profile", marks=pytest.mark.long)])
def test_engines_agree_on_glmer_intervals(r_dataset, method):
    data = r_dataset("grouseticks")
    py = mixbridge.glmer(GROUSE, data, family="poisson")
    r = mixbridge.glmer(GROUSE, data, family="poisson", engine="r")
    compare_intervals(
        py.confint(method), r.confint(method), model="glmer", method=method
    ).assert_ok()


def test_engines_agree_on_bootstrap_within_monte_carlo_error(sleep):
    py = mixbridge.lmer(SLEEP_RI, sleep)
    r = mixbridge.lmer(SLEEP_RI, sleep, engine="r")
    a = py.confint("boot", nsim=200, seed=5, progress=False)
    b = r.confint("boot", nsim=200, seed=5)
    cmp = compare_intervals(a, b, model="lmer", method="boot")
    cmp.assert_ok()
    assert cmp.row("confint_lower").n == 4
    # a seed makes R's run reproducible too
    assert r.confint("boot", nsim=20, seed=9).equals(r.confint("boot", nsim=20, seed=9))


@pytest.mark.parametrize("refit", [True, False])
def test_engines_agree_on_anova(sleep, refit):
    forms = [SLEEP_SLOPE, SLEEP_RI]
    py = mixbridge.anova(*[mixbridge.lmer(f, sleep) for f in forms], refit=refit)
    r = mixbridge.anova(*[mixbridge.lmer(f, sleep, engine="r") for f in forms], refit=refit)
    assert list(py.columns) == list(r.columns)
    assert list(r.index) == ["MODEL2", "MODEL1"]  # lme4's own order and generic names
    compare_anova(py, r, model="lmer").assert_ok()
    assert py.attrs["refitted"] == r.attrs["refitted"]


def test_r_engine_glmer_anova(r_dataset):
    data = r_dataset("grouseticks")
    f0 = "TICKS ~ YEAR + (1 | BROOD)"
    py = mixbridge.anova(*[mixbridge.glmer(f, data, family="poisson") for f in (f0, GROUSE)])
    r = mixbridge.anova(
        *[mixbridge.glmer(f, data, family="poisson", engine="r") for f in (f0, GROUSE)]
    )
    compare_anova(py, r, model="glmer").assert_ok()


def test_subprocess_transport_intervals(sleep):
    r = mixbridge.lmer(SLEEP_RI, sleep, engine="r", transport="subprocess")
    py = mixbridge.lmer(SLEEP_RI, sleep)
    compare_intervals(
        py.confint("wald"), r.confint("wald"), model="lmer", method="wald"
    ).assert_ok()
