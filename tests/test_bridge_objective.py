"""lme4's deviance functions through the bridge, and bayesglm's fixed-dispersion extension.

References come from an independent Rscript run (sprintf("%.17g")): same R, same data, same
code path in lme4/arm, so the values must agree exactly unless stated otherwise.
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

import mixbridge

THETA = [1.0, 0.1, 0.5]
GL_THETA = [0.5]
GL_BETA = [-1.4, -1.0, -1.1, -1.6]

REFERENCE_R = r"""
suppressPackageStartupMessages({library(lme4); library(arm)})
p <- function(key, x) cat(key, paste(sprintf("%.17g", as.vector(x)), collapse = " "), "\n")
f <- lmer(Reaction ~ Days + (Days | Subject), sleepstudy, devFunOnly = TRUE)
p("lmer_reml", f(c(1, 0.1, 0.5)))
f <- lmer(Reaction ~ Days + (Days | Subject), sleepstudy, REML = FALSE, devFunOnly = TRUE)
p("lmer_ml", f(c(1, 0.1, 0.5)))
g <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, binomial,
           devFunOnly = TRUE, control = glmerControl(tolPwrss = 1e-12))
p("glmer_laplace", g(c(0.5, -1.4, -1.0, -1.1, -1.6)))
g <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, binomial,
           nAGQ = 9, devFunOnly = TRUE)
p("glmer_agq9", g(c(0.5, -1.4, -1.0, -1.1, -1.6)))
# bayesglm_spec.md section 12 point 1: relabelled family keeps phi at 1, weights 1/phi.
fm <- lmer(Yield ~ 1 + (1 | Batch), Dyestuff)
mu <- fixef(fm)[[1]]; tau <- as.data.frame(VarCorr(fm))$sdcor[1]; phi <- sigma(fm)^2
fam <- gaussian(); fam$family <- "poisson"
b <- bayesglm(Yield ~ 0 + Batch, data = Dyestuff, family = fam, weights = rep(1 / phi, 30),
              prior.mean = mu, prior.scale = tau, prior.df = Inf, scaled = FALSE)
p("hack_coef", coef(b)); p("hack_se", summary(b)$coefficients[, 2])
p("blup", mu + ranef(fm)$Batch[[1]]); p("condvar_sd", sqrt(attr(ranef(fm)$Batch, "postVar")))
p("mu_tau_phi", c(mu, tau, phi))
"""


@pytest.fixture(scope="module")
def ref(needs_r) -> dict[str, np.ndarray]:
    out = subprocess.run(
        ["Rscript", "--vanilla", "-e", REFERENCE_R],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return {
        line.split()[0]: np.array([float(v) for v in line.split()[1:]])
        for line in out.stdout.splitlines()
    }


def test_lmer_objective(ref, r_dataset):
    ss = r_dataset("sleepstudy")
    f = "Reaction ~ Days + (Days | Subject)"
    assert mixbridge.lmer_objective(f, ss, THETA, engine="r") == ref["lmer_reml"][0]
    assert mixbridge.lmer_objective(f, ss, THETA, reml=False, engine="r") == ref["lmer_ml"][0]
    # the fit's objective hook is the same function
    fit = mixbridge.lmer(f, ss, reml=False, engine="r")
    assert fit.objective(np.array(THETA)) == ref["lmer_ml"][0]


def test_glmer_objective(ref, r_dataset):
    cbpp = r_dataset("cbpp")
    f = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
    got = mixbridge.glmer_objective(
        f, cbpp, GL_THETA, GL_BETA, engine="r", control={"tol_pwrss": 1e-12}
    )
    assert got == ref["glmer_laplace"][0]
    got9 = mixbridge.glmer_objective(
        f, cbpp, GL_THETA, GL_BETA, nagq=9, engine="r", transport="subprocess"
    )
    assert got9 == ref["glmer_agq9"][0]


def test_bayesglm_fixed_dispersion(ref, r_dataset):
    dye = r_dataset("Dyestuff")
    mu, tau, phi = ref["mu_tau_phi"]
    fit = mixbridge.bayesglm(
        "Yield ~ 0 + Batch", dye, prior_mean=mu, prior_scale=tau, prior_df=np.inf,
        scaled=False, dispersion=phi, engine="r",
    )  # fmt: skip
    # With scaled=FALSE our fixed-phi path runs the same arithmetic as the spec's family
    # relabelling (dispersion 1 from the start, weights 1/phi): identical numbers.
    np.testing.assert_array_equal(fit.coef.to_numpy(), ref["hack_coef"])
    np.testing.assert_array_equal(fit.se.to_numpy(), ref["hack_se"])
    assert fit.dispersion == phi and fit.dispersion_pearson == phi
    np.testing.assert_array_equal(fit.se_display.to_numpy(), fit.se.to_numpy())
    # The SEs are the posterior SDs at that phi: 1/sqrt(n_j/phi + 1/tau^2) (n_j = 5). Rounding
    # only: the closed form and R's chol2inv differ in the last bits.
    n_j = dye["Batch"].value_counts().to_numpy()
    np.testing.assert_allclose(fit.se.to_numpy(), 1 / np.sqrt(n_j / phi + 1 / tau**2), rtol=1e-13)
    # ...and lme4's conditional SDs / BLUPs (lmer's optimizer tolerance does not enter: mu,
    # tau, phi are lmer's own estimates; differences are rounding, spec section 12: 5.3e-15).
    np.testing.assert_allclose(fit.se.to_numpy(), ref["condvar_sd"], rtol=1e-12)
    np.testing.assert_allclose(fit.coef.to_numpy(), ref["blup"], rtol=1e-12)


def test_fixed_dispersion_keeps_gaussian_prior_scaling(needs_r, r_dataset):
    """Holding phi does not switch off arm's gaussian scaling (2 sd(y)), unlike a relabel."""
    dye = r_dataset("Dyestuff")
    free = mixbridge.bayesglm("Yield ~ Batch", dye, engine="r")
    fixed = mixbridge.bayesglm("Yield ~ Batch", dye, dispersion=free.dispersion, engine="r")
    np.testing.assert_array_equal(fixed.prior_scale, free.prior_scale)
    assert fixed.extra["fixed_dispersion"] and not free.extra["fixed_dispersion"]
    # at phi = arm's own converged dispersion both fits solve the same equations; they differ
    # only by arm's stopping rule (epsilon 1e-8 on deviance/dispersion, spec section 5);
    # measured 2.7e-9 relative, bound 1e-7
    np.testing.assert_allclose(fixed.coef, free.coef, rtol=1e-7)
