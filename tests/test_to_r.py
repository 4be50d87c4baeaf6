"""fit.to_r(): a Python fit as a real lme4 merMod in the embedded R, built by lme4's modular
functions at the fit's parameters (no refit), and what R packages then do with it.

Everything the tests read from the object is computed by lme4 from its own state at the fit's
parameters (logLik, fixef, ranef, VarCorr, sigma, R_X-based vcov, condVar, fitted), so equality
to 1e-10 checks that the two engines compute the same thing at the same parameters. The one
quantity handed over rather than recomputed is glmer's Hessian (lme4 stores its own in
optinfo$derivs for vcov()): vcov() with it must equal the fit's vcov, vcov(use.hessian = FALSE)
is lme4's own R_X computation and must equal fit.vcov_rx, and lme4's deriv12 at the same
parameters must give the same Hessian within the glmer SE tolerance.
"""

from __future__ import annotations

import dataclasses
import threading
import warnings

import numpy as np
import pandas as pd
import pytest
from r_helpers import r_call, r_frame

import mixbridge
from mixbridge.conformance.tolerance import DERIVED_FACTOR, POLICIES
from mixbridge.errors import ArgumentError, DataError, MixbridgeWarning

TIGHT = 1e-10
CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"

EXTRACT = """function(m, glmm) {
  suppressPackageStartupMessages(library(lme4))
  re <- ranef(m, condVar = TRUE)
  pv <- lapply(re, function(d) {
    v <- attr(d, "postVar")
    if (is.list(v)) {  # (x || g): one array per scalar term; the block-diagonal whole
      full <- array(0, c(length(v), length(v), dim(v[[1]])[3]))
      for (k in seq_along(v)) full[k, k, ] <- v[[k]][1, 1, ]
      v <- full
    }
    as.vector(v)
  })
  out <- list(class = class(m), loglik = as.numeric(logLik(m)), df = attr(logLik(m), "df"),
       fixef = fixef(m), vcov = as.vector(as.matrix(vcov(m))), sigma = sigma(m),
       varcorr = as.data.frame(VarCorr(m)), ranef = lapply(re, function(d) as.vector(as.matrix(d))),
       postvar = pv, fitted = as.numeric(fitted(m)), theta = getME(m, "theta"),
       aic = AIC(m), bic = BIC(m), data_name = deparse(getCall(m)$data),
       reml = isREML(m), nobs = nobs(m))
  if (glmm) out$vcov_rx <- as.vector(as.matrix(suppressWarnings(vcov(m, use.hessian = FALSE))))
  out
}"""


@pytest.fixture(scope="module")
def lme4_data(needs_r, r_dataset):
    return {name: r_dataset(name) for name in ("sleepstudy", "Penicillin", "cbpp")}


def _extract(fit) -> dict:
    return r_call(EXTRACT, m=fit.to_r(), glmm=fit.model == "glmer")


def _close(ours, theirs, rtol=TIGHT, what=""):
    np.testing.assert_allclose(np.asarray(ours, float), np.asarray(theirs, float), rtol=rtol,
                               atol=0, err_msg=what)  # fmt: skip


def _check_same_fit(fit, got: dict, vcov=None) -> None:
    """logLik, fixef, vcov, ranef (+ condVar), VarCorr, sigma, θ, AIC/BIC, fitted: 1e-10 rel."""
    assert got["class"][0] == ("lmerMod" if fit.model == "lmer" else "glmerMod")
    assert got["data_name"] == ["mixbridge_data"]
    assert int(got["nobs"][0]) == fit.nobs and int(got["df"][0]) == fit.df
    _close(got["loglik"], [fit.loglik], what="logLik")
    _close(got["aic"], [fit.aic], what="AIC")
    _close(got["bic"], [fit.bic], what="BIC")
    _close(got["fixef"], fit.fixef.to_numpy(), what="fixef")
    _close(got["theta"], fit.theta, what="theta")
    _close(got["sigma"], [fit.sigma], what="sigma")
    ref_vcov = fit.vcov if vcov is None else vcov
    _close(got["vcov"], ref_vcov.to_numpy().ravel(order="F"), what="vcov")
    vc = r_frame(got["varcorr"])
    assert vc["grp"].tolist() == fit.varcorr["grp"].tolist()
    _close(vc["vcov"], fit.varcorr["vcov"], what="VarCorr vcov")
    _close(vc["sdcor"], fit.varcorr["sdcor"], what="VarCorr sdcor")
    for factor, frame in fit.ranef.items():
        # a mode that is ~0 (a level with no information) is compared on the term's scale
        scale = np.abs(frame.to_numpy()).max()
        np.testing.assert_allclose(
            got["ranef"][factor], frame.to_numpy().ravel(order="F"), rtol=TIGHT,
            atol=TIGHT * scale, err_msg=f"ranef {factor}",
        )  # fmt: skip
        cv = np.asarray(fit.cond_var[factor])
        _close(got["postvar"][factor], cv.transpose(0, 2, 1).ravel(), what=f"condVar {factor}")
    _close(got["fitted"], fit.fitted, what="fitted")


@pytest.mark.parametrize(
    "formula, dataset, reml",
    [
        ("Reaction ~ Days + (Days | Subject)", "sleepstudy", True),
        ("Reaction ~ Days + (Days || Subject)", "sleepstudy", False),
        ("diameter ~ 1 + (1 | plate) + (1 | sample)", "Penicillin", True),
    ],
)
def test_lmer_to_r_equals_the_python_fit(lme4_data, formula, dataset, reml):
    fit = mixbridge.lmer(formula, lme4_data[dataset], reml=reml)
    got = _extract(fit)
    assert got["reml"] == [reml]
    _check_same_fit(fit, got)


def test_lmer_with_weights_and_offset_to_r(lme4_data):
    d = lme4_data["sleepstudy"].copy()
    rng = np.random.default_rng(5)
    d["w"] = rng.uniform(0.5, 2.0, len(d))
    d["o"] = rng.normal(0, 5, len(d))
    fit = mixbridge.lmer("Reaction ~ Days + (Days | Subject)", d, weights="w", offset="o")
    _check_same_fit(fit, _extract(fit))


def test_glmer_to_r_equals_the_python_fit(lme4_data):
    fit = mixbridge.glmer(CBPP, lme4_data["cbpp"], family="binomial")
    got = _extract(fit)
    # vcov() uses the Hessian handed over in optinfo$derivs, as for lme4's own glmer fits ...
    _check_same_fit(fit, got)
    # ... and without it, lme4's own R_X at the fit's (θ, β) equals the fit's R_X-based vcov
    _close(got["vcov_rx"], fit.vcov_rx.to_numpy().ravel(order="F"), what="vcov_rx")


def test_glmer_handed_over_hessian_is_lme4s_own(lme4_data):
    """lme4's finite-difference Hessian (deriv12, as glmer's calc.derivs) at the fit's
    parameters gives the same SEs as the Hessian handed over, within the glmer SE policy."""
    fit = mixbridge.glmer(CBPP, lme4_data["cbpp"], family="binomial")
    got = r_call(
        """function(m) {
          devfun <- update(m, devFunOnly = TRUE)
          h <- lme4:::deriv12(devfun, c(getME(m, "theta"), fixef(m)))$Hessian
          list(se = sqrt(diag(2 * solve(h))[-seq_along(getME(m, "theta"))]))
        }""",
        m=fit.to_r(),
    )
    tol = POLICIES["glmer"]["fixef_se"]
    se = fit.fixef_se.to_numpy()
    assert np.all(np.abs(got["se"] - se) <= [tol.bound(s) for s in se]), (got["se"], se)


def test_r_engine_fit_to_r_is_lme4s_object(lme4_data):
    """An R-engine fit converted back gives lme4's own numbers (lmer: to 1e-10; it has no PIRLS
    start to reproduce)."""
    fit = mixbridge.lmer("Reaction ~ Days + (Days | Subject)", lme4_data["sleepstudy"], engine="r")
    _check_same_fit(fit, _extract(fit))
    gfit = mixbridge.glmer(CBPP, lme4_data["cbpp"], family="binomial", engine="r")
    got = _extract(gfit)
    # lme4's own derivatives travel with the R fit: vcov() is lme4's own
    _close(got["vcov"], gfit.vcov.to_numpy().ravel(order="F"), what="vcov")
    # lme4 does not report where its stage 1 ended, so stage 2's PIRLS starts elsewhere: the
    # Laplace value moves at the PIRLS tolerance, far inside the glmer objective tolerance
    assert abs(got["loglik"][0] - gfit.loglik) <= POLICIES["glmer"]["objective"].bound(0.0) / 2


def test_emmeans_on_converted_glmer_matches_lme4s_fit(lme4_data, request):
    from conftest import require_r_packages

    require_r_packages(request.config, "emmeans")
    d = lme4_data["cbpp"]
    fit = mixbridge.glmer(CBPP, d, family="binomial")
    got = r_call(
        """function(m, data) {
          suppressPackageStartupMessages({library(lme4); library(emmeans)})
          own <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), data,
                       family = binomial)
          list(converted = as.data.frame(emmeans(m, ~ period)),
               own = as.data.frame(emmeans(own, ~ period)))
        }""",
        m=fit.to_r(),
        data=d,
    )
    conv, own = r_frame(got["converted"]), r_frame(got["own"])
    assert conv["period"].tolist() == own["period"].tolist() and len(conv) == 4
    policy = POLICIES["glmer"]
    for est_c, est_o, se_c, se_o in zip(conv["emmean"], own["emmean"], conv["SE"], own["SE"],
                                        strict=True):  # fmt: skip
        assert abs(est_c - est_o) <= policy["fixef"].bound(max(abs(est_o), se_o))
        assert abs(se_c - se_o) <= policy["fixef_se"].bound(se_o)
    # and the converted emmeans are exactly those of the Python fit's β and vcov
    x = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 1]], dtype=float)
    np.testing.assert_allclose(conv["emmean"], x @ fit.fixef.to_numpy(), rtol=1e-12)
    se = np.sqrt(np.einsum("ij,jk,ik->i", x, fit.vcov.to_numpy(), x))
    np.testing.assert_allclose(conv["SE"], se, rtol=1e-12)


def test_lmertest_works_on_converted_lmer(lme4_data, request):
    from conftest import require_r_packages

    require_r_packages(request.config, "lmerTest")
    d = lme4_data["sleepstudy"]
    formula = "Reaction ~ Days + (Days | Subject)"
    script = """function(m, data) {
      # lmerTest through its namespace, never attached: attached, it would change what other
      # tests' broom.mixed calls return for plain lme4 fits
      own <- lmerTest::lmer(Reaction ~ Days + (Days | Subject), data)
      co <- function(x) as.data.frame(summary(x)$coefficients)
      list(converted = co(lmerTest::as_lmerModLmerTest(m)), own = co(own))
    }"""
    fits = {"python": mixbridge.lmer(formula, d), "r": mixbridge.lmer(formula, d, engine="r")}
    tables = {k: r_call(script, m=f.to_r(), data=d) for k, f in fits.items()}
    # the R engine's fit converted back: lmerTest gives what it gives on lme4's own fit
    conv, own = (r_frame(tables["r"][k]) for k in ("converted", "own"))
    for col in ("Estimate", "Std. Error", "df", "t value", "Pr(>|t|)"):
        np.testing.assert_allclose(conv[col], own[col], rtol=1e-6, err_msg=col)
    # the Python fit: Satterthwaite's df follow θ (1e-4 rel), with the derived-quantity allowance
    conv, own = (r_frame(tables["python"][k]) for k in ("converted", "own"))
    rel = POLICIES["lmer"]["theta"].rel * DERIVED_FACTOR
    np.testing.assert_allclose(conv["df"], own["df"], rtol=rel)
    np.testing.assert_allclose(conv["Std. Error"], own["Std. Error"], rtol=rel)
    assert (conv["Pr(>|t|)"] < 1e-5).all()


def test_broom_mixed_on_converted_fit_equals_tidy(lme4_data, request):
    from conftest import require_r_packages

    require_r_packages(request.config, "broom.mixed")
    fit = mixbridge.lmer("Reaction ~ Days + (Days | Subject)", lme4_data["sleepstudy"])
    got = r_call(
        """function(m) {
          suppressPackageStartupMessages(library(broom.mixed))
          as.data.frame(tidy(m, conf.int = TRUE))
        }""",
        m=fit.to_r(),
    )
    theirs, ours = r_frame(got), fit.tidy(conf_int=True)
    assert ours["term"].tolist() == theirs["term"].tolist()
    for col in ("estimate", "std.error", "statistic", "conf.low", "conf.high"):
        np.testing.assert_allclose(ours[col.replace(".", "_")], theirs[col], rtol=1e-9,
                                   err_msg=col)  # fmt: skip


def test_to_r_binds_a_name_in_r(lme4_data):
    fit = mixbridge.lmer("Reaction ~ Days + (1 | Subject)", lme4_data["sleepstudy"])
    fit.to_r(name="mixbridge_test_fit")
    got = r_call("function() as.numeric(logLik(get('mixbridge_test_fit', envir = globalenv())))")
    np.testing.assert_allclose(got, [fit.loglik], rtol=TIGHT)


def test_to_r_from_threads_is_serialized(lme4_data):
    fit = mixbridge.lmer("Reaction ~ Days + (Days | Subject)", lme4_data["sleepstudy"])
    out: list[float] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(3):
                out.append(float(r_call("function(m) as.numeric(logLik(m))", m=fit.to_r())[0]))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(out) == 12
    np.testing.assert_allclose(out, fit.loglik, rtol=TIGHT)


def test_to_r_errors_are_clear(lme4_data):
    d = lme4_data["sleepstudy"].copy()
    fit = mixbridge.lmer("Reaction ~ Days + (1 | Subject)", d)
    with pytest.raises(ArgumentError) as info:
        dataclasses.replace(fit, call=None).to_r()
    assert info.value.argument == "fit"
    with pytest.raises(ArgumentError) as info:
        fit.to_r(name="not a name")
    assert info.value.argument == "name"
    # data changed after the fit: lme4's criterion at the fit's θ is not the fit's
    d.loc[0, "Reaction"] += 100.0
    with pytest.raises(DataError, match="data changed"):
        fit.to_r()


def test_fits_carry_their_call(lme4_data):
    d = lme4_data["cbpp"]
    fit = mixbridge.glmer(CBPP, d, family="binomial", nagq=3)
    assert fit.call is not None and fit.call.data is d
    assert (fit.call.model, fit.call.family, fit.call.nagq) == ("glmer", "binomial", 3)
    assert isinstance(fit.call.data, pd.DataFrame)


@pytest.mark.parametrize("nagq", [0, 5])
def test_glmer_nagq_to_r(lme4_data, nagq):
    """nAGQ = 0 (θ only; β from PIRLS) and adaptive quadrature: lme4's numbers at the fit's
    parameters. lme4 1.1's nAGQ > 1 logLik leaves out the saturated constant (the registered
    divergence): the object's logLik is the fit's minus fit.loglik_constant."""
    fit = mixbridge.glmer(CBPP, lme4_data["cbpp"], family="binomial", nagq=nagq)
    got = _extract(fit)
    const = fit.loglik_constant if nagq > 1 else 0.0
    _close(got["loglik"], [fit.loglik - const], what="logLik")
    _close(got["fixef"], fit.fixef.to_numpy(), what="fixef")
    _close(got["vcov"], fit.vcov.to_numpy().ravel(order="F"), what="vcov")
    scale = np.abs(fit.ranef["herd"].to_numpy()).max()
    np.testing.assert_allclose(got["ranef"]["herd"], fit.ranef["herd"].to_numpy().ravel(),
                               rtol=TIGHT, atol=TIGHT * scale)  # fmt: skip


PREDICT = """function(m, newdata, re_form, type) {
  rf <- if (re_form == "NULL") NULL else as.formula(re_form)
  nd <- if (is.null(newdata)) NULL else newdata
  as.numeric(predict(m, newdata = nd, re.form = rf, type = type))
}"""


@pytest.mark.parametrize(
    "case",
    ["grouseticks", "three_terms"],
)
def test_glmer_predict_selects_terms_like_lme4(lme4_data, r_dataset, case):
    """glmer's predict(re_form=...) picks random-effects terms (and columns of a term) as lme4's
    mkNewReTrms, on the fitted rows and on new data, link and response scale: lme4's predict
    on the same fit (to_r, at the fit's parameters) to 1e-10."""
    from designs import sweep_design

    if case == "grouseticks":
        data = r_dataset("grouseticks")
        fit = mixbridge.glmer(
            "TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION)", data, family="poisson"
        )
        forms = ["~(1 | BROOD)", "~(1 | LOCATION)", "~(1 | LOCATION) + (1 | BROOD)", "~0"]
    else:  # (x | g) + (1 | h) + (1 | k): columns of a vector-valued term too
        data, formula, _ = sweep_design("three_terms", 1, "binomial")
        fit = mixbridge.glmer(formula, data, family="binomial")
        forms = ["~(x | g)", "~(1 | g)", "~(0 + x | g)", "~(1 | h) + (1 | k)", "~0"]
    m = fit.to_r()
    newdata = data.iloc[::7].reset_index(drop=True)
    for re_form in [None, *forms]:
        for nd in (None, newdata):
            for kind in ("link", "response"):
                ours = fit.predict(nd, re_form=re_form, type=kind)
                theirs = r_call(PREDICT, m=m, newdata=nd, re_form=re_form or "NULL", type=kind)
                np.testing.assert_allclose(ours, theirs, rtol=TIGHT, atol=TIGHT,
                                           err_msg=f"{re_form} {kind}")  # fmt: skip
    assert not np.allclose(fit.predict(re_form=forms[0]), fit.predict(re_form=forms[1]))


@pytest.mark.parametrize("model", ["lmer", "glmer"])
def test_predict_newdata_offset_like_lme4(lme4_data, model):
    """On new data lme4's predict.merMod evaluates offset() terms of the formula and leaves out
    the fit's offset= argument; the Python engine's predict does the same (lme4's predict on
    the same fit, to 1e-10), for an offset argument and an offset() term."""
    rng = np.random.default_rng(7)
    n = 120
    data = pd.DataFrame({"x": rng.normal(size=n), "g": [f"g{i % 12}" for i in range(n)]})
    data["off"] = rng.normal(0, 0.3, size=n)
    data["y"] = 1.0 + data["off"] + 0.5 * data["x"] + rng.normal(size=n)
    data["k"] = rng.poisson(np.exp(0.3 + data["off"] + 0.2 * data["x"]))
    fit_call = mixbridge.lmer if model == "lmer" else mixbridge.glmer
    extra = {} if model == "lmer" else {"family": "poisson"}
    response = "y" if model == "lmer" else "k"
    with_argument = fit_call(f"{response} ~ x + (1 | g)", data, offset="off", **extra)
    in_formula = fit_call(f"{response} ~ x + offset(off) + (1 | g)", data, **extra)
    newdata = data.iloc[::5].reset_index(drop=True)
    for fit in (with_argument, in_formula):
        m = fit.to_r()
        for re_form in (None, "~0"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", MixbridgeWarning)
                ours = fit.predict(newdata, re_form=re_form)
            theirs = r_call(PREDICT, m=m, newdata=newdata, re_form=re_form or "NULL", type="link")
            np.testing.assert_allclose(ours, theirs, rtol=TIGHT, atol=TIGHT)
    with pytest.warns(MixbridgeWarning, match="offset= argument is not applied"):
        with_argument.predict(newdata)
