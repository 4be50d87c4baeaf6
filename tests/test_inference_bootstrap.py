"""fit.confint(method="boot") against lme4's bootMer + boot.ci (percentile), run live.

R's random numbers cannot be reproduced, so the bounds are compared within their Monte Carlo
error: |ours − lme4's| ≤ BOOT_MC_K·sqrt(SE_a² + SE_b²), each SE the sample quantile's standard
error from that run's own replicates (mixbridge.inference.bootstrap.quantile_mc_se).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from r_helpers import r_call

import mixbridge
from mixbridge.conformance.tolerance import BOOT_MC_K
from mixbridge.inference.bootstrap import percentile_interval, quantile_mc_se

SLEEP_RI = "Reaction ~ Days + (1 | Subject)"
CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"

R_BOOT = """function(d, f, nsim, glmm) {
  suppressMessages(library(lme4))
  m <- if (glmm) glmer(as.formula(f), data = d, family = binomial) else lmer(as.formula(f), d)
  # confint(m, method = "boot") is bootMer with this FUN, then confint.bootMer (percentile);
  # done in two steps to keep the replicates, for their Monte Carlo error
  fun <- function(x) {
    th <- getME(x, "theta")
    sv <- if (isLMM(x)) lme4:::Cv_to_Sv(th, lengths(x@cnms), s = sigma(x))  # sds, then σ
          else lme4:::Cv_to_Sv(th, lengths(x@cnms))
    c(sv, fixef(x))
  }
  set.seed(20261204)
  bb <- suppressMessages(suppressWarnings(bootMer(m, fun, nsim = nsim)))
  ci <- confint(bb, type = "perc", level = 0.95)
  rownames(ci) <- c(sprintf(".sig%02d", seq_along(getME(m, "theta"))),
                    if (isLMM(m)) ".sigma", names(fixef(m)))
  list(names = rownames(ci), lower = as.numeric(ci[, 1]), upper = as.numeric(ci[, 2]),
       t = as.numeric(bb$t), ncol = ncol(bb$t))
}"""


def _compare_with_bootmer(fit, data, formula, nsim, glmm):
    ours = fit.confint("boot", nsim=nsim, seed=7, progress=False)
    reps = ours.attrs["replicates"]
    got = r_call(R_BOOT, d=data, f=formula, nsim=nsim, glmm=glmm)
    assert list(ours.index) == got["names"]
    t_r = np.asarray(got["t"]).reshape(int(got["ncol"][0]), -1).T  # R's column-major matrix
    worst = 0.0
    for j, name in enumerate(got["names"]):
        for col, alpha, ref in (
            ("lower", 0.025, got["lower"][j]),
            ("upper", 0.975, got["upper"][j]),
        ):
            se = math.hypot(quantile_mc_se(reps[name].to_numpy(), alpha),
                            quantile_mc_se(t_r[:, j], alpha))  # fmt: skip
            diff = abs(float(ours.loc[name, col]) - float(ref))
            assert diff <= BOOT_MC_K * se, (name, col, ours.loc[name, col], ref, diff / se)
            worst = max(worst, diff / se)
    return worst


def test_boot_lmer_within_monte_carlo_error_of_bootmer(r_dataset):
    data = r_dataset("sleepstudy")
    fit = mixbridge.lmer(SLEEP_RI, data)
    _compare_with_bootmer(fit, data, SLEEP_RI, 200, False)


@pytest.mark.long
def test_boot_glmer_within_monte_carlo_error_of_bootmer(r_dataset):
    data = r_dataset("cbpp")
    fit = mixbridge.glmer(CBPP, data, family="binomial")
    _compare_with_bootmer(fit, data, CBPP, 100, True)


def test_percentile_interval_is_boots_norm_inter(needs_r):
    rng = np.random.default_rng(3)
    for r in (19, 99, 250, 1000):
        t = rng.gamma(2.0, size=r)
        for level in (0.95, 0.8):
            got = r_call(
                "function(t, a) { suppressMessages(library(boot))\n"
                "  as.numeric(boot:::norm.inter(t, a)[, 2]) }",
                t=t, a=np.array([(1 - level) / 2, (1 + level) / 2]),
            )  # fmt: skip
            np.testing.assert_allclose(percentile_interval(t, level), got, rtol=1e-13)


def test_boot_is_reproducible_and_reports_progress(r_dataset):
    fit = mixbridge.lmer(SLEEP_RI, r_dataset("sleepstudy"))
    seen = []
    a = fit.confint("boot", nsim=40, seed=11, progress=lambda d, n: seen.append((d, n)))
    b = fit.confint("boot", nsim=40, seed=11, progress=False)
    c = fit.confint("boot", nsim=40, seed=12, progress=False)
    assert a.equals(b)
    assert not a.equals(c)
    assert seen[-1] == (40, 40)
    assert (a["lower"] < a["upper"]).all()
