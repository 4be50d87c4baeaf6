"""glmer on Dask DataFrames (mixbridge.python_impl.distributed_glmer): the in-memory big-data
fit, each step one map-reduce over persisted partitions, O(G) traffic (issue 15, target 2).

The reference is the in-memory Python engine on the same rows (checked against live lme4 in
test_glmer_fast.py and test_glmer_python.py), and lme4 itself, live, on a moderate data set.
"""

from __future__ import annotations

import functools

import dask
import dask.dataframe as dd  # the test extra installs dask: a missing one is a failure
import numpy as np
import pandas as pd
import pytest
from dask_harness import parquet_partitions, recorded_task_sizes

import mixbridge
from mixbridge.errors import ArgumentError, FormulaError

# The same algorithm on the same rows, the sums added in another order (rounding ~1e-16 per
# sum); the optimum is polished by Newton steps on the analytic gradient
# (glmer_gradient.polished_hessian), so the path the optimizer took does not matter: estimates
# agree to ~1e-11 here. 1e-8 is the requirement.
RTOL = 1e-8
TIGHT = {"tol_pwrss": 1e-12}  # the in-memory default from 50,000 rows; the Dask path's always


def _assert_same_fit(a, b, rtol=RTOL):
    assert list(a.fixef.index) == list(b.fixef.index)
    np.testing.assert_allclose(a.fixef.to_numpy(), b.fixef.to_numpy(), rtol=rtol)
    np.testing.assert_allclose(a.vcov.to_numpy(), b.vcov.to_numpy(), rtol=rtol)
    np.testing.assert_allclose(a.vcov_rx.to_numpy(), b.vcov_rx.to_numpy(), rtol=rtol)
    np.testing.assert_allclose(a.theta, b.theta, rtol=rtol)
    for name in ("loglik", "deviance", "aic", "bic"):
        assert getattr(a, name) == pytest.approx(getattr(b, name), rel=rtol), name
    assert a.nobs == b.nobs and a.ngroups == b.ngroups and a.df == b.df
    assert a.family == b.family and a.link == b.link
    for g, frame in b.ranef.items():
        assert list(a.ranef[g].index) == list(frame.index)
        scale = np.max(np.abs(frame.to_numpy()))
        np.testing.assert_allclose(a.ranef[g].to_numpy(), frame.to_numpy(), atol=rtol * scale)
        np.testing.assert_allclose(a.cond_var[g], b.cond_var[g], rtol=rtol)
    assert a.singular == b.singular and a.converged == b.converged
    # "pirls_trial" notes a trial point where the in-memory path's clamped PIRLS hit its limit;
    # the Dask path restarts such points from lp0 (same converged value), so it is path-only
    codes = [[m.code for m in f.messages if m.code != "pirls_trial"] for f in (a, b)]
    assert codes[0] == codes[1]


def _data(n: int, G: int, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = rng.integers(0, G, n)
    df = pd.DataFrame({"g": g * 7 + 3, "x1": rng.normal(size=n), "x2": rng.uniform(size=n)})
    re = rng.normal(0, 0.8, G)[g]
    eta = -0.4 + 0.7 * df.x1 - 0.8 * df.x2 + re
    df["y"] = (rng.uniform(size=n) < 1 / (1 + np.exp(-eta))).astype(float)
    df["k"] = rng.poisson(np.exp(0.2 + 0.3 * df.x1 + 0.6 * re)).astype(float)
    return df


@pytest.mark.parametrize(
    "family,formula", [("binomial", "y ~ x1 + x2 + (1|g)"), ("poisson", "k ~ x1 + x2 + (1|g)")]
)
def test_dask_glmer_equals_in_memory_on_a_cluster(cluster_client, tmp_path, family, formula):
    cluster, client = cluster_client
    n, G, nparts = 60_000, 400, 6  # above GRADIENT_MIN_ROWS: the in-memory default is the same
    df = _data(n, G)
    ddf = parquet_partitions(df, tmp_path, nparts)  # the client never holds a partition

    with recorded_task_sizes(cluster) as plugin:
        fit = mixbridge.glmer(formula, ddf, family=family)
    ref = mixbridge.glmer(formula, df, family=family)
    assert ref.optimizer["stage2"]["method"] == fit.optimizer["stage2"]["method"]
    _assert_same_fit(fit, ref)

    # the model rows were built once per partition and stayed on the workers (persisted):
    # every later step is a pass over them, whose results are O(G) sums
    prepared = [k for k in plugin.sizes if "_prepare" in k]
    assert len(prepared) == nparts
    assert fit.extra["npartitions"] == nparts and fit.extra["blocks"] <= 2  # one per worker
    assert fit.extra["passes"] > 20
    passes = [v for k, v in plugin.sizes.items() if k.startswith(("_run", "add"))]
    assert len(passes) >= fit.extra["passes"] * fit.extra["blocks"]
    data_bytes = int(df.memory_usage(index=False).sum())
    o_g_bound = 8 * G * 10 + 16_384  # ≤ 8 G-vectors of sums + pickling slack
    assert max(passes) < o_g_bound < data_bytes / 4

    # fitted values and residuals: lazy, computed from the partitions when asked for
    assert isinstance(fit.fitted, dd.Series) and isinstance(fit.residuals, dd.Series)
    np.testing.assert_allclose(fit.fitted.compute().to_numpy(), ref.fitted, rtol=1e-9)
    np.testing.assert_allclose(fit.residuals.compute().to_numpy(), ref.residuals,
                               atol=1e-9)  # fmt: skip


def test_dask_glmer_weights_offset_factors_na():
    """String groups, a factor, NA rows, binomial proportions with weights, poisson with an
    offset column (sync scheduler; below 50,000 rows the in-memory fit is asked for the same
    converged criterion)."""
    rng = np.random.default_rng(11)
    n, G = 4000, 120
    g = rng.integers(0, G, n)
    df = pd.DataFrame(
        {
            "g": [f"s{j}" for j in g],
            "x1": rng.normal(size=n),
            "f": rng.choice(["lo", "mid", "hi"], n),
            "w": rng.integers(1, 6, n).astype(float),
            "o": rng.normal(0, 0.2, n),
        }
    )
    re = rng.normal(0, 0.7, G)[g]
    eta = 0.3 * df.x1 + (df.f == "mid") * 0.4 + re
    df["p"] = rng.binomial(df.w.astype(int), 1 / (1 + np.exp(-eta))) / df.w
    df["k"] = rng.poisson(np.exp(eta + df.o)).astype(float)
    df.loc[[5, 3001], "x1"] = np.nan
    ddf = dd.from_pandas(df, npartitions=5)
    cases = [
        ("p ~ x1 + f + (1|g)", "binomial", {"weights": "w"}),
        ("k ~ x1 + f + (1|g)", "poisson", {"offset": "o"}),
    ]
    with dask.config.set(scheduler="sync"):
        for formula, family, kw in cases:
            fit = mixbridge.glmer(formula, ddf, family=family, **kw)
            ref = mixbridge.glmer(formula, df, family=family, control=TIGHT, **kw)
            _assert_same_fit(fit, ref)
            assert fit.nobs == n - 2
            assert [m.code for m in fit.messages][:1] == ["na_omit"]
            np.testing.assert_allclose(fit.fitted.compute().to_numpy(), ref.fitted, rtol=1e-9)


# lme4's SEs are from deriv12: second differences (step 1e-4) of its deviance function, whose
# PIRLS stops at tolPwrss relative. At 1e-12 the function's rounding (~1e-12 x 15,000 on the
# poisson design) over the step squared moves the Hessian by O(1), the SEs by up to 3.6e-3
# relative (intercept: 0.0441195 at 1e-12 against 0.0441835 at 1e-14). At 1e-14 lme4's SEs settle
# (deriv12 at steps 1e-4, 1e-3 and 1e-2 agree to 1e-5) and ours, from central differences of the
# analytic gradient, agree with them to ~5e-6 on both families.
SE_TIGHT = {"tol_pwrss": 1e-14}


@functools.cache
def _fits(family: str):
    """(ours on Dask, lme4 at tolPwrss 1e-12, the data): lme4 on the same criterion, the
    converged Laplace deviance."""
    df = _data(5000, 150, seed=5)
    formula = _lme4_formula(family)
    with dask.config.set(scheduler="sync"):
        fit = mixbridge.glmer(formula, dd.from_pandas(df, npartitions=4), family=family)
    r = mixbridge.glmer(formula, df, family=family, engine="r", control=TIGHT)
    return fit, r, df


def _lme4_formula(family: str) -> str:
    return "y ~ x1 + x2 + (1|g)" if family == "binomial" else "k ~ x1 + x2 + (1|g)"


def _rel(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.abs(b)))


@pytest.mark.parametrize("family", ["binomial", "poisson"])
def test_dask_glmer_agrees_with_lme4(needs_r, family):
    """Live lme4 on the same rows and criterion, with test_glmer_python.py's agreement levels:
    criterion never worse than lme4's (1e-6 relative), θ and β within 1e-3 relative."""
    fit, r, _ = _fits(family)
    assert -2 * fit.loglik <= -2 * r.loglik + 1e-6 * abs(2 * r.loglik)
    assert _rel(fit.theta, r.theta) < 1e-3 and _rel(fit.fixef, r.fixef) < 1e-3
    assert fit.nobs == r.nobs and fit.ngroups == r.ngroups and fit.df == r.df


@pytest.mark.parametrize("family", ["binomial", "poisson"])
def test_dask_glmer_se_vs_lme4_settled_hessian(needs_r, family):
    """The SEs against lme4's where its finite-difference Hessian has settled (SE_TIGHT)."""
    fit, _, df = _fits(family)
    r = mixbridge.glmer(_lme4_formula(family), df, family=family, engine="r", control=SE_TIGHT)
    assert _rel(fit.fixef_se, r.fixef_se) < 1e-4


def test_dask_glmer_refuses_what_it_cannot_fit():
    df = _data(300, 10)
    ddf = dd.from_pandas(df, npartitions=2)
    with dask.config.set(scheduler="sync"):
        for kw, arg in [({"nagq": 5}, "nagq"), ({"link": "probit"}, "link"),
                        ({"control": {"tol_pwrss": 1e-7}}, "tol_pwrss")]:  # fmt: skip
            with pytest.raises(ArgumentError) as info:
                mixbridge.glmer("y ~ x1 + (1|g)", ddf, family="binomial", **kw)
            assert info.value.argument == arg
        with pytest.raises(FormulaError, match=r"single \(1 \| g\)"):
            mixbridge.glmer("y ~ x1 + (x1|g)", ddf, family="binomial")
        with pytest.raises(FormulaError, match="must be a column"):
            mixbridge.glmer("cbind(k, k) ~ x1 + (1|g)", ddf, family="binomial")
        with pytest.raises(ArgumentError, match="engine='r' cannot fit a Dask"):
            mixbridge.glmer("y ~ x1 + (1|g)", ddf, family="binomial", engine="r")
