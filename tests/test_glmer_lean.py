"""glmer's lean big-data path in memory (mixbridge.python_impl.glmer_lean, issue 15 target 4):
the group-sum algorithm over rows ordered by group, read in chunks. Forced onto moderate data
here (LEAN_MIN_ROWS = 0, small chunks); the reference is the general in-memory path on the same
rows (itself checked against lme4 in test_glmer_fast.py), and lme4 live.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import mixbridge
from mixbridge.python_impl import glmer_lean, group_sum_rows

# the same algorithm and criterion; the optimum polished by Newton steps on the analytic
# gradient, so the two paths agree to ~1e-11 (measured); 1e-8 as for the Dask path
RTOL = 1e-8
TIGHT = {"tol_pwrss": 1e-12}


@pytest.fixture
def lean(monkeypatch):
    """Switch the lean path on for any size, with chunks of ~500 rows (many chunks)."""
    monkeypatch.setattr(glmer_lean, "LEAN_MIN_ROWS", 0)
    init = group_sum_rows.SortedColumns.__init__

    def small_chunks(self, *args, **kwargs):
        kwargs["chunk_rows"] = 500
        init(self, *args, **kwargs)

    monkeypatch.setattr(group_sum_rows.SortedColumns, "__init__", small_chunks)


def _data(n: int, G: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = rng.integers(0, G, n)
    df = pd.DataFrame(
        {
            "g": g * 5 + 2,
            "x1": rng.normal(size=n),
            "x2": rng.uniform(size=n),
            "w": rng.integers(1, 5, n).astype(float),
            "o": rng.normal(0, 0.2, n),
        }
    )
    re = rng.normal(0, 0.8, G)[g]
    eta = -0.3 + 0.6 * df.x1 - 0.7 * df.x2 + re
    df["y"] = (rng.uniform(size=n) < 1 / (1 + np.exp(-eta))).astype(float)
    df["p"] = rng.binomial(df.w.astype(int), 1 / (1 + np.exp(-eta))) / df.w
    df["k"] = rng.poisson(np.exp(0.2 + 0.3 * df.x1 + 0.6 * re + df.o)).astype(float)
    return df


def _assert_same(a, b):
    np.testing.assert_allclose(a.fixef.to_numpy(), b.fixef.to_numpy(), rtol=RTOL)
    np.testing.assert_allclose(a.theta, b.theta, rtol=RTOL)
    np.testing.assert_allclose(a.vcov.to_numpy(), b.vcov.to_numpy(), rtol=RTOL)
    np.testing.assert_allclose(a.vcov_rx.to_numpy(), b.vcov_rx.to_numpy(), rtol=RTOL)
    for name in ("loglik", "deviance", "aic", "bic"):
        assert getattr(a, name) == pytest.approx(getattr(b, name), rel=RTOL), name
    ra, rb = a.ranef["g"], b.ranef["g"]
    assert list(ra.index) == list(rb.index)
    scale = np.abs(rb.to_numpy()).max()
    np.testing.assert_allclose(ra.to_numpy(), rb.to_numpy(), atol=RTOL * scale)
    np.testing.assert_allclose(a.cond_var["g"], b.cond_var["g"], rtol=RTOL)
    assert a.nobs == b.nobs and a.df == b.df and a.ngroups == b.ngroups
    assert a.singular == b.singular and a.converged == b.converged
    codes = [[m.code for m in f.messages if m.code != "pirls_trial"] for f in (a, b)]
    assert codes[0] == codes[1]
    np.testing.assert_allclose(a.fitted, b.fitted, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(a.residuals, b.residuals, rtol=1e-8, atol=1e-10)
    for kind in ("link", "response"):
        np.testing.assert_allclose(a.predict(type=kind), b.predict(type=kind), rtol=1e-9,
                                   atol=1e-12)  # fmt: skip


CASES = [
    ("y ~ x1 + x2 + (1|g)", "binomial", {}),
    ("p ~ x1 + x2 + (1|g)", "binomial", {"weights": "w"}),
    ("k ~ x1 + (1|g)", "poisson", {"offset": "o"}),
]


@pytest.mark.parametrize("formula,family,kw", CASES)
def test_lean_path_equals_the_general_path(lean, formula, family, kw):
    df = _data(6000, 150, seed=4)
    df.loc[[7, 4000], "x1"] = np.nan  # na.omit on the way
    fit = mixbridge.glmer(formula, df, family=family, control=TIGHT, **kw)
    assert fit.extra.get("path") == "lean group sums"
    assert {"fitted", "residuals"} <= set(fit.deferred_fields())  # nothing per row up front
    glmer_lean.LEAN_MIN_ROWS = 10**12  # (restored by monkeypatch) the general path
    ref = mixbridge.glmer(formula, df, family=family, control=TIGHT, **kw)
    assert "path" not in ref.extra
    _assert_same(fit, ref)
    assert fit.objective(fit.theta, fit.fixef.to_numpy()) == pytest.approx(fit.criterion,
                                                                           rel=1e-9)  # fmt: skip
    sim = fit.simulate(nsim=2, seed=1)
    assert sim.shape == (fit.nobs, 2) and np.all(np.isfinite(sim))


def test_lean_path_leaves_what_it_does_not_do_to_the_general_path(lean):
    df = _data(2000, 60, seed=5)
    df["f"] = np.where(df.x2 > 0.5, "hi", "lo")
    df["s"], df["t"] = df.p * df.w, (1 - df.p) * df.w
    for formula, family in [("y ~ x1 + f + (1|g)", "binomial"),  # X is not plain columns
                            ("cbind(s, t) ~ x1 + (1|g)", "binomial"),  # cbind response
                            ("y ~ x1 + (x1|g)", "binomial")]:  # fmt: skip
        fit = mixbridge.glmer(formula, df, family=family, control=TIGHT)
        assert "path" not in fit.extra, formula
    fit = mixbridge.glmer("y ~ x1 + (1|g)", df, family="binomial", nagq=3)
    assert "path" not in fit.extra


def test_lean_path_agrees_with_lme4(needs_r, lean):
    """Live lme4 on the same rows and criterion (tolPwrss = 1e-12), with test_glmer_python.py's
    agreement levels: criterion never worse than lme4's (1e-6 relative), θ, β and SEs within
    1e-3 relative."""
    df = _data(5000, 150, seed=6)
    fit = mixbridge.glmer("y ~ x1 + x2 + (1|g)", df, family="binomial", control=TIGHT)
    assert fit.extra.get("path") == "lean group sums"
    r = mixbridge.glmer("y ~ x1 + x2 + (1|g)", df, family="binomial", engine="r", control=TIGHT)
    assert -2 * fit.loglik <= -2 * r.loglik + 1e-6 * abs(2 * r.loglik)
    for mine, theirs in [(fit.theta, r.theta), (fit.fixef, r.fixef), (fit.fixef_se, r.fixef_se)]:
        a, b = np.asarray(mine, float), np.asarray(theirs, float)
        assert np.max(np.abs(a - b) / np.abs(b)) < 1e-3
    assert fit.nobs == r.nobs and fit.ngroups == r.ngroups
