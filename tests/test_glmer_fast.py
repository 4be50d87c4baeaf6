"""The fused (1|g) paths of the Python glmer engine: `CanonicalKernel` (group-level PIRLS for
the logit and log links) and the AGQ node sums with their exact gradient (`agq.py`).

Each fused quantity is checked against the generic implementation it replaces (same function,
different arithmetic: agreement to rounding, 1e-10 relative) and the gradients against central
differences of the value; the big-data optimizer (forced onto small data) is checked against
lme4 live, with the agreement levels of test_glmer_python.py.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

import mixbridge
from mixbridge.python_impl import agq, spec
from mixbridge.python_impl.diagonal_canonical import CanonicalKernel
from mixbridge.python_impl.glmer_devfun import Devfun, GlmerModel
from mixbridge.python_impl.pirls import pirls
from mixbridge.python_impl.pls_diagonal import DiagonalCore

CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
GROUSE = "TICKS ~ YEAR + cHEIGHT + (1|BROOD)"


def rel(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


def assert_fit_agrees(py, r, *, est_tol: float = 1e-3) -> None:
    """test_glmer_python.py's standard checks (its docstring explains the tolerances): the
    criterion never worse than lme4's (1e-6 relative); θ, β and SEs within 1e-3 relative (lme4's
    Nelder–Mead stops ~1e-5 short of the flat optimum; SEs from finite-difference Hessians)."""
    crit = -2.0 * (py.loglik - py.loglik_constant)
    assert crit <= -2 * r.loglik + 1e-6 * abs(2 * r.loglik)
    assert rel(py.theta, r.theta) < est_tol
    assert rel(py.fixef, r.fixef) < est_tol
    assert rel(py.fixef_se, r.fixef_se) < est_tol
    assert py.df == r.df and py.nobs == r.nobs and py.ngroups == r.ngroups


def _data(family: str, seed: int, cbind: bool = False) -> tuple[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    n, groups = 3000, 150
    g = rng.integers(0, groups, n)
    x = rng.standard_normal(n)
    eta = -0.3 + 0.6 * x + 0.9 * rng.standard_normal(groups)[g]
    d = pd.DataFrame({"x": x, "g": pd.Categorical(g)})
    if family == "poisson":
        d["y"] = rng.poisson(np.exp(eta)).astype(float)
        return "y ~ x + (1|g)", d
    if cbind:
        size = rng.integers(1, 8, n)
        d["s"] = rng.binomial(size, 1 / (1 + np.exp(-eta))).astype(float)
        d["f"] = size - d["s"]
        return "cbind(s, f) ~ x + (1|g)", d
    d["y"] = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(float)
    return "y ~ x + (1|g)", d


CASES = [("binomial", 1, False), ("binomial", 2, True), ("poisson", 3, False)]


def _model(formula: str, d: pd.DataFrame, family: str, nagq: int = 1, tol: float = 1e-7):
    model = GlmerModel.build(
        spec.glmer_spec(formula, d, family=family, link=None, nagq=nagq, control={"tol_pwrss": tol})
    )
    return model, Devfun(model)


@pytest.mark.parametrize("family,seed,cbind", CASES)
def test_kernel_pirls_is_generic_pirls(family, seed, cbind):
    """u-only and joint fused PIRLS reproduce `pirls` iterate by iterate (lme4's stopping rule
    included: same iteration count, same log|L|² from the start-of-iteration weights)."""
    formula, d = _data(family, seed, cbind)
    model, dev = _model(formula, d, family)
    k, pred, resp = dev.kernel, model.core, model.resp
    assert k is not None
    theta = np.array([0.7])
    eta0 = dev.base_offset + dev.lp0
    ref = pirls(pred, resp, theta, eta0, dev.base_offset, u_only=False, strict=False)
    ref_ld = pred.ldL2
    ours = k.pirls_joint(0.7, eta0, dev.base_offset)
    assert ours is not None and ours.iterations == ref.iterations
    assert abs(ours.pdev - ref.pdev) <= 1e-10 * abs(ref.pdev)
    assert abs(ours.ldL2 - ref_ld) <= 1e-10 * abs(ref_ld)
    np.testing.assert_allclose(ours.beta, ref.beta, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ours.u, ref.u, rtol=1e-9, atol=1e-12)

    offset = dev.base_offset + model.X @ (ref.beta + 0.05)
    ref = pirls(pred, resp, theta, eta0, offset, u_only=True, strict=False)
    ours = k.pirls_u(0.7, offset, eta_start=eta0)
    assert ours is not None and ours.iterations == ref.iterations
    assert abs(ours.laplace(resp) - ref.laplace(resp)) <= 1e-10 * abs(ref.laplace(resp))
    np.testing.assert_allclose(ours.u, ref.u, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("family,seed,cbind", CASES)
@pytest.mark.parametrize("nagq", [1, 9])
def test_value_and_gradient_at_converged_modes(family, seed, cbind, nagq):
    """Laplace/AGQ value at the modes from `modes` equals the generic deviance function (PIRLS
    converged to 1e-14), and the analytic gradients equal central differences of that value."""
    formula, d = _data(family, seed, cbind)
    model, dev = _model(formula, d, family, nagq=nagq, tol=1e-14)
    k = dev.kernel
    x = np.array([0.85, -0.25, 0.55])
    dev.stage2(x)
    u0 = dev.state.u.copy()

    def value_grad(xx):
        offset = dev.base_offset + model.X @ xx[1:]
        st, W, S, swmu = k.modes(xx[0], offset, xx[0] * u0, 1e-14)
        if nagq == 1:
            g = k.gradient_from(xx[0], W, S, swmu, st.mu, st.u)
            return st.laplace(model.resp), np.concatenate([[g[0]], g[1]])
        f, gt, gb, _ = agq.agq_value_gradient(k, st, xx[0], W, S, swmu, nagq)
        return f, np.concatenate([[gt], gb])

    f, g = value_grad(x)
    ref = dev.stage2(x)
    assert abs(f - ref) <= 1e-10 * abs(ref)
    h = 1e-5
    fd = np.array(
        [(value_grad(x + h * e)[0] - value_grad(x - h * e)[0]) / (2 * h) for e in np.eye(3)]
    )
    # central differences, h = 1e-5: truncation O(h²) and rounding ~1e-16·|f|/h (|f| ~ 4e3), both
    # far below 1e-6 relative to the gradient's scale
    assert np.max(np.abs(g - fd)) < 1e-6 * max(1.0, np.max(np.abs(fd)))


@pytest.mark.parametrize("family,seed,cbind", CASES)
def test_fast_agq_deviance_is_agq_deviance(family, seed, cbind):
    """The hoisted node loop (sorted rows, per-group products) is lme4's AGQ formula."""
    formula, d = _data(family, seed, cbind)
    model, dev = _model(formula, d, family, nagq=25)
    dev.stage1(np.array([0.9]))
    dev.start_stage2()
    x = np.concatenate([[0.8], dev.state.beta - 0.05])
    dev.stage2(x)
    st = dev.state
    ours = agq.agq_deviance_fast(dev.kernel, st, 0.8, 25)
    ref = agq.agq_deviance(model.core, model.resp, st, dev.offset, 25)
    assert abs(ours - ref) <= 1e-10 * abs(ref)


def test_fast_agq_with_an_empty_level():
    """A level without rows (possible for a core built directly) takes the unsorted loop."""
    formula, d = _data("binomial", 4)
    model, dev = _model(formula, d, "binomial", nagq=11)
    core = model.core
    codes = np.where(core.codes == 3, 149, core.codes)  # level 3 loses its rows
    core = DiagonalCore(core.X, codes, core.n_levels, None, group=core.group)
    model = dataclasses.replace(model, core=core, kernel=CanonicalKernel(core, model.resp))
    dev = Devfun(model)
    assert agq.sorted_rows(dev.kernel) is None
    x = np.concatenate([[0.8], dev.state.beta])
    value = dev.stage2(x)
    ref = agq.agq_deviance(model.core, model.resp, dev.state, dev.offset, 11)
    assert abs(value - ref) <= 1e-10 * abs(ref)


def test_out_of_range_linear_predictor_falls_back():
    """|η| beyond the bound where lme4's clamps start: the kernel declines, the generic PIRLS
    (with the clamps) runs instead."""
    formula, d = _data("binomial", 5)
    model, dev = _model(formula, d, "binomial")
    offset = dev.base_offset + model.X @ np.array([40.0, 0.0])
    assert dev.kernel.pirls_u(0.5, offset, eta_start=offset) is None
    assert np.isfinite(dev.stage2(np.array([0.5, 40.0, 0.0])))


@pytest.mark.parametrize(
    "name,formula,family,nagq",
    [("cbpp", CBPP, "binomial", 25), ("grouseticks", GROUSE, "poisson", 10)],
)
def test_agq_gradient_path_agrees_with_lme4(r_dataset, monkeypatch, name, formula, family, nagq):
    """The big-data AGQ optimizer (Laplace, then AGQ with its exact gradient; Hessian as
    H_Laplace + forward differences of the AGQ correction) forced onto small data."""
    monkeypatch.setattr(spec, "GRADIENT_MIN_ROWS", 0)
    data = r_dataset(name)
    py = mixbridge.glmer(formula, data, family=family, nagq=nagq)
    assert py.optimizer["stage2"]["method"].endswith("analytic gradient")
    r = mixbridge.glmer(formula, data, family=family, nagq=nagq, engine="r")
    assert_fit_agrees(py, r)


@pytest.mark.parametrize("family,seed,cbind", CASES)
def test_rows_ordered_by_group_internally(monkeypatch, family, seed, cbind):
    """Big (1|g) fits run on rows ordered by group; everything per row comes back in the data's
    order: the same fit as on data already sorted by group, row for row."""
    monkeypatch.setattr(spec, "GRADIENT_MIN_ROWS", 0)
    formula, d = _data(family, seed, cbind)
    model, _ = _model(formula, d, family)
    assert model.rows is not None  # the rows were reordered
    fit = mixbridge.glmer(formula, d, family=family)
    order = np.argsort(d["g"].cat.codes.to_numpy(), kind="stable")
    ds = d.iloc[order].reset_index(drop=True)
    fs = mixbridge.glmer(formula, ds, family=family)
    assert _model(formula, ds, family)[0].rows is None  # already in order
    # the same arithmetic on the same ordered rows: equal up to rounding
    np.testing.assert_allclose(fit.fixef, fs.fixef, rtol=1e-10)
    np.testing.assert_allclose(fit.fitted[order], fs.fitted, rtol=1e-10)
    np.testing.assert_allclose(fit.residuals[order], fs.residuals, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(fit.predict()[order], fs.predict(), rtol=1e-10)
    np.testing.assert_allclose(fit.predict(d, type="response"), fit.fitted, rtol=1e-10)
    y = d["y"].to_numpy() if "y" in d else (d["s"] / (d["s"] + d["f"])).to_numpy()
    assert np.all(np.sign(fit.residuals) == np.sign(np.round(y - fit.fitted, 14)))
    sim = fit.simulate(2, seed=1)
    assert sim.shape == (len(d), 2)
    if family == "binomial" and cbind:  # successes never exceed each row's own trials
        assert np.all(sim <= (d["s"] + d["f"]).to_numpy()[:, None])


def test_big_path_with_offset_agrees_with_lme4(needs_r, monkeypatch):
    """offset(log(t)) on the big-data path (rows reordered by group, gradient optimizer), live
    against lme4, and predict() on the data back in the data's row order.

    SEs: the big path's vcov comes from the Hessian of the fully converged Laplace deviance;
    lme4's from deriv12 of its devfun at tolPwrss = 1e-7 restarted from the stage-1 lp0, whose
    curvature carries the PIRLS stopping quirk (spec §3.2): on these 800 rows the x SEs differ by
    3e-3 (the same before the fused kernel; our small-data path, deriv12 on lme4's devfun, gives
    lme4's SEs to 1e-6). So the SEs are checked against deriv12 of our converged deviance.
    """
    from mixbridge.python_impl.optimize import deriv12

    monkeypatch.setattr(spec, "GRADIENT_MIN_ROWS", 0)
    rng = np.random.default_rng(8)
    n, groups = 800, 40
    g = rng.integers(0, groups, n)
    d = pd.DataFrame({"x": rng.standard_normal(n), "t": rng.uniform(0.5, 3.0, n)})
    d["g"] = pd.Categorical([f"g{i:02d}" for i in g])
    eta = np.log(d["t"]) + 0.2 + 0.5 * d["x"] + 0.6 * rng.standard_normal(groups)[g]
    d["y"] = rng.poisson(np.exp(eta)).astype(float)
    f = "y ~ x + offset(log(t)) + (1 | g)"
    py = mixbridge.glmer(f, d, family="poisson")
    assert py.optimizer["stage2"]["method"].endswith("analytic gradient")
    r = mixbridge.glmer(f, d, family="poisson", engine="r")
    # the standard agreement levels (test_glmer_python.py's docstring)
    assert -2 * py.loglik <= -2 * r.loglik + 1e-6 * abs(2 * r.loglik)
    assert rel(py.theta, r.theta) < 1e-3 and rel(py.fixef, r.fixef) < 1e-3
    np.testing.assert_allclose(py.predict(d, type="response"), py.fitted, rtol=1e-10)
    np.testing.assert_allclose(py.fitted, r.fitted, rtol=1e-3)  # estimates agree to 1e-3
    model, dev = _model(f, d, "poisson", tol=1e-14)
    x = np.concatenate([py.theta, py.fixef.to_numpy()])
    dev.stage2(x)
    _, hess = deriv12(dev.stage2, x, dev.stage2(x), np.array([0.0, -np.inf, -np.inf]))
    se = np.sqrt(np.diag(2.0 * np.linalg.inv(hess)[1:, 1:]))
    # deriv12 (δ = 1e-4, central second differences of values) against central differences of
    # the analytic gradient: truncation O(δ²) ~ 1e-8 relative; the values carry the PIRLS
    # stopping noise, tol_pwrss·pdev ~ 1e-14·1.6e3, divided by δ² = 1e-8: ~2e-3 on Hessian
    # entries ≥ 170, i.e. ~1e-5 relative
    assert rel(py.fixef_se, se) < 1e-5


@pytest.mark.parametrize("nagq", [1, 5])
def test_big_path_singular_fit(needs_r, monkeypatch, nagq):
    """No group variation: the big-data path ends on the boundary θ = 0 (Laplace and AGQ), as
    lme4 does; checks as for singular fits in test_glmer_python.py."""
    monkeypatch.setattr(spec, "GRADIENT_MIN_ROWS", 0)
    rng = np.random.default_rng(11)
    n, groups = 1500, 60
    d = pd.DataFrame({"x": rng.standard_normal(n), "g": pd.Categorical(rng.integers(0, groups, n))})
    d["y"] = (rng.random(n) < 1 / (1 + np.exp(0.2 - 0.5 * d["x"]))).astype(float)
    py = mixbridge.glmer("y ~ x + (1|g)", d, family="binomial", nagq=nagq)
    assert py.optimizer["stage2"]["method"].endswith("analytic gradient")
    r = mixbridge.glmer("y ~ x + (1|g)", d, family="binomial", nagq=nagq, engine="r")
    assert r.singular and py.singular and py.theta[0] < 1e-4
    crit = -2.0 * (py.loglik - py.loglik_constant)
    assert crit <= -2 * r.loglik + 1e-6 * abs(2 * r.loglik)
    assert rel(py.fixef, r.fixef) < 1e-3
