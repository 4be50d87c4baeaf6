"""The blocked PLS core (pls_blocked.BlockedCore): the blocked factorization used for large q
must equal the dense one, and both must equal lme4 (test_lmer_vs_r covers the dense path against
R; here the blocked path is compared with it, and with R on a design too large for the dense
path)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import mixbridge
from mixbridge.formula import build_mixed_terms
from mixbridge.python_impl import pls_blocked
from mixbridge.python_impl.lmer_devfun import LmerDevfun
from mixbridge.python_impl.pls import theta_start

MODELS = [
    ("sleepstudy", "Reaction ~ Days + (Days | Subject)"),
    ("sleepstudy", "Reaction ~ Days + (Days || Subject)"),
    ("Penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)"),
    ("Pastes", "strength ~ 1 + (1 | batch/cask)"),
]


@pytest.mark.parametrize("dataset,formula", MODELS, ids=[f"{d}:{f}" for d, f in MODELS])
def test_blocked_equals_dense(r_dataset, monkeypatch, dataset, formula):
    terms = build_mixed_terms(formula, r_dataset(dataset))
    dense = LmerDevfun(terms, True)
    monkeypatch.setattr(pls_blocked, "DENSE_Q_MAX", 0)  # force the blocked scheme
    blocked = LmerDevfun(terms, True)
    assert dense.pred.dense and not blocked.pred.dense
    rng = np.random.default_rng(3)
    for _ in range(3):
        theta = theta_start(terms.reterms) + 0.5 * rng.random(dense.pred.n_theta)
        a, b = dense.state(theta), blocked.state(theta)
        # identical algebra, different elimination order: rounding only (measured ~1e-15)
        assert b.reml_criterion == pytest.approx(a.reml_criterion, rel=1e-12)
        np.testing.assert_allclose(b.beta, a.beta, rtol=1e-10)
        np.testing.assert_allclose(b.u, a.u, rtol=1e-9, atol=1e-12)
        for g, cv in dense.pred.cond_var_by_factor(1.3).items():
            np.testing.assert_allclose(
                blocked.pred.cond_var_by_factor(1.3)[g], cv, rtol=1e-9, atol=1e-14
            )
        np.testing.assert_allclose(blocked.pred.rx_inverse(), dense.pred.rx_inverse(), rtol=1e-9)
        # glmer's u-only solve with working weights
        sw = np.sqrt(rng.uniform(0.5, 2.0, terms.n))
        dense.pred.update(theta, sw)
        blocked.pred.update(theta, sw)
        y = rng.normal(size=terms.n)
        np.testing.assert_allclose(
            blocked.pred.solve_u(y), dense.pred.solve_u(y), rtol=1e-9, atol=1e-12
        )
        assert blocked.pred.ldL2 == pytest.approx(dense.pred.ldL2, rel=1e-12)


def test_blocked_path_vs_r_large_crossed(needs_r):
    """q = 520 > DENSE_Q_MAX: the blocked path end to end against lme4."""
    rng = np.random.default_rng(99)
    n, ng, nh = 2500, 480, 40
    g = rng.permutation(np.arange(n) % ng)  # every level observed
    h = rng.permutation(np.arange(n) % nh)
    x = rng.normal(size=n)
    y = 1.0 + 0.3 * x + rng.normal(scale=0.8, size=ng)[g] + rng.normal(scale=0.5, size=nh)[h]
    y = y + rng.normal(size=n)
    data = pd.DataFrame({"y": y, "x": x, "g": [f"g{i}" for i in g], "h": [f"h{i}" for i in h]})
    f = "y ~ x + (1 | g) + (1 | h)"
    fp = mixbridge.lmer(f, data)
    assert fp.ngroups == {"g": ng, "h": nh}
    fr = mixbridge.lmer(f, data, engine="r")
    # deviance function at R's θ: 1e-10 rel (deterministic algebra); optimum no worse than R's
    assert fp.objective(fr.theta) == pytest.approx(fr.criterion, rel=1e-10)
    assert fp.criterion <= fr.criterion * (1 + 1e-6)
    np.testing.assert_allclose(fp.theta, fr.theta, rtol=1e-4)
    np.testing.assert_allclose(fp.fixef_se, fr.fixef_se, rtol=1e-4)
    for grp in ("g", "h"):
        sd = fr.varcorr.set_index("grp").loc[grp, "sdcor"]
        diff = np.abs(fp.ranef[grp].to_numpy() - fr.ranef[grp].to_numpy())
        assert diff.max() <= 1e-4 * sd
        np.testing.assert_allclose(fp.cond_var[grp], fr.cond_var[grp], rtol=1e-4)
    assert fp.loglik == pytest.approx(fr.loglik, abs=1e-6)
