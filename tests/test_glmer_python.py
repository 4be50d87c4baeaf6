"""The Python glmer engine against lme4, live through the bridge (spec lme4_spec.md §3).

Agreement levels (and why):
* deviance function at identical parameters with tolPwrss = 1e-12 on both sides: 1e-8 relative
  (PIRLS fully converged, so both compute the same Laplace/AGQ value; observed ~1e-13);
* the same at lme4's defaults: 1e-3 absolute (the stopping rule leaves log|L|² from the previous
  iteration's weights, and the stage-2 start lp0 comes from each side's own stage-1 optimum;
  spec §3.2 puts the effect at up to ~1e-3; observed ~1e-9 on cbpp);
* criterion at our optimum ≤ lme4's + 1e-6 relative (our optimizer converges tighter than
  lme4's Nelder–Mead with FtolAbs = 1e-5, so we must never be worse);
* fixef and θ within 1e-3 relative: the optimum is flat, lme4 stops ~1e-5 short (spec §5);
* fixef SEs 1e-3 relative: they come from a finite-difference Hessian (δ = 1e-4) at optima that
  differ by ~1e-5.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import mixbridge

CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
GROUSE = "TICKS ~ YEAR + cHEIGHT + (1|BROOD)"


def rel(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


def params(fit) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(fit.theta, float), fit.fixef.to_numpy(float)


def lme4_criterion(fit) -> float:
    """−2 logLik on lme4 1.1's scale: for nagq > 1 without the saturated constant (spec §3.3)."""
    return -2.0 * (fit.loglik - fit.loglik_constant)


def assert_fit_agrees(py, r, *, est_tol: float = 1e-3) -> None:
    """The standard glmer agreement checks (see the module docstring for the tolerances)."""
    assert list(py.fixef.index) == list(r.fixef.index)
    assert py.theta_names == r.theta_names
    assert lme4_criterion(py) <= -2 * r.loglik + 1e-6 * abs(2 * r.loglik)
    assert rel(py.theta, r.theta) < est_tol
    assert rel(py.fixef, r.fixef) < est_tol
    assert rel(py.fixef_se, r.fixef_se) < est_tol
    assert py.df == r.df and py.nobs == r.nobs and py.ngroups == r.ngroups


@pytest.fixture(scope="session")
def cbpp(r_dataset):
    return r_dataset("cbpp")


@pytest.fixture(scope="session")
def grouse(r_dataset):
    return r_dataset("grouseticks")


@pytest.fixture(scope="session")
def cbpp_fits(cbpp):
    out = {}
    for nagq in (0, 1, 25):
        out[nagq] = (
            mixbridge.glmer(CBPP, cbpp, family="binomial", nagq=nagq),
            mixbridge.glmer(CBPP, cbpp, family="binomial", nagq=nagq, engine="r"),
        )
    return out


@pytest.mark.parametrize("nagq", [1, 25])
def test_cbpp_objective_matches_lme4_devfun(cbpp, cbpp_fits, nagq):
    _, r = cbpp_fits[nagq]
    theta, beta = params(r)
    for shift in (0.0, 0.1):  # at lme4's optimum and at a point away from it
        th, be = theta + shift, beta - shift
        kw = dict(theta=th, beta=be, family="binomial", nagq=nagq)
        tight = {"tol_pwrss": 1e-12}
        ours = mixbridge.glmer_objective(CBPP, cbpp, control=tight, **kw)
        ref = mixbridge.glmer_objective(CBPP, cbpp, control=tight, engine="r", **kw)
        assert abs(ours - ref) <= 1e-8 * abs(ref)
        ours = mixbridge.glmer_objective(CBPP, cbpp, **kw)
        ref = mixbridge.glmer_objective(CBPP, cbpp, engine="r", **kw)
        assert abs(ours - ref) <= 1e-3


def test_cbpp_nagq0_objective_is_stage1(cbpp, cbpp_fits):
    _, r = cbpp_fits[0]
    kw = dict(theta=r.theta, beta=r.fixef.to_numpy(), family="binomial", nagq=0)
    ours = mixbridge.glmer_objective(CBPP, cbpp, control={"tol_pwrss": 1e-12}, **kw)
    ref = mixbridge.glmer_objective(CBPP, cbpp, control={"tol_pwrss": 1e-12}, engine="r", **kw)
    assert abs(ours - ref) <= 1e-8 * abs(ref)


@pytest.mark.parametrize("nagq", [0, 1, 25])
def test_cbpp_fit_agrees(cbpp_fits, nagq):
    py, r = cbpp_fits[nagq]
    assert py.nagq == nagq
    assert_fit_agrees(py, r)
    # conditional deviance, fitted values, deviance residuals and ranef at modes that differ
    # only through the (flat) optimum: 1e-3 relative / absolute
    assert abs(py.deviance - r.deviance) < 1e-3 * r.deviance
    assert np.max(np.abs(py.fitted - r.fitted)) < 1e-3
    assert np.max(np.abs(py.residuals - r.residuals)) < 1e-3
    assert np.max(np.abs(py.ranef["herd"].to_numpy() - r.ranef["herd"].to_numpy())) < 1e-3
    assert list(py.ranef["herd"].index) == list(r.ranef["herd"].index)
    assert rel(py.cond_var["herd"], r.cond_var["herd"]) < 1e-3
    assert py.varcorr[["grp", "var1"]].equals(r.varcorr[["grp", "var1"]])
    assert not py.singular and py.converged


def test_cbpp_vcov_hessian_and_rx(cbpp_fits):
    py, r = cbpp_fits[1]
    # the Hessian-based vcov (lme4's default) differs from the R_X one by ~2-3% on cbpp (spec
    # §3.5: SEs 0.2312 vs 0.2279); both are checked against lme4's own numbers
    assert rel(np.sqrt(np.diag(py.vcov)), np.sqrt(np.diag(r.vcov))) < 1e-3
    rx_se = np.sqrt(np.diag(py.vcov_rx.to_numpy()))
    assert rel(rx_se, [0.2279, 0.3053, 0.3260, 0.4287]) < 5e-4  # spec §3.5, 4 digits
    assert rel(rx_se, np.sqrt(np.diag(py.vcov))) > 5e-3


def test_cbpp_agq_loglik_constant(cbpp, cbpp_fits):
    py, r = cbpp_fits[25]
    const = py.loglik_constant
    assert const == pytest.approx(-41.98, abs=0.01)  # spec §3.3
    # at identical parameters our AGQ deviance is lme4's, so the logLik gap is the constant
    theta, beta = params(r)
    ours_at_r = -0.5 * py.objective(theta, beta) + const
    assert abs(ours_at_r - r.loglik - const) < 1e-8
    # at each side's own optimum: the optima differ by ~1e-9 in the criterion
    assert abs((py.loglik - r.loglik) - const) < 1e-6
    # the normalized log-likelihood is comparable across nagq: Laplace and AGQ(25) are close
    assert abs(py.loglik - cbpp_fits[1][0].loglik) < 0.1


def test_binomial_response_forms_give_identical_fits(cbpp, cbpp_fits):
    py, _ = cbpp_fits[1]
    d = cbpp.copy()
    d["prop"] = d["incidence"] / d["size"]
    prop = mixbridge.glmer("prop ~ period + (1 | herd)", d, family="binomial", weights="size")
    assert rel(prop.fixef, py.fixef) < 1e-10
    assert rel(prop.theta, py.theta) < 1e-10
    assert abs(prop.loglik - py.loglik) < 1e-8
    # 0/1 rows: one row per animal, same likelihood up to the binomial coefficients
    rows = []
    for _, row in d.iterrows():
        for k in range(int(row["size"])):
            rows.append(
                {"herd": row["herd"], "period": row["period"], "y": int(k < row["incidence"])}
            )
    long = pd.DataFrame(rows)
    long["herd"] = pd.Categorical(long["herd"], categories=d["herd"].cat.categories)
    long["period"] = pd.Categorical(long["period"], categories=d["period"].cat.categories)
    bern = mixbridge.glmer("y ~ period + (1 | herd)", long, family="binomial")
    # same optimum, but each fit is its own Nelder-Mead run on a criterion that is flat to
    # ~1e-9 relative near it: parameters agree to ~1e-5; we allow 1e-4
    assert rel(bern.fixef, py.fixef) < 1e-4
    assert rel(bern.theta, py.theta) < 1e-4
    # the log-likelihoods differ by the binomial coefficients Σ log C(size, incidence)
    from scipy.special import gammaln

    n, k = d["size"].to_numpy(float), d["incidence"].to_numpy(float)
    lchoose = float(np.sum(gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1)))
    assert abs((py.loglik - bern.loglik) - lchoose) < 1e-6


@pytest.mark.parametrize("nagq", [1, 10])
def test_grouseticks_poisson(grouse, nagq):
    py = mixbridge.glmer(GROUSE, grouse, family="poisson", nagq=nagq)
    r = mixbridge.glmer(GROUSE, grouse, family="poisson", nagq=nagq, engine="r")
    assert_fit_agrees(py, r)
    theta, beta = params(r)
    kw = dict(theta=theta, beta=beta, family="poisson", nagq=nagq, control={"tol_pwrss": 1e-12})
    ours = mixbridge.glmer_objective(GROUSE, grouse, **kw)
    ref = mixbridge.glmer_objective(GROUSE, grouse, engine="r", **kw)
    assert abs(ours - ref) <= 1e-8 * abs(ref)
    if nagq > 1:
        assert abs((py.loglik - r.loglik) - py.loglik_constant) < 1e-6


def _random_intercept_data(family: str, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    groups = int(rng.integers(8, 40))
    sizes = rng.integers(1, 30, groups)
    g = np.repeat(np.arange(groups), sizes)
    x = rng.standard_normal(g.size)
    b = rng.normal(0.0, rng.uniform(0.3, 1.5), groups)
    eta = rng.uniform(-1, 1) + 0.5 * x + b[g]
    d = pd.DataFrame({"g": pd.Categorical([f"g{i:02d}" for i in g]), "x": x})
    if family == "binomial":
        n = rng.integers(1, 12, g.size)
        d["s"] = rng.binomial(n, 1 / (1 + np.exp(-eta))).astype(float)
        d["f"] = (n - d["s"]).astype(float)
    else:
        d["y"] = rng.poisson(np.exp(eta)).astype(float)
    return d


@pytest.mark.parametrize("family,seed", [("binomial", 1), ("binomial", 2), ("poisson", 3)])
def test_random_intercept_random_data(needs_r, family, seed):
    d = _random_intercept_data(family, seed)
    f = "cbind(s, f) ~ x + (1 | g)" if family == "binomial" else "y ~ x + (1 | g)"
    py = mixbridge.glmer(f, d, family=family)
    r = mixbridge.glmer(f, d, family=family, engine="r")
    if r.singular:
        # boundary fits: θ = 0 on both sides, compare fixef and the criterion only
        assert py.singular and py.theta[0] < 1e-4
        assert lme4_criterion(py) <= -2 * r.loglik + 1e-6 * abs(2 * r.loglik)
        assert rel(py.fixef, r.fixef) < 1e-3
    else:
        assert_fit_agrees(py, r)


def test_identity_with_bayesglm_python(needs_r):
    """fixef + ranef of a random-intercept logistic fit are bayesglm's posterior modes with the
    prior N(fixef, τ²) on the group coefficients (background.md point 3), Python engines alone."""
    d = _random_intercept_data("binomial", 4)
    fit = mixbridge.glmer("cbind(s, f) ~ 1 + (1 | g)", d, family="binomial")
    tau = float(fit.varcorr["sdcor"].iloc[0])
    b0 = float(fit.fixef.iloc[0])
    bg = mixbridge.bayesglm(
        "cbind(s, f) ~ 0 + g",
        d,
        family="binomial",
        prior_mean=b0,
        prior_scale=tau,
        prior_df=np.inf,
        scaled=False,
        epsilon=1e-14,
    )
    # the group modes solve the same penalized likelihood as the final PIRLS of the glmer fit
    # (PIRLS converges quadratically, so its last iterate is far inside 1e-8; observed ~7e-15)
    modes = b0 + fit.ranef["g"]["(Intercept)"].to_numpy()
    assert np.max(np.abs(bg.coef.to_numpy() - modes)) < 1e-8


def test_identity_with_bayesglm_r(needs_r):
    """The same identity on the R engines alone: lme4's glmer modes are arm's bayesglm modes
    (observed ~7e-15)."""
    d = _random_intercept_data("binomial", 4)
    fit = mixbridge.glmer("cbind(s, f) ~ 1 + (1 | g)", d, family="binomial", engine="r")
    tau = float(fit.varcorr["sdcor"].iloc[0])
    b0 = float(fit.fixef.iloc[0])
    bg = mixbridge.bayesglm(
        "cbind(s, f) ~ 0 + g",
        d,
        family="binomial",
        prior_mean=b0,
        prior_scale=tau,
        prior_df=np.inf,
        scaled=False,
        epsilon=1e-14,
        engine="r",
    )
    modes = b0 + fit.ranef["g"]["(Intercept)"].to_numpy()
    assert np.max(np.abs(bg.coef.to_numpy() - modes)) < 1e-8


@pytest.mark.slow
def test_grouseticks_three_terms(grouse):
    f = "TICKS ~ YEAR + cHEIGHT + (1|INDEX) + (1|BROOD) + (1|LOCATION)"
    py = mixbridge.glmer(f, grouse, family="poisson")
    r = mixbridge.glmer(f, grouse, family="poisson", engine="r")
    assert_fit_agrees(py, r)
    theta, beta = params(r)
    kw = dict(theta=theta, beta=beta, family="poisson", control={"tol_pwrss": 1e-12})
    ours = mixbridge.glmer_objective(f, grouse, **kw)
    ref = mixbridge.glmer_objective(f, grouse, engine="r", **kw)
    assert abs(ours - ref) <= 1e-8 * abs(ref)


@pytest.mark.slow
def test_verbagg_crossed(r_dataset):
    va = r_dataset("VerbAgg")
    f = "r2 ~ Anger + Gender + btype + situ + (1|id) + (1|item)"
    py = mixbridge.glmer(f, va, family="binomial")
    r = mixbridge.glmer(f, va, family="binomial", engine="r")
    assert_fit_agrees(py, r)
    theta, beta = params(r)
    kw = dict(theta=theta, beta=beta, family="binomial", control={"tol_pwrss": 1e-12})
    ours = mixbridge.glmer_objective(f, va, **kw)
    ref = mixbridge.glmer_objective(f, va, engine="r", **kw)
    assert abs(ours - ref) <= 1e-8 * abs(ref)


@pytest.mark.parametrize("family,seed", [("binomial", 5), ("poisson", 6)])
def test_scalar_laplace_gradient_matches_finite_differences(family, seed):
    """The analytic gradient used for big data is the derivative of the converged Laplace value."""
    from mixbridge.python_impl.diagonal_canonical import scalar_laplace_gradient
    from mixbridge.python_impl.glmer_devfun import Devfun, GlmerModel
    from mixbridge.python_impl.spec import glmer_spec

    d = _random_intercept_data(family, seed)
    f = "cbind(s, f) ~ x + (1 | g)" if family == "binomial" else "y ~ x + (1 | g)"
    model = GlmerModel.build(
        glmer_spec(f, d, family=family, link=None, nagq=1, control={"tol_pwrss": 1e-14})
    )
    dev = Devfun(model)
    dev.stage1(np.array([0.8]))
    dev.start_stage2()
    x = np.concatenate([[0.7], dev.state.beta + 0.1])
    dev.stage2(x)
    g_theta, g_beta = scalar_laplace_gradient(model.core, model.resp, dev.state, float(x[0]))
    grad = np.concatenate([[g_theta], g_beta])
    h = 1e-5
    fd = np.array([(dev.stage2(x + h * e) - dev.stage2(x - h * e)) / (2 * h) for e in np.eye(3)])
    # central differences, h = 1e-5: truncation O(h^2) plus rounding ~1e-16*|f|/h, both far
    # below 1e-4 relative to the gradient's scale (entries O(1)-O(100) here)
    assert np.max(np.abs(grad - fd)) < 1e-4 * max(1.0, np.max(np.abs(fd)))


def test_gradient_path_agrees_with_lme4(grouse, monkeypatch):
    """The big-data optimizer (analytic gradient, quasi-Newton) forced onto a small model."""
    from mixbridge.python_impl import spec

    monkeypatch.setattr(spec, "GRADIENT_MIN_ROWS", 0)
    py = mixbridge.glmer(GROUSE, grouse, family="poisson")
    assert py.optimizer["stage2"]["method"].endswith("analytic gradient")
    r = mixbridge.glmer(GROUSE, grouse, family="poisson", engine="r")
    assert_fit_agrees(py, r)


@pytest.mark.parametrize("link", ["probit", "cloglog"])
def test_cbpp_other_links(cbpp, link):
    """Non-canonical links: lme4's clamped C++ links, Fisher-scoring PIRLS (spec §3.1)."""
    py = mixbridge.glmer(CBPP, cbpp, family="binomial", link=link)
    r = mixbridge.glmer(CBPP, cbpp, family="binomial", link=link, engine="r")
    assert py.link == link
    assert_fit_agrees(py, r)
    theta, beta = params(r)
    kw = dict(theta=theta, beta=beta, family="binomial", link=link, control={"tol_pwrss": 1e-12})
    ours = mixbridge.glmer_objective(CBPP, cbpp, **kw)
    ref = mixbridge.glmer_objective(CBPP, cbpp, engine="r", **kw)
    assert abs(ours - ref) <= 1e-8 * abs(ref)


def test_poisson_offsets(needs_r):
    """offset(log(t)) in the formula and offset= as an argument give lme4's fit."""
    d = _random_intercept_data("poisson", 7)
    rng = np.random.default_rng(7)
    d["t"] = rng.uniform(0.5, 3.0, len(d))
    d["y"] = rng.poisson(d["t"] * np.exp(0.2 + 0.5 * d["x"])).astype(float)
    f = "y ~ x + offset(log(t)) + (1 | g)"
    py = mixbridge.glmer(f, d, family="poisson")
    r = mixbridge.glmer(f, d, family="poisson", engine="r")
    if r.singular:
        assert py.singular and rel(py.fixef, r.fixef) < 1e-3
    else:
        assert_fit_agrees(py, r)
    arg = mixbridge.glmer("y ~ x + (1 | g)", d, family="poisson", offset=np.log(d["t"].to_numpy()))
    assert rel(arg.fixef, py.fixef) < 1e-10
    assert abs(arg.loglik - py.loglik) < 1e-8


@pytest.mark.parametrize(
    "formula",
    [
        "cbind(s, f) ~ x + (x || g)",  # two scalar terms on one factor: blocked scalar-terms PLS
        pytest.param("cbind(s, f) ~ x + (x | g)", marks=pytest.mark.slow),  # vector term
    ],
)
def test_random_slopes(needs_r, formula):
    d = _random_intercept_data("binomial", 11)
    py = mixbridge.glmer(formula, d, family="binomial")
    r = mixbridge.glmer(formula, d, family="binomial", engine="r")
    assert_fit_agrees(py, r)
    assert py.cond_var["g"].shape == r.cond_var["g"].shape
    # conditional variances and modes at optima ~1e-5 apart
    assert np.max(np.abs(py.cond_var["g"] - r.cond_var["g"])) < 1e-3
    assert np.max(np.abs(py.ranef["g"].to_numpy() - r.ranef["g"].to_numpy())) < 1e-3
