"""The fused (1|g) negative-binomial path equals the general one, and agrees with lme4 live.

* `diagonal_nb`'s kernel (lme4's PIRLS steps from group sums) against the generic PIRLS on the
  diagonal core (`glmer_devfun.NB_FUSED = False`): on lme4's deviance function (tolPwrss 1e-7,
  Nelder-Mead) the same optimizer path; on the converged deviance (tol_pwrss 1e-12, the
  big-data setting) the same function, optimized by the analytic gradient on one side and
  Nelder-Mead on the other.
* glmer_nb's warm-started profile (`ProfileFast`) against a full fit from lme4's start at every
  trial θ (`glmer_nb.PROFILE_FAST = False`).
* the fast path's fit against lme4's glmer.nb, by lme4's own converged deviance function.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import mixbridge
from mixbridge.conformance.tolerance import POLICIES
from mixbridge.python_impl import glmer_devfun, glmer_nb
from mixbridge.python_impl.diagonal_nb import NbKernel
from mixbridge.python_impl.glmer_devfun import Devfun, GlmerModel
from mixbridge.python_impl.spec import glmer_spec

FORMULA = "y ~ x1 + x2 + (1 | g)"
TIGHT = {"tol_pwrss": 1e-12}


def nb_data(
    n: int, groups: int, seed: int, *, shape: float = 2.0, sd: float = 0.5, weights: bool = False,
    offset: bool = False, unbalanced: bool = False, sort: bool = False,
) -> pd.DataFrame:  # fmt: skip
    rng = np.random.default_rng(seed)
    if unbalanced:  # group sizes from 1 row up
        p = rng.dirichlet(np.full(groups, 0.3))
        g = rng.choice(groups, size=n, p=p)
        g[:groups] = np.arange(groups)
    else:
        g = rng.integers(0, groups, n)
    x1, x2 = rng.normal(size=n), rng.uniform(size=n)
    off = rng.uniform(-0.5, 0.5, size=n) if offset else np.zeros(n)
    mu = np.exp(0.5 + 0.3 * x1 - 0.4 * x2 + off + rng.normal(scale=sd, size=groups)[g])
    y = rng.negative_binomial(shape, shape / (shape + mu)).astype(float)
    d = pd.DataFrame({"y": y, "x1": x1, "x2": x2, "g": [f"g{k}" for k in g]})
    if weights:
        d["w"] = rng.choice([1.0, 2.0, 0.5], size=n)
    if offset:
        d["off"] = off
    if sort:  # rows ordered by group: the kernel's segment sums (reduceat/repeat), not bincount
        d = d.sort_values("g", kind="stable").reset_index(drop=True)
    return d


CASES = {
    "plain": dict(n=3000, groups=100, seed=3),
    "weights": dict(n=2000, groups=80, seed=5, weights=True),
    "offset": dict(n=2000, groups=60, seed=11, offset=True, shape=0.7),
    "unbalanced": dict(n=1500, groups=120, seed=17, unbalanced=True, sd=1.0, shape=5.0),
    "sorted": dict(n=2500, groups=90, seed=29, sort=True, weights=True),
}


def _kw(d: pd.DataFrame) -> dict:
    kw: dict = {}
    if "w" in d:
        kw["weights"] = "w"
    if "off" in d:
        kw["offset"] = "off"
    return kw


def _fit(d, nb_theta, fused, monkeypatch, control=None):
    monkeypatch.setattr(glmer_devfun, "NB_FUSED", fused)
    spec = glmer_spec(
        FORMULA, d, family="negative.binomial", nb_theta=nb_theta, link=None, nagq=1,
        control=control, **_kw(d),
    )  # fmt: skip
    assert isinstance(GlmerModel.build(spec).kernel, NbKernel) == fused
    return mixbridge.glmer(
        FORMULA, d, family="negative.binomial", theta=nb_theta, control=control, **_kw(d)
    )


def _params(fit) -> np.ndarray:
    return np.r_[fit.theta, fit.fixef.to_numpy()]


@pytest.mark.parametrize("case", list(CASES))
def test_fused_kernel_follows_the_generic_path(case, monkeypatch):
    """lme4's deviance function: the fused kernel computes the same values, so Nelder-Mead takes
    the same path (differences are rounding carried along it)."""
    d = nb_data(**CASES[case])
    fused = _fit(d, 1.7, True, monkeypatch)
    generic = _fit(d, 1.7, False, monkeypatch)
    assert fused.optimizer["stage2"]["method"] == generic.optimizer["stage2"]["method"]
    assert fused.criterion == pytest.approx(generic.criterion, rel=1e-10)
    # Σ dev is not stationary at the optimum: it moves with the ~1e-7 parameter differences
    assert fused.deviance == pytest.approx(generic.deviance, rel=1e-6)
    np.testing.assert_allclose(_params(fused), _params(generic), rtol=1e-6, atol=1e-7)
    # the same deviance function at the same point, both implementations
    x = _params(generic)
    assert fused.objective(x[:1], x[1:]) == pytest.approx(generic.criterion, rel=1e-11)


def _devfun(d, nb_theta, fused, monkeypatch, control):
    """The stage-2 deviance function of one implementation, from the initial PIRLS fit's lp0
    (both implementations start there: the converged value depends on the start at ~1e-10 rel
    for this family, as lme4's PIRLS converges linearly for a non-canonical link)."""
    monkeypatch.setattr(glmer_devfun, "NB_FUSED", fused)
    spec = glmer_spec(
        FORMULA, d, family="negative.binomial", nb_theta=nb_theta, link=None, nagq=1,
        control=control, **_kw(d),
    )  # fmt: skip
    model = GlmerModel.build(spec)
    assert isinstance(model.kernel, NbKernel) == fused
    return Devfun(model)


@pytest.mark.parametrize("case", list(CASES))
def test_gradient_path_reaches_the_generic_optimum(case, monkeypatch):
    """The converged deviance (tol_pwrss 1e-12, the big-data setting): the fused path minimizes
    it with its analytic gradient, the generic one by Nelder-Mead. From the same start both
    implementations give the same function values, and ours is the better optimum."""
    d = nb_data(**CASES[case])
    fused = _fit(d, 1.7, True, monkeypatch, TIGHT)
    assert fused.optimizer["stage2"]["method"] == "BFGS, analytic gradient"
    generic = _fit(d, 1.7, False, monkeypatch, TIGHT)
    assert generic.optimizer["stage2"]["method"] == "Nelder-Mead"
    f_fused = _devfun(d, 1.7, True, monkeypatch, TIGHT).stage2
    f_generic = _devfun(d, 1.7, False, monkeypatch, TIGHT).stage2
    xa, xb = _params(fused), _params(generic)
    for x in (xa, xb, 0.9 * xa):
        assert f_fused(x) == pytest.approx(f_generic(x), rel=1e-13, abs=1e-10)
    assert f_generic(xa) <= f_generic(xb)
    # Nelder-Mead stops ~1e-6 from the optimum in the parameters
    np.testing.assert_allclose(xa, xb, rtol=1e-4, atol=1e-4)
    # the analytic gradient vanishes at our optimum
    assert np.max(np.abs(fused.optimizer["gradient"])) < 1e-5


@pytest.mark.parametrize("case", ["plain", "weights", "offset", "unbalanced", "sorted"])
def test_profile_fast_equals_full_fits(case, monkeypatch):
    """glmer_nb on the converged deviance: the warm-started profile (optimum values only) and a
    full fit from lme4's start at every trial θ give the same profile, so Brent's search ends at
    the same NB θ (up to its tolerance where the two profiles' rounding-level differences move a
    parabolic step)."""
    d = nb_data(**CASES[case])
    fast = mixbridge.glmer_nb(FORMULA, d, control=TIGHT, **_kw(d))
    assert fast.optimizer["nb"]["path"] == "fused (1|g) profile"
    monkeypatch.setattr(glmer_nb, "PROFILE_FAST", False)
    full = mixbridge.glmer_nb(FORMULA, d, control=TIGHT, **_kw(d))
    assert full.optimizer["nb"]["path"] == "glmer per trial theta"
    prof_fast = dict(fast.optimizer["nb"]["profile"])
    prof_full = dict(full.optimizer["nb"]["profile"])
    common = set(prof_fast) & set(prof_full)
    assert len(common) >= 3
    # the full fits report PIRLS from lp0 at tol 1e-12, which for this non-canonical link
    # stops with log|L|² from the weights one (linearly converging) step back: up to ~2e-9 rel
    # from the converged value the fast profile evaluates (measured: 3e-5 on 17180)
    for th in common:
        assert prof_fast[th] == pytest.approx(prof_full[th], rel=5e-9)
    assert abs(np.log(fast.nb_theta / full.nb_theta)) <= glmer_nb.NB_TOL
    assert fast.criterion == pytest.approx(full.criterion, rel=1e-9)
    np.testing.assert_allclose(_params(fast), _params(full), rtol=1e-4, atol=1e-6)


def test_fast_path_against_lme4(needs_r):
    """glmer_nb's fast path (converged deviance, warm profile) against lme4's glmer.nb, judged by
    lme4's own converged deviance function at each fit's NB θ and estimates."""
    d = nb_data(3000, 100, 23)
    py = mixbridge.glmer_nb(FORMULA, d, control=TIGHT)
    assert py.optimizer["nb"]["path"] == "fused (1|g) profile"
    r = mixbridge.glmer_nb(FORMULA, d, engine="r")

    def lme4_converged(fit) -> float:
        return mixbridge.glmer_objective(
            FORMULA, d, fit.theta, fit.fixef.to_numpy(), family="negative.binomial",
            nb_theta=fit.nb_theta, engine="r", control=TIGHT,
        )  # fmt: skip

    ours, theirs = lme4_converged(py), lme4_converged(r)
    assert ours == pytest.approx(py.criterion, abs=POLICIES["glmer"].tols["objective"].abs)
    assert ours <= theirs + POLICIES["glmer"].tols["criterion"].abs, (ours, theirs)
    assert py.nb_theta == pytest.approx(r.nb_theta, rel=2e-3)
    se = r.fixef_se.to_numpy()
    assert np.all(np.abs(py.fixef.to_numpy() - r.fixef.to_numpy()) <= 2e-3 * se + 1e-6)


@pytest.mark.parametrize("weighted", [False, True])
def test_theta_ml_matches_mass(needs_r, weighted):
    """glmer.nb's start, MASS::theta.ml (R run live): our version sums the digamma terms over
    the distinct counts, the same Newton iterations."""
    from r_helpers import r_call

    rng = np.random.default_rng(31)
    n = 5000
    mu = np.exp(rng.normal(0.5, 0.7, size=n))
    y = rng.negative_binomial(1.3, 1.3 / (1.3 + mu)).astype(float)
    w = rng.choice([0.5, 1.0, 2.0], size=n) if weighted else np.ones(n)
    ref = r_call(
        "function(y, mu, w) as.numeric(MASS::theta.ml(y, mu, sum(w), w, limit = 20, "
        "eps = 1e-4))",
        y=y, mu=mu, w=w,
    )  # fmt: skip
    ours, warns = glmer_nb.theta_ml(y, mu, w)
    assert warns == []
    assert ours == pytest.approx(float(np.ravel(ref)[0]), rel=1e-12)
