"""MixedTerms / GLMTerms mechanics that need no R: NA handling, weights/offset, responses,
new-data helpers and data errors. (Agreement with R's numbers is in test_formula_vs_r.)"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixbridge.errors import ArgumentError, DataError, MixbridgeError
from mixbridge.formula import build_glm_terms, build_mixed_terms


@pytest.fixture
def df() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    n = 20
    return pd.DataFrame(
        {
            "y": rng.normal(size=n),
            "x": rng.uniform(1, 2, n),
            "g": np.tile(list("pqrs"), 5).astype(object),
            "h": np.repeat([10.0, 20.0], 10),
            "f": pd.Categorical(np.tile(["lo", "hi"], 10), categories=["lo", "hi"]),
            "s": rng.integers(0, 5, n).astype(float),
            "fl": rng.integers(0, 5, n).astype(float),
            "t": rng.uniform(1, 3, n),
        }
    )


def test_na_omit_over_all_variables_and_message(df):
    df.loc[1, "y"] = np.nan
    df.loc[2, "x"] = np.nan
    df.loc[3, "g"] = None
    w = np.ones(len(df))
    w[4] = np.nan
    off = np.zeros(len(df))
    off[5] = np.nan
    t = build_mixed_terms("y ~ x + (1 | g)", df, weights=w, offset=off)
    assert t.n == 15 and len(t.y) == len(t.weights) == len(t.offset) == t.reterms[0].codes.size
    assert list(t.row_index) == [0] + list(range(6, 20))
    na = [m for m in t.messages if m.code == "na_omit"]
    assert len(na) == 1 and na[0].kind == "message" and na[0].origin == "mixbridge"
    assert na[0].text == "5 rows with missing values dropped (na.omit)"
    np.testing.assert_array_equal(t.y, df["y"].to_numpy()[t.row_index])


def test_no_message_without_missing_values(df):
    t = build_mixed_terms("y ~ x + (1 | g)", df)
    assert t.messages == [] and t.dropped_columns == []


def test_weights_and_offset_as_columns_and_formula_offsets_add(df):
    t = build_mixed_terms("y ~ x + offset(log(t)) + (1 | g)", df, weights="t", offset="x")
    np.testing.assert_allclose(t.weights, df["t"])
    np.testing.assert_allclose(t.offset, np.log(df["t"]) + df["x"])
    assert t.x_names == ["(Intercept)", "x"]
    # offset_for (prediction) holds only the formula's offset() terms
    np.testing.assert_allclose(t.offset_for(df.iloc[:3]), np.log(df["t"].iloc[:3]))


def test_cbind_response_gives_proportion_trials_and_weights(df):
    df.loc[0, ["s", "fl"]] = 0.0  # zero trials: y = 0, as R's binomial initialize
    t = build_mixed_terms(
        "cbind(s, fl) ~ x + (1 | g)", df, weights="t", model="glmer", family="binomial"
    )
    n = df["s"] + df["fl"]
    assert t.y[0] == 0.0
    np.testing.assert_allclose(t.n_trials, n)
    np.testing.assert_allclose(t.weights, df["t"] * n)
    pos = (n > 0).to_numpy()
    np.testing.assert_allclose(t.y[pos], (df["s"] / n)[pos])
    assert (t.y[~pos] == 0.0).all()
    assert t.response_name == "cbind(s, fl)"


def test_binomial_factor_and_bool_responses(df):
    t = build_mixed_terms("f ~ x + (1 | g)", df, model="glmer", family="binomial")
    np.testing.assert_array_equal(t.y, (df["f"] == "hi").astype(float))  # level != first level
    assert t.n_trials is None
    df["b"] = df["x"] > 1.5
    t = build_glm_terms("b ~ x", df, family="binomial")
    np.testing.assert_array_equal(t.y, df["b"].astype(float))
    only_true = df[df["b"]]
    t = build_glm_terms("b ~ x", only_true, family="binomial")
    assert (t.y == 1.0).all()


def test_non_numeric_response_for_gaussian(df):
    with pytest.raises(DataError, match="response 'g' is a string column") as info:
        build_mixed_terms("g ~ x + (1 | h)", df)
    assert info.value.column == "g"


def test_newdata_helpers(df):
    t = build_mixed_terms("y ~ x + f + (1 + x | g) + (1 | h)", df)
    np.testing.assert_allclose(t.fixed_matrix(df), t.X)
    g_term = next(r for r in t.reterms if r.group == "g")
    h_term = next(r for r in t.reterms if r.group == "h")
    assert h_term.levels == ["10", "20"]  # numbers labelled like R's as.character
    new = pd.DataFrame(
        {
            "x": [1.0, 2.0, 3.0, 4.0],
            "f": ["hi", "lo", "hi", "lo"],
            "g": ["q", "zz", None, "p"],
            "h": [20.0, 10.0, 30.0, np.nan],
        }
    )
    np.testing.assert_array_equal(g_term.codes_for(new), [1, -1, -1, 0])
    np.testing.assert_array_equal(h_term.codes_for(new), [1, 0, -1, -1])
    np.testing.assert_allclose(g_term.Z_for(new), np.column_stack([np.ones(4), new["x"]]))
    np.testing.assert_allclose(
        t.fixed_matrix(new), np.column_stack([np.ones(4), new["x"], [1, 0, 1, 0]])
    )
    with pytest.raises(DataError, match="factor 'f' has new level\\(s\\) 'mid'") as info:
        t.fixed_matrix(new.assign(f=["hi", "mid", "lo", "lo"]))
    assert info.value.column == "f"


def test_double_bar_gives_separate_terms_on_one_factor(df):
    t = build_mixed_terms("y ~ x + (x || g)", df)
    assert [(r.group, r.cnames) for r in t.reterms] == [("g", ["(Intercept)"]), ("g", ["x"])]


def test_poly_with_missing_values_is_an_error_like_r(df):
    df.loc[2, "x"] = np.nan
    with pytest.raises(DataError, match="missing values are not allowed in poly") as info:
        build_mixed_terms("y ~ poly(x, 2) + (1 | g)", df)
    assert info.value.column == "x"


def test_single_level_factor_in_fixed_part(df):
    df["one"] = pd.Categorical(["a"] * len(df))
    with pytest.raises(DataError, match="factor 'one' has 1 level") as info:
        build_mixed_terms("y ~ one + (1 | g)", df)
    assert "2 or more levels" in str(info.value)
    assert info.value.column == "one"


def test_infinite_transformed_values(df):
    df.loc[4, "x"] = 0.0
    with pytest.raises(DataError, match="'log\\(x\\)' of the fixed-effects model matrix") as info:
        build_mixed_terms("y ~ log(x) + (1 | g)", df)
    assert info.value.column == "log(x)"


def test_factor_used_in_arithmetic(df):
    with pytest.raises(DataError, match="column 'g' is not numeric") as info:
        build_mixed_terms("y ~ log(g) + (1 | h)", df)
    assert info.value.column == "g"


def test_mixed_type_column(df):
    df["m"] = pd.Series([1, "a"] * 10, dtype=object)
    with pytest.raises(DataError, match="column 'm' mixes value types") as info:
        build_glm_terms("y ~ m", df)
    assert info.value.column == "m"


def test_glm_terms_keep_all_columns(df):
    df["x2"] = 2 * df["x"]
    t = build_glm_terms("y ~ x + x2", df)
    assert t.x_names == ["(Intercept)", "x", "x2"] and t.has_intercept
    t0 = build_glm_terms("y ~ 0 + f", df)
    assert t0.x_names == ["flo", "fhi"] and not t0.has_intercept


def test_newdata_type_mismatches(df):
    t = build_mixed_terms("y ~ x + f + (1 | g)", df)
    with pytest.raises(DataError, match="'f' was a factor when fitting but is numeric") as info:
        t.fixed_matrix(df.assign(f=1.0))
    assert info.value.column == "f"
    with pytest.raises(DataError, match="'x' was numeric when fitting but is a factor") as info:
        t.fixed_matrix(df.assign(x="a"))
    assert info.value.column == "x"
    # a logical where a number was fitted counts as 0/1, as in R arithmetic
    flags = df.assign(x=np.arange(len(df)) % 2 == 0)
    np.testing.assert_allclose(t.fixed_matrix(flags)[:, 1], (np.arange(len(df)) % 2 == 0) * 1.0)


def test_codes_for_interaction_and_nested_groups(df):
    t = build_mixed_terms("y ~ x + (1 | h/g)", df)
    assert [r.group for r in t.reterms] == ["g:h", "h"]
    gh = t.reterms[0]
    assert gh.levels[:3] == ["p:10", "p:20", "q:10"]  # first factor varies slowest
    new = pd.DataFrame({"g": ["q", "p", "zz", "s"], "h": [20.0, 10.0, 10.0, np.nan]})
    np.testing.assert_array_equal(gh.codes_for(new), [gh.levels.index("q:20"), 0, -1, -1])
    np.testing.assert_array_equal(gh.codes_for(df), gh.codes)


_ATOMS = ["x", "z", "f", "g", "b", "log(x)", "I(z^2)", "poly(x, 2)", "scale(z)", "factor(k)"]
_ATOMS += ["I(z > 0)", "I(!b)", "I(x >= 1 & z < 0)", "I((k == 1) * z)"]


@pytest.mark.filterwarnings("error::RuntimeWarning")
@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(0, 12),
    seed=st.integers(0, 10_000),
    na_frac=st.sampled_from([0.0, 0.2, 0.6, 1.0]),
    atoms=st.lists(st.sampled_from(_ATOMS), min_size=0, max_size=4),
    op=st.sampled_from([" + ", " * ", ":"]),
    group=st.sampled_from(["g", "f", "k", "g:f", "f/g", "b"]),
    slope=st.sampled_from(["1", "x", "0 + z", "f", "x || g", "I(z > 0)"]),
)
def test_random_inputs_give_terms_or_mixbridge_errors(n, seed, na_frac, atoms, op, group, slope):
    """Whatever the data and formula, building terms succeeds or raises a mixbridge error."""
    rng = np.random.default_rng(seed)
    data = pd.DataFrame(
        {
            "y": rng.normal(size=n),
            "x": rng.choice([0.0, 1.0, 2.0, -1.0], n),
            "z": rng.normal(size=n),
            "f": pd.Categorical(rng.choice(["a", "b", "c"], n), categories=["c", "a", "b", "d"]),
            "g": rng.choice(["u", "v"], n).astype(object),
            "b": rng.random(n) > 0.5,
            "k": rng.integers(0, 3, n).astype(float),
        }
    )
    for col in ("y", "x", "z", "k"):
        data.loc[rng.random(n) < na_frac, col] = np.nan
    rhs = op.join(atoms) if atoms else "1"
    bar = f"({slope} | {group})" if "||" not in slope else f"({slope.split(' || ')[0]} || {group})"
    formula = f"y ~ {rhs} + {bar}"
    try:
        t = build_mixed_terms(formula, data)
    except MixbridgeError:
        return
    assert t.X.shape == (t.n, len(t.x_names)) and np.isfinite(t.X).all()
    assert all(r.codes.min() >= 0 and r.Z.shape == (t.n, len(r.cnames)) for r in t.reterms)


def test_sparse_glm_terms_for_a_factor_with_many_levels():
    """build_glm_terms(sparse=True) with 30,000 levels: a CSC matrix with one entry per row and
    column for the factor, names built from the labels (no dense 30,000 x 30,000 coding matrix,
    which would need 7 GB), equal to an explicitly built one-hot matrix."""
    import scipy.sparse as sp

    rng = np.random.default_rng(1)
    G, n = 30_000, 60_000
    ids = np.concatenate([np.arange(G), rng.integers(0, G, n - G)])
    x = rng.normal(size=n)
    d = pd.DataFrame({"y": rng.normal(size=n), "x": x, "id": ids})
    terms = build_glm_terms("y ~ x + factor(id)", d, sparse=True)
    assert sp.issparse(terms.X) and terms.X.format == "csc"
    assert terms.X.shape == (n, G + 1)
    assert terms.x_names[:3] == ["(Intercept)", "x", "factor(id)1"]
    assert terms.x_names[-1] == f"factor(id){G - 1}"
    onehot = sp.csc_matrix((np.ones(n), (np.arange(n), ids)), shape=(n, G))[:, 1:]
    expected = sp.hstack([sp.csc_matrix(np.column_stack([np.ones(n), x])), onehot]).tocsc()
    assert (terms.X != expected).nnz == 0
    # arm's drop.baseline=FALSE: every level gets a column
    full = build_glm_terms("y ~ 0 + factor(id)", d, sparse=True, drop_baseline=False)
    assert full.X.shape == (n, G) and full.X.nnz == n


def test_sparse_auto_decides_by_the_levels_of_the_factors_used(df):
    """sparse="auto": sparse exactly when a factor in the model has >= sparse_min_levels levels
    (g has 4), with the same values either way."""
    import scipy.sparse as sp

    dense = build_glm_terms("y ~ x + g", df, sparse="auto", sparse_min_levels=5)
    sparse = build_glm_terms("y ~ x + g", df, sparse="auto", sparse_min_levels=4)
    assert not sp.issparse(dense.X) and sp.issparse(sparse.X)
    np.testing.assert_array_equal(sparse.X.toarray(), dense.X)
    assert sparse.x_names == dense.x_names
    assert not sp.issparse(build_glm_terms("y ~ x", df, sparse="auto", sparse_min_levels=1).X)
    with pytest.raises(ArgumentError, match="sparse"):
        build_glm_terms("y ~ x + g", df, sparse="yes")


def test_rank_keep_fast_path_agrees_with_exact_emulation():
    """The Gram-Cholesky shortcut only answers 'keep all' when no column is near dqrdc2's
    threshold; near-collinear columns go through the exact left-to-right emulation."""
    from mixbridge.formula import model_matrix as mm

    rng = np.random.default_rng(3)
    x = rng.normal(size=(500, 4))
    assert mm._clearly_full_rank(x, 1e-7)
    np.testing.assert_array_equal(mm.rank_keep(x), [0, 1, 2, 3])
    for eps, kept in [(1e-6, [0, 1, 2, 3]), (1e-9, [0, 1, 3]), (0.0, [0, 1, 3])]:
        y = x.copy()
        y[:, 2] = x[:, 0] - 2 * x[:, 1] + eps * rng.normal(size=500)  # residual fraction ~eps
        assert not mm._clearly_full_rank(y, 1e-7)
        np.testing.assert_array_equal(mm.rank_keep(y), kept)
