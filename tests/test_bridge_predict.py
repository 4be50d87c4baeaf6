"""fit.predict() on R fits is lme4's predict.merMod (checked against an independent Rscript)."""

from __future__ import annotations

import subprocess

import numpy as np
import pandas as pd
import pytest

import mixbridge
from mixbridge.errors import FormulaError, RModelError

REFERENCE_R = r"""
suppressPackageStartupMessages(library(lme4))
p <- function(key, x) cat(key, paste(sprintf("%.17g", as.vector(x)), collapse = " "), "\n")
fm <- lmer(Reaction ~ Days + (Days | Subject), sleepstudy)
nd <- data.frame(Days = c(0, 5, 1), Subject = c("308", "309", "new"))
p("all", predict(fm, nd, allow.new.levels = TRUE))
p("none", predict(fm, nd, re.form = NA))
gm <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, binomial)
p("glmer_response", predict(gm, type = "response"))
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


NEWDATA = pd.DataFrame({"Days": [0.0, 5.0, 1.0], "Subject": ["308", "309", "new"]})


@pytest.mark.parametrize("transport", ["embedded", "subprocess"])
def test_lmer_predict_newdata(ref, r_dataset, transport):
    ss = r_dataset("sleepstudy")
    fit = mixbridge.lmer("Reaction ~ Days + (Days | Subject)", ss, engine="r", transport=transport)
    np.testing.assert_array_equal(fit.predict(NEWDATA, allow_new_levels=True), ref["all"])
    if transport == "embedded":  # each subprocess predict refits in a fresh Rscript: keep one
        np.testing.assert_array_equal(fit.predict(NEWDATA, re_form="~0"), ref["none"])
        np.testing.assert_array_equal(fit.predict(), fit.fitted)
        with pytest.raises(RModelError, match="new levels detected in newdata"):
            fit.predict(NEWDATA)
        with pytest.raises(FormulaError):
            fit.predict(NEWDATA, re_form="~ (1 | Subject) + system('ls')")


def test_glmer_predict_response(ref, r_dataset):
    cbpp = r_dataset("cbpp")
    fit = mixbridge.glmer(
        "cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, engine="r"
    )
    np.testing.assert_array_equal(fit.predict(type="response"), ref["glmer_response"])
