"""The O(G) `(1|g)` path (mixbridge.python_impl.lmm_scalar) against lme4, run live.

R is reached through the bridge (`mixbridge.lmer(..., engine="r")` and lme4's own deviance
function via `mixbridge.lmer_objective(..., engine="r")`), once per module for all cases.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import mixbridge
from mixbridge.python_impl.checkconv import SINGULAR_TEXT
from mixbridge.python_impl.group_stats import GroupStats, group_stats, group_stats_columns
from mixbridge.python_impl.lmm_scalar import scalar_ri_criterion, scalar_ri_fit, scalar_ri_fitted

THETAS = [0.0, 0.05, 0.3, 1.0, 4.0]

# name -> (R data set or "generated", response, fixed-effect columns, group, weights?, offset?)
CASES = {
    "Dyestuff": ("Dyestuff", "Yield", [], "Batch", False, False),
    "Dyestuff2": ("Dyestuff2", "Yield", [], "Batch", False, False),
    "sleepstudy": ("sleepstudy", "Reaction", ["Days"], "Subject", False, False),
    "weighted": ("generated", "y", ["x1", "x2"], "g", True, True),
    # x2 = a calendar year: a large mean stresses the centring of the one-pass sums.
    "year": ("generated", "y", ["x1", "year"], "g", False, False),
}


def _make_data(name: str) -> pd.DataFrame:
    rng = np.random.default_rng(20261122 if name == "weighted" else 7)
    G = 40
    sizes = rng.integers(2, 25, G)  # unbalanced groups
    g = np.repeat(np.arange(G), sizes)
    n = g.shape[0]
    b = rng.normal(0.0, 0.8, G)
    x1 = rng.normal(size=n)
    d = {"g": [f"L{j:02d}" for j in g], "x1": x1}
    if name == "weighted":
        d["x2"] = rng.uniform(-2, 2, n)
        d["w"] = rng.uniform(0.2, 3.0, n)
        d["o"] = rng.normal(0.0, 0.5, n)
        d["y"] = 1 + 0.5 * x1 - d["x2"] + b[g] + d["o"] + rng.normal(size=n) / np.sqrt(d["w"])
    else:
        d["year"] = rng.integers(1990, 2021, n).astype(float)
        d["y"] = 3 + x1 + 0.02 * (d["year"] - 2000) + b[g] + rng.normal(size=n)
    return pd.DataFrame(d)


def _formula(case: str) -> tuple[str, dict]:
    _, y, xs, g, w, o = CASES[case]
    rhs = " + ".join(xs) if xs else "1"
    kw = {}
    if w:
        kw["weights"] = "w"
    if o:
        kw["offset"] = "o"
    return f"{y} ~ {rhs} + (1|{g})", kw


@pytest.fixture(scope="module")
def r_ref(r_dataset):
    """lme4 on every case through the bridge: {case: (data, {"reml"|"ml": results})}."""
    out = {}
    for nm, (src, _, _, g, _, _) in CASES.items():
        data = _make_data(nm) if src == "generated" else r_dataset(src)
        formula, kw = _formula(nm)
        res = {}
        for method in ("reml", "ml"):
            reml = method == "reml"
            fit = mixbridge.lmer(formula, data, reml=reml, engine="r", **kw)
            thetas = THETAS + [float(fit.theta[0])]
            devfun = [
                mixbridge.lmer_objective(formula, data, [t], reml=reml, engine="r", **kw)
                for t in thetas
            ]
            vc = fit.varcorr
            res[method] = {
                "devfun": devfun[:-1],
                "devfun_hat": devfun[-1],
                "theta": float(fit.theta[0]),
                "fixef": fit.fixef.to_numpy(),
                "se": fit.fixef_se.to_numpy(),
                "sigma": fit.sigma,
                "ranef": fit.ranef[g].iloc[:, 0].to_numpy(),
                "levels": list(fit.ranef[g].index),
                "cond_var": np.asarray(fit.cond_var[g]).ravel(),
                "tau": float(vc.loc[vc["grp"] == g, "sdcor"].iloc[0]),
                "crit": fit.criterion,
                "singular": fit.singular,
            }
        out[nm] = (data, res)
    return out


def _stats(case: str, data: pd.DataFrame):
    _, y, xs, g, w, o = CASES[case]
    X = np.column_stack([np.ones(len(data))] + [data[x].to_numpy(float) for x in xs])
    # R's level order: a factor's own levels (pandas Categorical from R), else sorted labels.
    col = data[g]
    if isinstance(col.dtype, pd.CategoricalDtype):
        levels, codes = np.asarray(col.cat.categories.astype(str)), col.cat.codes.to_numpy()
    else:
        levels, codes = np.unique(col.astype(str).to_numpy(), return_inverse=True)
    yy = data[y].to_numpy(float)
    if o:
        yy = yy - data["o"].to_numpy(float)
    weights = data["w"].to_numpy(float) if w else None
    return X, yy, weights, codes, levels, group_stats(X, yy, weights, codes, len(levels))


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("method", ["reml", "ml"])
def test_criterion_equals_lme4_devfun(r_ref, case, method):
    data, ref = r_ref[case]
    *_, stats = _stats(case, data)
    ref = ref[method]
    thetas = THETAS + [ref["theta"]]
    for theta, r_value in zip(thetas, ref["devfun"] + [ref["devfun_hat"]], strict=True):
        ours = scalar_ri_criterion(theta, stats, reml=method == "reml")
        # 1e-10 relative: the same arithmetic in a different order (lme4_spec §2 verified 1e-12).
        assert ours == pytest.approx(r_value, rel=1e-10), (case, method, theta)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("method", ["reml", "ml"])
def test_estimates_match_lme4(r_ref, case, method):
    data, ref = r_ref[case]
    X, y, w, codes, levels, stats = _stats(case, data)
    ref = ref[method]
    fit = scalar_ri_fit(stats, reml=method == "reml")
    assert fit.converged
    # Our 1-D search is exact to ~1e-9 in θ; lme4's BOBYQA stops at xtol_abs 1e-8, and the
    # criterion is flat at the optimum, so its θ is good to about 1e-6 relative (spec §5).
    assert fit.theta == pytest.approx(ref["theta"], rel=1e-5, abs=1e-7)
    # Never worse than lme4 at its own optimum (1e-6 relative slack for R's rounding of θ).
    assert fit.criterion <= ref["crit"] + 1e-6 * abs(ref["crit"])
    assert fit.criterion == pytest.approx(ref["crit"], rel=1e-7)
    se = np.asarray(ref["se"])
    beta_r = np.asarray(ref["fixef"])
    # β: 1e-5 relative or 1e-4 standard errors, whichever is looser (β moves with θ at the
    # optimizer's tolerance).
    assert np.all(np.abs(fit.beta - beta_r) <= np.maximum(1e-5 * np.abs(beta_r), 1e-4 * se))
    se_ours = fit.sigma * np.sqrt(np.diag(fit.vcov_unscaled))
    np.testing.assert_allclose(se_ours, se, rtol=1e-4)
    assert fit.sigma == pytest.approx(ref["sigma"], rel=1e-5)
    assert list(levels) == [str(v) for v in ref["levels"]]
    tau = max(ref["tau"], 1e-8)
    # ranef and condVar: 1e-4 of the random-intercept SD (τ), same reasoning as θ.
    np.testing.assert_allclose(fit.b, ref["ranef"], rtol=0, atol=1e-4 * tau)
    np.testing.assert_allclose(fit.cond_var, ref["cond_var"], rtol=0, atol=1e-4 * tau**2)
    assert fit.singular == bool(ref["singular"])
    fitted = scalar_ri_fitted(X, codes, fit)
    assert fitted.shape == y.shape


def test_singular_fit_is_flagged_like_lme4(r_ref):
    data, ref = r_ref["Dyestuff2"]
    *_, stats = _stats("Dyestuff2", data)
    fit = scalar_ri_fit(stats, reml=True)
    assert ref["reml"]["singular"] and ref["reml"]["theta"] == 0.0
    assert fit.theta == 0.0 and fit.singular
    assert [(m.kind, m.code, m.text) for m in fit.messages] == [
        ("message", "singular", SINGULAR_TEXT)
    ]
    np.testing.assert_array_equal(fit.b, 0.0)


# ---------------------------------------------------------------------------------------------
# Properties that need no R


def _random_problem(seed: int, n: int = 600, G: int = 30, weights: bool = True):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, G, n)
    X = np.column_stack([np.ones(n), rng.normal(size=n), rng.uniform(100, 101, n)])
    y = X @ [1.0, -2.0, 0.5] + rng.normal(0, 0.7, G)[codes] + rng.normal(size=n)
    w = rng.uniform(0.5, 2.0, n) if weights else None
    return X, y, w, codes, G


def _dense_criterion(theta, X, y, w, codes, G, reml):
    """lme4_spec §1.3–1.4 with dense matrices: an independent transcription for checking."""
    n, p = X.shape
    w = np.ones(n) if w is None else w
    Z = np.zeros((n, G))
    Z[np.arange(n), codes] = 1.0
    sw = np.sqrt(w)
    ZL = theta * Z * sw[:, None]
    Xw, yw = X * sw[:, None], y * sw
    L = np.linalg.cholesky(ZL.T @ ZL + np.eye(G))
    RZX = np.linalg.solve(L, ZL.T @ Xw)
    cu = np.linalg.solve(L, ZL.T @ yw)
    RX = np.linalg.cholesky(Xw.T @ Xw - RZX.T @ RZX).T
    cb = np.linalg.solve(RX.T, Xw.T @ yw - RZX.T @ cu)
    pwrss = yw @ yw - cu @ cu - cb @ cb
    ldL2 = 2 * np.sum(np.log(np.diag(L)))
    ldW = np.sum(np.log(w))
    if reml:
        ldRX2 = 2 * np.sum(np.log(np.abs(np.diag(RX))))
        return ldL2 + ldRX2 - ldW + (n - p) * (1 + math.log(2 * math.pi * pwrss / (n - p)))
    return ldL2 - ldW + n * (1 + math.log(2 * math.pi * pwrss / n))


@pytest.mark.parametrize("weights", [True, False])
@pytest.mark.parametrize("reml", [True, False])
def test_criterion_matches_dense_pls(weights, reml):
    X, y, w, codes, G = _random_problem(3, weights=weights)
    stats = group_stats(X, y, w, codes, G)
    for theta in (0.0, 0.2, 1.3, 25.0):
        dense = _dense_criterion(theta, X, y, w, codes, G, reml)
        # 1e-10: both are exact reformulations; the dense one loses a few digits in X'WX.
        assert scalar_ri_criterion(theta, stats, reml) == pytest.approx(dense, rel=1e-10)


def test_group_stats_add_over_chunks():
    X, y, w, codes, G = _random_problem(5)
    whole = group_stats(X, y, w, codes, G)
    shift = (whole.x_shift, whole.y_shift)
    parts = [
        group_stats(X[a:b], y[a:b], w[a:b], codes[a:b], G, shift=shift, intercept=0)
        for a, b in [(0, 100), (100, 333), (333, 600)]
    ]
    total = parts[0] + parts[1] + parts[2]
    assert isinstance(total, GroupStats) and total.n == whole.n
    for field in ("s", "Sy", "SX", "XtX", "Xty"):
        np.testing.assert_allclose(getattr(total, field), getattr(whole, field), rtol=1e-12)
    assert total.yty == pytest.approx(whole.yty, rel=1e-12)
    assert total.ldW == pytest.approx(whole.ldW, rel=1e-12)
    f1, f2 = scalar_ri_fit(whole, True), scalar_ri_fit(total, True)
    # θ̂ is a root of the analytic derivative, so chunked sums (rounding ~1e-16) move it by
    # ~1e-14 at most; 1e-11 leaves room for the conditioning of the root.
    assert f2.theta == pytest.approx(f1.theta, rel=1e-11)
    np.testing.assert_allclose(f2.beta, f1.beta, rtol=1e-11)
    np.testing.assert_allclose(f2.b, f1.b, rtol=0, atol=1e-11 * np.max(np.abs(f1.b)))
    with pytest.raises(ValueError, match="shifts"):
        _ = parts[0] + group_stats(X, y, w, codes, G, shift=(shift[0] + 1, shift[1]))


def test_shift_does_not_change_estimates():
    X, y, w, codes, G = _random_problem(11)
    centred = scalar_ri_fit(group_stats(X, y, w, codes, G), reml=False)
    raw = scalar_ri_fit(group_stats(X, y, w, codes, G, shift=(np.zeros(3), 0.0)), reml=False)
    assert centred.criterion == pytest.approx(raw.criterion, rel=1e-10)
    # X[:,2] has mean 100.5 and sd 0.29: uncentred sums lose ~5 digits, hence 1e-6 here.
    np.testing.assert_allclose(centred.beta, raw.beta, rtol=1e-6)
    np.testing.assert_allclose(centred.vcov_unscaled, raw.vcov_unscaled, rtol=1e-5)


@pytest.mark.parametrize("weights", [True, False])
def test_group_stats_columns_equals_matrix_version(weights):
    X, y, w, codes, G = _random_problem(13, weights=weights)
    ref = group_stats(X, y, w, codes, G)
    cols = group_stats_columns(
        [X[:, 1].copy(), X[:, 2].copy()], y, w, codes, G, shift=(ref.x_shift, ref.y_shift)
    )
    # Unit weights: group sums are shifted after summing (not before), hence 1e-12 not 1e-13.
    for field in ("s", "Sy", "SX", "XtX", "Xty", "x_shift"):
        np.testing.assert_allclose(
            getattr(cols, field), getattr(ref, field), rtol=1e-12, atol=1e-12
        )
    fa, fb = scalar_ri_fit(ref, reml=True), scalar_ri_fit(cols, reml=True)
    assert fb.theta == pytest.approx(fa.theta, rel=1e-11)
    np.testing.assert_allclose(fb.beta, fa.beta, rtol=1e-11)


# Found by profiling (mixbridge.inference) and a search over small random designs: the REML
# criterion has a local minimum at θ = 0 (254.175) and a lower one inside (253.719 at θ ≈ 1.25)
# that falls between two points of the search's log grid, where both grid values exceed the
# value at 0.
_BASIN_SIZES = [1, 10, 11, 8, 10, 10, 4, 1, 3, 5, 4, 1, 5]
_BASIN_Y = [
    -9.435,
    -0.909,
    -2.709,
    -1.749,
    -0.949,
    -0.449,
    -0.918,
    -0.354,
    -1.759,
    -1.693,
    -3.166,
    -0.736,
    -1.26,
    -3.645,
    0.729,
    -2.53,
    -2.829,
    -3.513,
    -1.94,
    -3.006,
    -4.202,
    -1.318,
    -2.74,
    -1.145,
    -2.65,
    -1.227,
    -0.249,
    -1.746,
    -0.672,
    -2.805,
    -1.281,
    0.151,
    -1.592,
    -4.51,
    -2.082,
    -2.607,
    -1.692,
    -0.967,
    -1.518,
    -3.759,
    -1.906,
    -2.499,
    -1.107,
    -2.386,
    -1.558,
    -1.218,
    -3.466,
    -1.877,
    -2.151,
    -3.295,
    -2.866,
    -2.078,
    -2.908,
    -1.495,
    -2.087,
    -0.649,
    -2.877,
    -2.364,
    -3.286,
    -1.897,
    -0.003,
    -3.086,
    -1.593,
    -1.199,
    -2.785,
    -3.791,
    -1.274,
    -0.904,
    -2.104,
    -3.533,
    -2.464,
    -4.292,
    0.393,
]
_BASIN_X1 = [
    -0.052,
    0.637,
    -0.009,
    0.443,
    -0.512,
    2.43,
    -0.058,
    -0.564,
    -0.242,
    -1.307,
    -0.928,
    0.085,
    -1.179,
    -0.542,
    1.201,
    1.234,
    0.254,
    -1.208,
    -0.178,
    -1.12,
    -1.348,
    0.459,
    -0.264,
    -0.691,
    0.193,
    0.46,
    0.665,
    3.699,
    0.865,
    0.401,
    1.636,
    -0.48,
    0.369,
    -0.29,
    0.28,
    -1.068,
    0.391,
    -0.545,
    1.549,
    -2.483,
    -1.548,
    0.883,
    0.073,
    1.541,
    0.434,
    -1.324,
    -0.592,
    -1.522,
    -0.052,
    -0.048,
    -0.201,
    0.732,
    -1.011,
    -0.347,
    -0.137,
    -0.441,
    -0.995,
    -0.083,
    0.311,
    -0.445,
    1.05,
    -0.212,
    -0.354,
    0.146,
    -0.335,
    0.547,
    1.648,
    1.358,
    0.175,
    -1.482,
    1.003,
    -2.004,
    1.737,
]


def test_interior_basin_between_grid_points(needs_r):
    codes = np.repeat(np.arange(len(_BASIN_SIZES)), _BASIN_SIZES)
    data = pd.DataFrame({"y": _BASIN_Y, "x1": _BASIN_X1, "g": [f"g{c}" for c in codes]})
    ours = mixbridge.lmer("y ~ x1 + (1 | g)", data)
    ref = mixbridge.lmer("y ~ x1 + (1 | g)", data, engine="r")
    assert ours.reml_criterion <= ref.reml_criterion + 1e-6 * abs(ref.reml_criterion)
    assert ours.theta[0] > 0.5  # the interior optimum, not the boundary one
