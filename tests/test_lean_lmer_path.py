"""The lean public lmer path (issue #7): every shortcut must give what the general code gives.

Shortcuts under test: integer ids factorized without hashing and with lazily made labels, the
input checks' frame reused by the engine, X handed over as columns (lazy_x), the Gram from dot
products (with its cancellation fallback), the scale check from the one-pass statistics, and the
read-only broadcast offset/weights/Z. The R comparisons of the same fits live in
test_lmm_scalar.py and test_lmer_vs_r.py; here the reference is our own general code path, run
on the same data, so every assertion compares two independent computations.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import mixbridge
from mixbridge.checks import check_inputs
from mixbridge.formula import build_mixed_terms
from mixbridge.formula.evaluate import (
    Numeric,
    Transforms,
    as_grouping_factor,
    evaluate_grouping,
    read_column,
)
from mixbridge.formula.levels import IntegerLevels, level_index
from mixbridge.formula.parse import Name
from mixbridge.python_impl.group_stats import group_stats, group_stats_columns
from mixbridge.python_impl.lmm_scalar import scalar_ri_fit
from mixbridge.python_impl.spec import check_scale_x


def _data(n: int = 3000, seed: int = 3, ids: np.ndarray | None = None) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = rng.integers(0, 150, n) * 7 - 300 if ids is None else ids  # sparse, negative ids
    x1, x2 = rng.normal(size=n), rng.normal(2.0, 3.0, n)
    b = rng.normal(0, 0.6, 2000)[np.abs(g) % 2000]
    y = 1 + 0.5 * x1 - 0.2 * x2 + b + rng.normal(size=n)
    return pd.DataFrame({"y": y, "x1": x1, "x2": x2, "g": g.astype(np.int32)})


@pytest.mark.parametrize("kind", ["sparse-negative", "dense-0-based", "int64-offset"])
def test_integer_ids_give_the_same_factor_as_factor_of_numbers(kind):
    rng = np.random.default_rng(1)
    if kind == "sparse-negative":
        ids = rng.integers(-50, 50, 500) * 3
    elif kind == "dense-0-based":
        ids = rng.permutation(np.arange(500) % 40)
    else:
        ids = (rng.integers(0, 60, 500) + 10**9).astype(np.int64)
    df = pd.DataFrame({"g": ids})
    fast = evaluate_grouping(Name("g"), df, Transforms())
    generic = as_grouping_factor(read_column(df, "g"))  # factor() of the numbers
    assert isinstance(fast.levels, IntegerLevels)
    assert list(fast.levels) == list(generic.levels)
    np.testing.assert_array_equal(fast.codes, generic.codes)
    assert level_index(fast.levels).equals(pd.Index(list(generic.levels)))


def test_nullable_and_float_ids_take_the_generic_path():
    df = pd.DataFrame({"g": pd.array([3, None, 1, 3], dtype="Int64"), "h": [2.0, 1.0, 2.0, 1.0]})
    g = evaluate_grouping(Name("g"), df, Transforms())
    assert isinstance(g, Numeric) and np.isnan(g.values[1])  # NA kept for na.omit
    h = evaluate_grouping(Name("h"), df, Transforms())
    assert isinstance(h, Numeric)  # a double column: factor() labels come from R's formatting


def test_integer_levels_read_like_a_list():
    lv = IntegerLevels(np.array([-3, 0, 12]))
    assert len(lv) == 3 and lv[0] == "-3" and lv[-1] == "12" and lv[1:] == ["0", "12"]
    assert list(lv) == ["-3", "0", "12"] and lv == ["-3", "0", "12"]
    assert lv + ["x"] == ["-3", "0", "12", "x"]
    assert "0" in lv


def _fits(df: pd.DataFrame, formula: str, **kw):
    """The public call, and the general path: eager X, no frame reuse, strings for ids."""
    lean = mixbridge.lmer(formula, df, **kw)
    slow_df = df.assign(g=df["g"].astype(str))
    terms = build_mixed_terms(formula, slow_df, weights=kw.get("weights"))
    assert terms.x_built and terms.x_columns is None
    from mixbridge.python_impl.lmer import fit_terms

    general = fit_terms(terms, formula=formula, reml=kw.get("reml", True))
    return lean, general


@pytest.mark.parametrize("reml", [True, False])
def test_lean_fit_equals_the_general_terms_path(reml):
    df = _data()
    lean, general = _fits(df, "y ~ x1 + x2 + (1 | g)", reml=reml)
    assert lean.criterion == pytest.approx(general.criterion, rel=1e-12, abs=1e-9)
    np.testing.assert_allclose(lean.theta, general.theta, rtol=1e-8)
    np.testing.assert_allclose(lean.fixef.to_numpy(), general.fixef.to_numpy(), rtol=1e-8)
    r_lean = lean.ranef["g"]
    r_gen = general.ranef["g"].loc[r_lean.index]  # string ids sort differently
    np.testing.assert_allclose(r_lean.to_numpy(), r_gen.to_numpy(), rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(lean.fitted, general.fitted, rtol=1e-10)
    np.testing.assert_allclose(lean.residuals, general.residuals, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(lean.predict(), general.predict(), rtol=1e-10)
    np.testing.assert_allclose(lean.predict(df.head(7)), general.predict(df.head(7)), rtol=1e-10)
    sim = lean.simulate(nsim=2, seed=1)
    assert sim.shape == (len(df), 2) and np.all(np.isfinite(sim))


def test_lazy_columns_and_the_matrix_agree():
    df = _data()
    frame = check_inputs("lmer", "y ~ x1 + x2 + (1 | g)", df)
    lazy = build_mixed_terms("y ~ x1 + x2 + (1 | g)", df, frame=frame, lazy_x=True)
    eager = build_mixed_terms("y ~ x1 + x2 + (1 | g)", df)
    assert not lazy.x_built and lazy.x_columns[0] is None
    beta = np.array([0.3, -1.2, 2.5])
    np.testing.assert_allclose(lazy.x_times(beta), eager.X @ beta, rtol=1e-14)
    assert not lazy.x_built  # Xβ from the columns
    np.testing.assert_array_equal(lazy.X, eager.X)  # X is assembled when read, never None
    assert lazy.x_built
    assert lazy.x_names == eager.x_names and lazy.n == eager.n and lazy.p == eager.p


def test_gram_reuses_the_finiteness_sums_and_equals_x_transpose_x():
    # the intercept row of X'X takes each column's sum from the finiteness pass (one read of
    # the column fewer); it must be the very sum a fresh pass gives, and X'X itself
    df = _data()
    frame = check_inputs("lmer", "y ~ x1 + x2 + (1 | g)", df)
    lazy = build_mixed_terms("y ~ x1 + x2 + (1 | g)", df, frame=frame, lazy_x=True)
    totals = [float(np.sum(df[c].to_numpy(dtype=float))) for c in ("x1", "x2")]
    assert lazy.x_gram[0, 1:].tolist() == totals
    x = build_mixed_terms("y ~ x1 + x2 + (1 | g)", df).X
    np.testing.assert_allclose(lazy.x_gram, x.T @ x, rtol=1e-13)
    # a column with a missing value is refound after na.omit: its sum is taken afresh
    holed = df.assign(x1=df["x1"].where(df.index != 3))
    frame = check_inputs("lmer", "y ~ x1 + x2 + (1 | g)", holed)
    lazy = build_mixed_terms("y ~ x1 + x2 + (1 | g)", holed, frame=frame, lazy_x=True)
    kept = holed["x1"].dropna().to_numpy()
    assert lazy.x_gram[0, 1] == float(np.sum(kept)) and lazy.x_gram[0, 0] == kept.size


def test_rank_deficient_columns_fall_back_to_the_exact_emulation():
    df = _data().assign(x3=lambda d: 2.0 * d["x1"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = mixbridge.lmer("y ~ x1 + x3 + x2 + (1 | g)", df)
    assert fit.dropped_columns == ["x3"]
    assert list(fit.fixef.index) == ["(Intercept)", "x1", "x2"]


def test_infinite_values_in_a_column_are_named():
    df = _data().assign(x2=lambda d: np.log(d["x2"].clip(lower=0)))
    with pytest.raises(mixbridge.errors.DataError, match="x2"):
        mixbridge.lmer("y ~ x1 + x2 + (1 | g)", df)


def test_scale_check_from_columns_matches_the_matrix_check():
    rng = np.random.default_rng(2)
    n = 5000
    big = rng.normal(size=n) * 1e-5 + 1e6  # sd 1e-5: flagged by lme4's checkScaleX
    binary = rng.integers(0, 2, n).astype(float)
    for cols in ([None, rng.normal(size=n), binary], [None, big, binary]):
        x = np.column_stack([np.ones(n) if c is None else c for c in cols])
        var = np.var(x, axis=0, ddof=1)
        a = check_scale_x(x)
        b = check_scale_x(cols, variances=var)
        assert (a is None) == (b is None)
    ones = np.ones(n)
    assert check_scale_x([None, big, binary], variances=np.var(np.c_[ones, big, binary], 0, ddof=1))


def test_scale_check_from_means_and_variances_reads_only_what_it_must():
    """With the columns' means (issue 15): a column whose mean and variance rule out values in
    [0, 1] is not read; the verdict is the matrix check's for 0/1, [0, 1], tiny-sd and mixed
    columns, including a [0, 1] column with a tiny sd (which must be read to tell)."""
    rng = np.random.default_rng(5)
    n = 4000
    cases = [
        [None, rng.normal(size=n), rng.integers(0, 2, n).astype(float)],
        [None, rng.uniform(size=n), rng.normal(0, 1e4, n)],
        [None, 0.5 + rng.normal(0, 1e-5, n), rng.normal(size=n)],  # inside [0, 1], tiny sd
        [None, rng.normal(size=n) * 1e-5 + 1e6, rng.integers(0, 2, n).astype(float)],
        [None, np.where(rng.uniform(size=n) < 0.5, 0.0, 1.0), rng.uniform(size=n) * 1e-6],
    ]
    for cols in cases:
        x = np.column_stack([np.ones(n) if c is None else c for c in cols])
        var, mean = np.var(x, axis=0, ddof=1), x.mean(axis=0)
        a = check_scale_x(x)
        b = check_scale_x(cols, variances=var, means=mean)
        assert (a is None) == (b is None), cols


def test_og_fit_defers_its_per_row_and_per_level_fields():
    """The O(G) path builds nothing per row or per level up front (issue 15): fitted,
    residuals and the ranef frames are computed when first read, equal to Xβ + b[g] and y − that."""
    df = _data()
    fit = mixbridge.lmer("y ~ x1 + x2 + (1 | g)", df)
    assert set(fit.deferred_fields()) == {"ranef", "fitted", "residuals"}
    beta = fit.fixef.to_numpy()
    b = fit.ranef["g"]["(Intercept)"]
    expect = beta[0] + beta[1] * df["x1"] + beta[2] * df["x2"]
    expect += b.loc[df["g"].astype(str)].to_numpy()
    np.testing.assert_allclose(fit.residuals, df["y"] - expect, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fit.fitted, expect, rtol=1e-12)
    assert fit.deferred_fields() == ()


def test_gram_from_dot_products_and_its_fallback_agree_with_the_blocked_pass():
    rng = np.random.default_rng(5)
    n, G = 20_000, 300
    g = rng.integers(0, G, n)
    x = rng.normal(size=n)
    # 50: within the dot-product path's limit (mean²/var 2500); 1e9: far beyond it
    for shift in (0.0, 50.0, 1e9):
        xs = x + shift
        y = 0.5 * x + rng.normal(size=n)
        cols = group_stats_columns([xs], y, None, g, G)
        X = np.column_stack([np.ones(n), xs])  # row-major: the blocked, shifted pass
        blocked = group_stats(X, y, None, g, G)
        fa, fb = scalar_ri_fit(cols, True), scalar_ri_fit(blocked, True)
        assert fa.criterion == pytest.approx(fb.criterion, rel=1e-12)
        np.testing.assert_allclose(fa.beta, fb.beta, rtol=1e-9)
        np.testing.assert_allclose(fa.b, fb.b, rtol=1e-8, atol=1e-12)


def test_unit_weights_and_zero_offset_are_the_unweighted_fit():
    df = _data().assign(w=1.0, o=0.0)
    plain = mixbridge.lmer("y ~ x1 + x2 + (1 | g)", df)
    given = mixbridge.lmer("y ~ x1 + x2 + (1 | g)", df, weights="w", offset="o")
    assert given.criterion == pytest.approx(plain.criterion, rel=1e-13)
    np.testing.assert_allclose(given.fixef.to_numpy(), plain.fixef.to_numpy(), rtol=1e-12)


def test_engines_fit_the_frame_handed_over_by_the_input_checks():
    """The API evaluates the formula once: the Python engine fits the checked frame (data=None
    proves it is not re-read) and gets what its own evaluation gives."""
    from mixbridge.python_impl import engine

    df = _data().assign(yb=lambda d: (d["y"] > d["y"].median()).astype(float))
    f = "y ~ x1 + x2 + (1 | g)"
    frame = check_inputs("lmer", f, df)
    kw = dict(reml=True, weights=None, offset=None, control={})
    a = engine.lmer(f, None, frame=frame, **kw)
    b = engine.lmer(f, df, **kw)
    assert a.criterion == b.criterion and a.fixef.equals(b.fixef)
    fb = "yb ~ x1 + (1 | g)"
    frame = check_inputs("glmer", fb, df, family="binomial")
    kw = dict(family="binomial", link=None, nagq=1, weights=None, offset=None, control={})
    a = engine.glmer(fb, None, frame=frame, **kw)
    b = engine.glmer(fb, df, **kw)
    assert a.criterion == pytest.approx(b.criterion, rel=1e-14) and np.allclose(a.theta, b.theta)


def test_control_keeps_the_og_path_unless_it_needs_the_optimizer():
    """control= keys the O(G) path honours (cond_var, calc_derivs, restart_edge, boundary_tol)
    keep it; a start or an evaluation limit belongs to the general optimizer (any control= used
    to switch the O(G) path off)."""
    df = _data()
    f = "y ~ x1 + x2 + (1 | g)"
    base = mixbridge.lmer(f, df)
    assert base.optimizer["name"] == "scalar-ri-brent"
    kept = [{"cond_var": False}, {"calc_derivs": False}, {"restart_edge": False},
            {"boundary_tol": 1e-5}, {"calc_derivs": True, "cond_var": True}]  # fmt: skip
    for control in kept:
        fit = mixbridge.lmer(f, df, control=control)
        assert fit.optimizer["name"] == "scalar-ri-brent", control
        assert fit.criterion == base.criterion and fit.fixef.equals(base.fixef), control
    assert mixbridge.lmer(f, df, control={"cond_var": False}).cond_var == {}
    for control in ({"start": [0.5]}, {"maxeval": 1000}, {"start": [0.5], "cond_var": False}):
        fit = mixbridge.lmer(f, df, control=control)
        assert fit.optimizer["name"] == "L-BFGS-B", control
        # the same optimum by the other route (both converge tightly on a smooth criterion)
        assert fit.criterion == pytest.approx(base.criterion, rel=1e-10)
