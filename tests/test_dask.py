"""lmer on Dask DataFrames (mixbridge.python_impl.distributed): same fit as in memory, O(G)
traffic.

The reference is the in-memory Python engine on the same rows (itself checked against live lme4
in test_lmm_scalar.py and the lmer tests); the Dask path must reproduce it to 1e-10 relative.
"""

from __future__ import annotations

import dask.dataframe as dd  # the test extra installs dask: a missing one is a failure
import numpy as np
import pandas as pd
import pytest
from dask_harness import parquet_partitions, recorded_task_sizes

import mixbridge
from mixbridge.errors import ArgumentError, DataError, FormulaError

# Map-reduce vs one in-memory pass: the same sums in another order (rounding ~1e-16 per row
# sum), and θ̂ is a root of the analytic derivative, so estimates agree to ~1e-13; 1e-10 is the
# issue's requirement with room for the conditioning of X'X.
RTOL = 1e-10


def _assert_same_fit(a, b, rtol=RTOL):
    assert list(a.fixef.index) == list(b.fixef.index)
    np.testing.assert_allclose(a.fixef.to_numpy(), b.fixef.to_numpy(), rtol=rtol)
    np.testing.assert_allclose(a.vcov.to_numpy(), b.vcov.to_numpy(), rtol=rtol)
    np.testing.assert_allclose(a.theta, b.theta, rtol=rtol)
    assert a.theta_names == b.theta_names
    assert a.sigma == pytest.approx(b.sigma, rel=rtol)
    for name in ("loglik", "deviance", "aic", "bic"):
        assert getattr(a, name) == pytest.approx(getattr(b, name), rel=rtol), name
    if b.reml_criterion is not None:
        assert a.reml_criterion == pytest.approx(b.reml_criterion, rel=rtol)
    assert a.nobs == b.nobs and a.ngroups == b.ngroups and a.df == b.df
    for g, frame in b.ranef.items():
        assert list(a.ranef[g].index) == list(frame.index)
        scale = np.max(np.abs(frame.to_numpy()))
        np.testing.assert_allclose(a.ranef[g].to_numpy(), frame.to_numpy(), atol=rtol * scale)
        np.testing.assert_allclose(a.cond_var[g], b.cond_var[g], rtol=rtol)
    pd.testing.assert_frame_equal(a.varcorr, b.varcorr, rtol=rtol)
    assert a.singular == b.singular and a.converged == b.converged
    assert [m.code for m in a.messages] == [m.code for m in b.messages]


def _data(n: int, G: int, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = rng.integers(0, G, n)
    df = pd.DataFrame(
        {
            "g": g * 7 + 3,  # integer ids, not 0..G-1
            "x1": rng.normal(size=n),
            "x2": rng.uniform(size=n),
            "x3": rng.normal(5.0, 2.0, n),
        }
    )
    df["y"] = 1 + df.x1 - 2 * df.x2 + 0.3 * df.x3 + rng.normal(0, 0.6, G)[g] + rng.normal(size=n)
    return df


def test_dask_fit_equals_in_memory_and_stays_on_workers(cluster_client, tmp_path):
    cluster, client = cluster_client
    n, G, nparts = 1_000_000, 5_000, 8
    df = _data(n, G)
    # The data set lives in files that the workers read; the client never holds a partition.
    ddf = parquet_partitions(df, tmp_path, nparts)

    with recorded_task_sizes(cluster) as plugin:
        fit = mixbridge.lmer("y ~ x1 + x2 + x3 + (1|g)", ddf, reml=True)
    ref = mixbridge.lmer("y ~ x1 + x2 + x3 + (1|g)", df, reml=True, engine="python")
    _assert_same_fit(fit, ref)

    # Lazy second pass: fitted values and residuals as Dask collections.
    assert hasattr(fit.fitted, "compute") and hasattr(fit.residuals, "compute")
    fitted = fit.fitted.compute().to_numpy()
    np.testing.assert_allclose(fitted, ref.fitted, rtol=0, atol=1e-9 * np.abs(ref.fitted).max())
    resid = fit.residuals.compute().to_numpy()
    np.testing.assert_allclose(resid, ref.residuals, rtol=0, atol=1e-9 * np.abs(ref.fitted).max())

    # No task result held the whole data set: the biggest is one partition (read_parquet);
    # the map-reduce results are O(G) aggregates.
    data_bytes = int(df.memory_usage(index=False).sum())
    assert plugin.sizes, "the plugin saw no tasks"
    assert max(plugin.sizes.values()) < data_bytes / 4
    agg = {k: v for k, v in plugin.sizes.items() if "_partition_stats" in k or "_combine" in k}
    assert len(agg) >= nparts
    p = 4
    o_g_bound = 8 * G * (p + 3) + 16_384  # s, Sy, SX (G x p) + p x p pieces + pickling slack
    assert max(agg.values()) < o_g_bound
    assert fit.extra["aggregate_nbytes"] < o_g_bound


def test_dask_small_factors_weights_offset_na():
    """String groups, a factor and an interaction, NA rows, weights and offset columns (sync
    scheduler: the partition logic is the same, without cluster start-up cost)."""
    import dask

    rng = np.random.default_rng(7)
    n, G = 6000, 150
    g = rng.integers(0, G, n)
    df = pd.DataFrame(
        {
            "g": [f"s{j}" for j in g],
            "x1": rng.normal(size=n),
            "x2": rng.uniform(0.1, 1.0, n),
            "f": rng.choice(["lo", "mid", "hi"], n),
            "w": rng.uniform(0.5, 2.0, n),
            "o": rng.normal(0, 0.1, n),
        }
    )
    df["y"] = 1 + df.x1 + (df.f == "mid") * 0.5 + rng.normal(0, 0.6, G)[g] + rng.normal(size=n)
    df.loc[[3, 4000], "x1"] = np.nan
    ddf = dd.from_pandas(df, npartitions=5)
    with dask.config.set(scheduler="sync"):
        for formula, kw in [
            ("y ~ x1 * f + log(x2) + (1|g)", {}),
            ("y ~ x1 + x2 + (1|g)", {"weights": "w", "offset": "o"}),
        ]:
            for reml in (True, False):
                fit = mixbridge.lmer(formula, ddf, reml=reml, **kw)
                ref = mixbridge.lmer(formula, df, reml=reml, engine="python", **kw)
                _assert_same_fit(fit, ref)
                assert fit.nobs == n - 2
                # fitted values and residuals: lazy Dask collections over the rows used
                assert isinstance(fit.fitted, dd.Series) and isinstance(fit.residuals, dd.Series)
                scale = np.abs(ref.fitted).max()
                np.testing.assert_allclose(fit.fitted.compute().to_numpy(), ref.fitted,
                                           rtol=0, atol=1e-9 * scale)  # fmt: skip
                np.testing.assert_allclose(fit.residuals.compute().to_numpy(), ref.residuals,
                                           rtol=0, atol=1e-9 * scale)  # fmt: skip


def test_dask_rejects_other_random_structures():
    ddf = dd.from_pandas(_data(200, 10), npartitions=2)
    with pytest.raises(FormulaError, match=r"single \(1 \| g\)"):
        mixbridge.lmer("y ~ x1 + (x1|g)", ddf)
    with pytest.raises(FormulaError, match="scale"):
        mixbridge.lmer("y ~ scale(x1) + (1|g)", ddf)


# ---------------------------------------------------------------------------------------------
# The Dask path obeys engine=, control= and the in-memory input checks (issue 11, item 6)


@pytest.fixture
def small_ddf():
    import dask

    df = _data(400, 20, seed=4)
    with dask.config.set(scheduler="sync"):
        yield df, dd.from_pandas(df, npartitions=3)


@pytest.mark.parametrize("engine", ["r", "statsmodels"])
def test_dask_engine_is_obeyed(small_ddf, engine):
    """engine="r" silently ran the Python engine."""
    _, ddf = small_ddf
    with pytest.raises(ArgumentError, match=f"engine='{engine}' cannot fit a Dask") as info:
        mixbridge.lmer("y ~ x1 + (1|g)", ddf, engine=engine)
    assert info.value.argument == "engine"


def test_dask_control_is_obeyed(small_ddf):
    """control= was ignored: now cond_var applies, optimizer settings and unknown keys are
    refused by name."""
    df, ddf = small_ddf
    lean = mixbridge.lmer("y ~ x1 + (1|g)", ddf, control={"cond_var": False})
    full = mixbridge.lmer("y ~ x1 + (1|g)", ddf)
    assert lean.cond_var == {} and full.cond_var
    np.testing.assert_array_equal(lean.theta, full.theta)
    for control, key in [({"maxeval": 5}, "maxeval"), ({"start": [1.0]}, "start"),
                         ({"maxfun": 5}, "maxfun"), ({"cond_var": "no"}, "cond_var")]:  # fmt: skip
        with pytest.raises(ArgumentError) as info:
            mixbridge.lmer("y ~ x1 + (1|g)", ddf, control=control)
        assert info.value.argument == key


def test_dask_flags_are_checked(small_ddf):
    _, ddf = small_ddf
    with pytest.raises(ArgumentError, match="reml must be True or False"):
        mixbridge.lmer("y ~ x1 + (1|g)", ddf, reml="false")


def test_dask_input_checks_match_in_memory(small_ddf):
    """A constant response returned NaN estimates and zero weights returned a fit; each case
    now raises the in-memory error, with the same message."""
    df, _ = small_ddf
    n = len(df)
    w = np.ones(n)
    w[7] = 0.0
    g_tenths = np.where(df["g"] == df["g"].iloc[0], 0.1 + 0.2, 0.3 + df["g"].to_numpy())
    g_tenths[df["g"].to_numpy() == df["g"].iloc[1]] = 0.3
    cases = [
        (df.assign(y=2.5), {}, DataError, "response 'y' is constant"),
        (df.assign(w=w), {"weights": "w"}, DataError, r"1 zero weight\(s\)"),
        (df.assign(w=np.where(np.arange(n) == 9, np.inf, 1.0)), {"weights": "w"}, DataError,
         "weights must be finite"),
        (df.assign(w=np.where(np.arange(n) == 9, -1.0, 1.0)), {"weights": "w"}, DataError,
         "weights must be non-negative"),
        (df.assign(o=np.where(np.arange(n) == 300, np.inf, 0.0)), {"offset": "o"}, DataError,
         "offset has infinite values"),
        (df.assign(x1=np.where(np.arange(n) == 300, np.inf, df["x1"])), {}, DataError,
         "'x1' has infinite values"),
        (df.assign(g=g_tenths), {}, DataError, "share the level label '0.3'"),
        (df.assign(g=np.where(np.arange(n) % 2 == 0, "a\x00b", "a\x00c")), {}, DataError, "NUL"),
    ]  # fmt: skip
    for data, kw, kind, words in cases:
        with pytest.raises(kind, match=words) as in_memory:
            mixbridge.lmer("y ~ x1 + (1|g)", data, **kw)
        with pytest.raises(kind, match=words) as out_of_core:
            mixbridge.lmer("y ~ x1 + (1|g)", dd.from_pandas(data, npartitions=3), **kw)
        assert in_memory.value.column == out_of_core.value.column, words


def test_other_calls_name_the_dask_restriction(small_ddf):
    _, ddf = small_ddf
    with pytest.raises(DataError, match="a Dask DataFrame.*accepted by lmer.. and glmer"):
        mixbridge.bayesglm("y ~ x1", ddf)
