"""The blocked one-hot solver equals the dense augmented-QR solver (which matches arm to ~1e-15,
see test_bayesglm_vs_arm.py), on designs where a factor block is mixed with dense columns, a
centred intercept, zero weights and offsets; and it never forms an n x G or G x G array."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from mixbridge.errors import ArgumentError
from mixbridge.python_impl.bayesglm import fit_from_matrix
from mixbridge.python_impl.bayesglm.blocked import BlockedDesign
from mixbridge.python_impl.bayesglm.solver import make_design


def _design(rng: np.random.Generator, n: int, G: int, intercept: bool, baseline: bool):
    """[intercept] + x + one-hot(g) (first level dropped when `baseline`) + x*z."""
    g = rng.integers(0, G, n)
    x = rng.normal(size=n)
    z = rng.integers(0, 2, n).astype(float)
    onehot = np.zeros((n, G))
    onehot[np.arange(n), g] = 1.0
    if baseline:
        onehot = onehot[:, 1:]
    cols = ([np.ones(n)] if intercept else []) + [x] + list(onehot.T) + [x * z]
    X = np.column_stack(cols)
    names = (["(Intercept)"] if intercept else []) + [
        f"c{j}" for j in range(X.shape[1] - intercept)
    ]
    eta = 0.3 * x + rng.normal(size=G)[g] * 0.7
    return X, names, eta, g


def _fit(X, y, names, solver, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit_from_matrix(X, y, names, solver=solver, **kw)


@pytest.mark.parametrize(
    ("family", "intercept", "baseline", "scaled", "zero_weights", "offset"),
    [
        ("gaussian", True, True, True, False, False),
        ("gaussian", True, False, True, True, False),
        ("gaussian", False, False, False, False, True),
        ("binomial", True, True, True, True, True),
        ("poisson", True, False, True, False, True),
        ("Gamma", False, False, True, True, False),
    ],
)
def test_blocked_equals_dense(family, intercept, baseline, scaled, zero_weights, offset) -> None:
    rng = np.random.default_rng(11)
    n, G = 400, 35
    X, names, eta, _ = _design(rng, n, G, intercept, baseline)
    if family == "gaussian":
        y = 1.0 + eta + rng.normal(size=n)
    elif family == "binomial":
        y = rng.binomial(1, 1 / (1 + np.exp(-eta))).astype(float)
    elif family == "poisson":
        y = rng.poisson(np.exp(0.5 + eta)).astype(float)
    else:
        y = rng.gamma(3.0, np.exp(0.2 + 0.3 * eta) / 3.0)
    w = rng.uniform(0.5, 2.0, n)
    if zero_weights:
        w[rng.choice(n, 20, replace=False)] = 0.0
    kw = dict(
        family=family,
        link="log" if family == "Gamma" else None,
        has_intercept=intercept,
        weights=w,
        offset=rng.normal(size=n) * 0.2 if offset else None,
        scaled=scaled,
    )
    dense = _fit(X, y, names, "dense", **kw)
    blocked = _fit(X, y, names, "blocked", **kw)
    assert blocked.extra["solver"] == "BlockedDesign"
    assert dense.extra["solver"] == "DenseDesign"
    assert blocked.iterations == dense.iterations
    # 1e-11: two exact solvers of the same linear systems (QR vs block elimination with one
    # refinement step) on systems with condition numbers up to ~1e3; measured <= 1e-13.
    for field in ("coef", "se", "se_display"):
        a, b = getattr(blocked, field).to_numpy(), getattr(dense, field).to_numpy()
        assert np.max(np.abs(a - b) / np.maximum(1, np.abs(b))) <= 1e-11, field
    for field in ("dispersion", "dispersion_pearson", "deviance", "null_deviance"):
        a, b = getattr(blocked, field), getattr(dense, field)
        assert abs(a - b) <= 1e-11 * max(1.0, abs(b)), field
    np.testing.assert_allclose(blocked.vcov.to_numpy(), dense.vcov.to_numpy(), rtol=0, atol=1e-11)


def test_sparse_input_never_densified() -> None:
    """A scipy.sparse X with a 20,000-level one-hot block: the blocked design keeps only the
    dense columns; the full vcov is not formed (noted in messages), SEs are."""
    rng = np.random.default_rng(5)
    G, n = 20_000, 60_000
    g = rng.integers(0, G, n)
    x = rng.normal(size=n)
    y = 1.0 + 0.5 * x + rng.normal(size=G)[g] + rng.normal(size=n)
    X = sp.hstack(
        [
            sp.csc_matrix(np.column_stack([np.ones(n), x])),
            sp.csc_matrix((np.ones(n), (np.arange(n), g)), shape=(n, G)),
        ]
    ).tocsc()
    design = make_design(X, has_intercept=True)
    assert isinstance(design, BlockedDesign)
    assert design.XD.shape == (n, 2)
    names = ["(Intercept)", "x"] + [f"g{k}" for k in range(G)]
    fit = fit_from_matrix(
        X, y, names, has_intercept=True, prior_df=np.inf, prior_scale=1.0, scaled=False
    )
    assert fit.converged
    assert fit.vcov is None
    assert any(m.code == "vcov_omitted" for m in fit.messages)
    assert np.all(np.isfinite(fit.se)) and np.all(fit.se > 0)
    # each level's coefficient solves its ridge normal equation sum_{i in g} resid_i = phi b_g
    # (prior N(0, 1), unscaled, so no centred-intercept row couples the levels)
    b = fit.coef.to_numpy()
    resid = y - fit.fitted
    grad_g = np.bincount(g, weights=resid, minlength=G)
    prior_term = fit.dispersion * b[2:]
    # the solve used the previous iteration's phi, which differs from the reported one by less
    # than the stopping rule's 1e-8 (relative): 1e-6 bounds that slack with room
    assert np.max(np.abs(grad_g - prior_term)) < 1e-6 * max(1.0, np.abs(grad_g).max())


@pytest.mark.parametrize("solver", ["dense", "blocked"])
def test_zero_weight_rows_drop_out_of_the_dispersion(solver: str) -> None:
    """Our documented choice (arm recycles vectors there): rows with weight 0 leave the fit,
    including the dispersion EM step. Without the centred-intercept row (scaled=False) the fit
    equals the fit on the other rows alone."""
    rng = np.random.default_rng(2)
    n, G = 300, 40
    X, names, eta, _ = _design(rng, n, G, intercept=True, baseline=True)
    y = 2.0 + eta + rng.normal(size=n)
    w = np.ones(n)
    w[::7] = 0.0
    keep = w > 0
    # epsilon 1e-14: both runs go to the fixed point (their starts differ: var(y)/1e4 uses all
    # rows, as arm does), so what is compared is the fixed point, not where 1e-8 stops
    kw = dict(has_intercept=True, scaled=False, epsilon=1e-14)
    with_zeros = _fit(X, y, names, solver, weights=w, **kw)
    dropped = _fit(X[keep], y[keep], names, solver, **kw)
    assert with_zeros.converged and dropped.converged
    np.testing.assert_allclose(with_zeros.coef, dropped.coef, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(with_zeros.se, dropped.se, rtol=1e-10)
    assert abs(with_zeros.dispersion - dropped.dispersion) <= 1e-10 * dropped.dispersion
    assert with_zeros.df_residual == dropped.df_residual


@pytest.mark.parametrize("drop_baseline", [True, False])
@pytest.mark.parametrize(
    "formula",
    [
        "y ~ x + g",
        "y ~ 0 + g",
        "y ~ x*g",
        "y ~ o + x",
        "y ~ g:factor(h)",
        "y ~ 0 + x + g + g:o",
        "cbind(s, f) ~ g + offset(x)",
    ],
)
def test_sparse_terms_equal_formula_module(formula: str, drop_baseline: bool) -> None:
    """build_glm_terms(sparse=True) (used for factors with many levels) gives exactly the dense
    X, names, response and offset (NA rows dropped alike)."""
    from mixbridge.formula import build_glm_terms

    rng = np.random.default_rng(0)
    n = 200
    d = pd.DataFrame(
        {
            "x": rng.normal(size=n),
            "g": rng.choice(list("abcdefgh"), n),
            "h": rng.integers(0, 5, n),
            "y": rng.normal(size=n),
            "s": rng.integers(0, 5, n),
            "f": rng.integers(0, 5, n),
        }
    )
    d["o"] = pd.Categorical(rng.choice(["lo", "mid", "hi"], n), ["lo", "mid", "hi"], ordered=True)
    d.loc[3, "x"] = np.nan
    family = "binomial" if formula.startswith("cbind") else "gaussian"
    a = build_glm_terms(formula, d, family=family, drop_baseline=drop_baseline)
    b = build_glm_terms(formula, d, family=family, drop_baseline=drop_baseline, sparse=True)
    assert sp.issparse(b.X)
    np.testing.assert_array_equal(b.X.toarray(), a.X)
    assert b.x_names == a.x_names
    np.testing.assert_array_equal(b.y, a.y)
    np.testing.assert_array_equal(b.offset, a.offset)
    np.testing.assert_array_equal(b.weights, a.weights)
    assert list(b.row_index) == list(a.row_index)


def test_public_api_large_factor_stays_sparse() -> None:
    """y ~ x + factor(id) with 3,000 levels through mixbridge.bayesglm: sparse X, blocked
    solver, the same numbers as the engine core on an explicitly built one-hot matrix."""
    import mixbridge
    from mixbridge.python_impl.bayesglm.terms import glm_terms

    rng = np.random.default_rng(9)
    G, n = 3_000, 9_000
    ids = rng.integers(0, G, n)
    x = rng.normal(size=n)
    d = pd.DataFrame(
        {"id": ids, "x": x, "y": 0.5 * x + rng.normal(size=G)[ids] + rng.normal(size=n)}
    )
    terms = glm_terms(
        "y ~ x + factor(id)", d, family="gaussian", weights=None, offset=None, drop_baseline=True
    )
    assert sp.issparse(terms.X)
    fit = mixbridge.bayesglm("y ~ x + factor(id)", d)
    assert fit.extra["solver"] == "BlockedDesign"
    levels = np.unique(ids)  # factor() of an integer column: the values seen, numeric order
    k = len(levels)
    assert len(fit.coef) == k + 1  # intercept, x, k - 1 treatment dummies
    onehot = sp.csc_matrix((np.ones(n), (np.arange(n), np.searchsorted(levels, ids))), shape=(n, k))
    X = sp.hstack([sp.csc_matrix(np.column_stack([np.ones(n), x])), onehot[:, 1:]]).tocsc()
    ref = fit_from_matrix(X, d["y"].to_numpy(), list(fit.coef.index), has_intercept=True)
    assert fit.iterations == ref.iterations
    np.testing.assert_array_equal(fit.coef.to_numpy(), ref.coef.to_numpy())  # same arithmetic
    assert list(fit.coef.index[:3]) == ["(Intercept)", "x", f"factor(id){levels[1]}"]


def test_sparse_one_hot_detection_equals_dense() -> None:
    """make_design on a CSC matrix (dummies interleaved with dense columns, explicit zeros
    stored) finds the same block, codes and dense columns as on the ndarray, and the fits are
    the same arithmetic (equal exactly)."""
    rng = np.random.default_rng(21)
    n, G = 300, 40
    X, names, eta, _ = _design(rng, n, G, intercept=True, baseline=True)
    order = np.concatenate([[0], rng.permutation(np.arange(1, X.shape[1]))])  # intercept first
    X, names = X[:, order], [names[j] for j in order]
    # explicit zeros stored in a dummy column: stored entries that are 0 are not ones
    j = int(np.flatnonzero(np.all((X == 0) | (X == 1), axis=0))[1])
    rows = np.flatnonzero(X[:, j] == 0)[:3]
    coo = sp.coo_matrix(X)
    Xs = sp.csc_matrix(
        (np.append(coo.data, np.zeros(3)), (np.append(coo.row, rows), np.append(coo.col, [j] * 3))),
        shape=X.shape,
    )
    assert np.sum(Xs.data == 0) == 3
    dd, ds = make_design(X, True), make_design(Xs, True)
    assert isinstance(dd, BlockedDesign) and isinstance(ds, BlockedDesign)
    np.testing.assert_array_equal(ds.block_cols, dd.block_cols)
    np.testing.assert_array_equal(ds.codes, dd.codes)
    np.testing.assert_array_equal(ds.dense_cols, dd.dense_cols)
    np.testing.assert_array_equal(ds.XD, dd.XD)
    y = 1.0 + eta + rng.normal(size=n)
    a = _fit(X, y, names, "blocked", has_intercept=True)
    b = _fit(Xs, y, names, "blocked", has_intercept=True)
    np.testing.assert_array_equal(b.coef.to_numpy(), a.coef.to_numpy())
    np.testing.assert_array_equal(b.vcov.to_numpy(), a.vcov.to_numpy())


@pytest.mark.parametrize(
    "x",
    [
        [2.0, 2.0, 2.0],
        [0.0, -0.0, 0.0],
        [-0.0, 1.0, 0.0, 1.0],
        [3.0, np.nan, 5.0, 3.0],
        [np.nan, np.nan],
        [1.0, 2.0, 4.0, 2.0],
        [np.nan, 1.0, 2.0, 7.5],
    ],
)
def test_column_scale_is_arms_x_scale(x: list[float]) -> None:
    """x.scale without sorting equals arm's definition via unique(): 1 for a constant column,
    max - min for two distinct values, 2 sd otherwise (NaN dropped first)."""
    from mixbridge.python_impl.bayesglm.design import column_scale

    v = np.asarray(x)
    u = np.unique(v[~np.isnan(v)])
    if u.size <= 1:
        expected = 1.0
    elif u.size == 2:
        expected = float(u[-1] - u[0])
    else:
        expected = float(2.0 * np.std(v[~np.isnan(v)], ddof=1))
    assert column_scale(v) == expected


def test_engine_builds_terms_from_the_checked_frame() -> None:
    """The engine uses the model frame the input checks evaluated (frame=, as the API passes it)
    instead of evaluating the formula again: same numbers as its own evaluation, and the frame,
    not `data`, is what gets fitted."""
    from mixbridge.checks import check_inputs
    from mixbridge.python_impl import engine

    rng = np.random.default_rng(4)
    n, G = 300, 40
    g = rng.integers(0, G, n)
    d = pd.DataFrame({"x": rng.normal(size=n), "g": pd.Categorical(g.astype(str))})
    d["y"] = 0.5 * d["x"] + rng.normal(size=G)[g] + rng.normal(size=n)
    d2 = d.assign(y=2.0 * d["y"])
    f = "y ~ x + g"
    kw = dict(family="gaussian", link=None, weights=None, offset=None)
    own = engine.bayesglm(f, d, **kw)
    shared = engine.bayesglm(f, d, frame=check_inputs("bayesglm", f, d, **kw), **kw)
    np.testing.assert_array_equal(shared.coef.to_numpy(), own.coef.to_numpy())
    np.testing.assert_array_equal(shared.vcov.to_numpy(), own.vcov.to_numpy())
    other = engine.bayesglm(f, d, frame=check_inputs("bayesglm", f, d2, **kw), **kw)
    np.testing.assert_array_equal(other.coef.to_numpy(), engine.bayesglm(f, d2, **kw).coef)


def test_unknown_solver_is_an_argument_error() -> None:
    """An unknown `solver` names the argument (it used to run the blocked path silently)."""
    X = np.column_stack([np.ones(4), [0.0, 1.0, 2.0, 3.0]])
    with pytest.raises(ArgumentError, match="solver must be one of auto, dense, blocked") as err:
        make_design(X, True, "qr")  # type: ignore[arg-type]
    assert err.value.argument == "solver"
