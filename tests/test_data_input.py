"""Data in: polars (eager and lazy), pyarrow Tables and narwhals frames give exactly the fits of
the same data as pandas, on both engines, with factor levels in the order the source declares
(checked in R), nulls as NA, and numeric columns passed without a copy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fit_equality import assert_same_fit

import mixbridge
from mixbridge.data_input import as_pandas, as_vector, model_data
from mixbridge.errors import DataError

pl = pytest.importorskip("polars")
pa = pytest.importorskip("pyarrow")
nw = pytest.importorskip("narwhals")

ENUM_LEVELS = ["lo", "mid", "hi"]  # not sorted: "hi" < "lo" < "mid"
DICT_LEVELS = ["zeta", "alpha", "mu"]  # not sorted either


@pytest.fixture(scope="module")
def frames() -> dict[str, object]:
    """One data set as pandas and as polars / pyarrow, with nulls and declared level orders."""
    rng = np.random.default_rng(7)
    n, groups = 240, 12
    g = rng.integers(0, groups, n)
    x = rng.normal(size=n)
    f, h, sc, ic = (rng.integers(0, 3, n) for _ in range(4))
    u = rng.normal(0, 0.8, groups)
    y = 1 + 0.5 * x + 0.3 * f - 0.2 * h + u[g] + rng.normal(size=n)
    k = (rng.uniform(size=n) < 1 / (1 + np.exp(-(x + u[g])))).astype(np.int64)
    w = rng.uniform(0.5, 2.0, n)
    labels = np.array([f"grp{j:02d}" for j in range(groups)])
    # polars' Categorical physical order is the order strings are first seen: start with a
    # label that sorts last, so physical and lexical order differ
    order = np.argsort(-g, kind="stable")
    g_lab = labels[g]
    x_null = [None if i % 37 == 5 else float(v) for i, v in enumerate(x)]
    s_null = [None if i % 41 == 3 else str(v) for i, v in enumerate(np.array(["b", "A", "c"])[sc])]
    i_null = [None if i % 53 == 7 else int(v) for i, v in enumerate(ic)]
    b_null = [None if i % 29 == 11 else bool(v) for i, v in enumerate(x > 0)]
    enum_vals = np.array(ENUM_LEVELS)[f]
    dict_vals = np.array(DICT_LEVELS)[h]

    pdf = pd.DataFrame(
        {
            "y": y,
            "x": pd.array(x_null, dtype="float64"),
            "s": pd.Series(s_null, dtype=object),
            "i": pd.array(i_null, dtype="Int64"),
            "b": pd.array(b_null, dtype="boolean"),
            "e": pd.Categorical(enum_vals, categories=ENUM_LEVELS),
            "d": pd.Categorical(dict_vals, categories=DICT_LEVELS),
            "g": pd.Series(g_lab, dtype=object),
            "k": k,
            "w": w,
        }
    )
    # pandas rows in the order polars sees them (polars frame built from the same rows)
    pdf = pdf.iloc[order].reset_index(drop=True)
    pl_df = pl.DataFrame(
        {
            "y": pdf["y"].to_numpy(),
            "x": pl.Series([None if pd.isna(v) else v for v in pdf["x"]], dtype=pl.Float64),
            "s": pl.Series(list(pdf["s"]), dtype=pl.String),
            "i": pl.Series([None if pd.isna(v) else int(v) for v in pdf["i"]], dtype=pl.Int64),
            "b": pl.Series([None if pd.isna(v) else bool(v) for v in pdf["b"]], dtype=pl.Boolean),
            "e": pl.Series(list(pdf["e"].astype(str)), dtype=pl.Enum(ENUM_LEVELS)),
            "d": pl.Series(list(pdf["d"].astype(str)), dtype=pl.Enum(DICT_LEVELS)),
            "g": pl.Series(list(pdf["g"]), dtype=pl.Categorical),
            "k": pdf["k"].to_numpy(),
            "w": pdf["w"].to_numpy(),
            "unused": pl.Series([[1, 2]] * n),  # a column R cannot take: never converted
        }
    )
    # Arrow: d as a dictionary in its declared order, in two chunks with different dictionaries
    half = n // 2
    d_codes = np.array([DICT_LEVELS.index(v) for v in pdf["d"]], dtype=np.int32)
    chunk_a = pa.DictionaryArray.from_arrays(pa.array(d_codes[:half]), pa.array(DICT_LEVELS))
    # the second chunk's dictionary lists the levels in another order; unified, the first
    # chunk's order comes first (and here covers every level)
    remap = np.array([2, 0, 1], dtype=np.int32)  # DICT_LEVELS[j] is at remap[j] below
    second_dict = [DICT_LEVELS[1], DICT_LEVELS[2], DICT_LEVELS[0]]
    chunk_b = pa.DictionaryArray.from_arrays(pa.array(remap[d_codes[half:]]), pa.array(second_dict))
    table = pl_df.drop("d", "unused").to_arrow()
    table = table.append_column("d", pa.chunked_array([chunk_a, chunk_b]))
    g_str = pa.chunked_array([pa.array(list(pdf["g"]))])
    table = table.set_column(table.schema.get_field_index("g"), "g", g_str)
    e_dict = pa.DictionaryArray.from_arrays(
        pa.array([ENUM_LEVELS.index(v) for v in pdf["e"]], type=pa.int8()), pa.array(ENUM_LEVELS)
    )
    table = table.set_column(table.schema.get_field_index("e"), "e", e_dict)
    return {"pandas": pdf, "polars": pl_df, "lazy": pl_df.lazy(), "arrow": table}


# ---------------------------------------------------------------------------------------------
# Conversion


def test_numeric_columns_are_views_of_the_source_buffers():
    x = np.arange(1000, dtype=np.float64) / 7
    ids = np.arange(1000, dtype=np.int64) % 13
    df = pl.DataFrame({"x": x, "g": ids})
    out = as_pandas(df)
    assert np.shares_memory(out["x"].to_numpy(), df["x"].to_numpy())
    assert np.shares_memory(out["g"].to_numpy(), df["g"].to_numpy())
    table = pa.table({"x": x, "g": ids})
    got = as_pandas(table)
    assert np.shares_memory(got["x"].to_numpy(), table.column("x").chunk(0).to_numpy())
    assert got["g"].dtype == np.int64 and np.array_equal(got["x"].to_numpy(), x)
    # several chunks: concatenated (a copy), same values
    two = pa.concat_tables([table.slice(0, 400), table.slice(400)])
    assert two.column("x").num_chunks == 2
    np.testing.assert_array_equal(as_pandas(two)["x"].to_numpy(), x)


def test_nulls_become_pandas_missing_values():
    df = pl.DataFrame(
        {
            "f": pl.Series([1.5, None, 3.0]),
            "i": pl.Series([1, None, 3], dtype=pl.Int32),
            "b": pl.Series([True, None, False]),
            "s": pl.Series(["a", None, "b"]),
            "n": pl.Series([None, None, None], dtype=pl.Null),
        }
    )
    out = as_pandas(df)
    assert out["f"].dtype == np.float64 and out["f"].isna().tolist() == [False, True, False]
    assert out["i"].dtype == pd.Int32Dtype() and out["i"].isna().tolist() == [False, True, False]
    assert out["b"].dtype == pd.BooleanDtype() and out["b"].isna().tolist() == [False, True, False]
    assert out["s"].isna().tolist() == [False, True, False]
    assert out["n"].isna().all()


def test_level_orders_follow_the_source(frames):
    got = as_pandas(frames["polars"])
    assert list(got["e"].cat.categories) == ENUM_LEVELS and not got["e"].cat.ordered
    assert not isinstance(got["g"].dtype, pd.CategoricalDtype)  # polars Categorical: strings
    arrow = as_pandas(frames["arrow"])
    assert list(arrow["d"].cat.categories) == DICT_LEVELS  # unified across the two chunks
    assert (arrow["d"].astype(str) == frames["pandas"]["d"].astype(str)).all()
    ordered = pa.table({"o": pa.DictionaryArray.from_arrays(
        pa.array([1, 0, 2]), pa.array(["c", "b", "a"])).cast(
        pa.dictionary(pa.int32(), pa.string(), ordered=True))})  # fmt: skip
    o = as_pandas(ordered)["o"]
    assert o.cat.ordered and list(o.cat.categories) == ["c", "b", "a"]


def test_only_the_columns_the_call_uses_are_converted(frames):
    out = model_data(frames["polars"], "y ~ x + (1 | g)", weights="w")
    assert list(out.columns) == ["y", "x", "g", "w"]  # the list column is never touched
    lazy = model_data(frames["lazy"], "y ~ x + (1 | g)")
    assert list(lazy.columns) == ["y", "x", "g"]
    # a formula naming a missing column: every column, so the error can list them
    with pytest.raises(mixbridge.FormulaError, match="nope"):
        mixbridge.lmer("y ~ nope + (1 | g)", frames["polars"])


def test_weights_and_offset_as_polars_or_arrow_arrays(frames):
    pdf = frames["pandas"]
    ref = mixbridge.lmer("y ~ x + (1 | g)", pdf, weights=pdf["w"].to_numpy())
    for w in (pl.Series(pdf["w"].to_numpy()), pa.array(pdf["w"].to_numpy())):
        fit = mixbridge.lmer("y ~ x + (1 | g)", frames["polars"], weights=w)
        assert_same_fit(fit, ref)
    with_null = as_vector(pl.Series([1.0, None]), "weights")
    assert np.isnan(with_null[1]) and with_null[0] == 1.0


def test_not_a_frame_is_a_data_error():
    with pytest.raises(DataError, match="must be a DataFrame .*got list"):
        mixbridge.lmer("y ~ x + (1 | g)", [1, 2, 3])
    with pytest.raises(DataError, match="must be a DataFrame .*got Series"):
        mixbridge.lmer("y ~ x + (1 | g)", pl.Series([1.0]))


def test_duplicate_column_names_in_an_arrow_table():
    t = pa.Table.from_arrays([pa.array([1.0, 2.0]), pa.array([3.0, 4.0])], names=["x", "x"])
    with pytest.raises(DataError, match="unique column names.*'x' 2 times"):
        as_pandas(t)


# ---------------------------------------------------------------------------------------------
# Fits: exactly the pandas fit, on both engines

LMER = "y ~ x + s + i + b + e + d + (1 | g)"


@pytest.mark.parametrize("kind", ["polars", "lazy", "arrow"])
def test_lmer_python_engine_equals_pandas(frames, kind):
    ref = mixbridge.lmer(LMER, frames["pandas"], weights="w")
    fit = mixbridge.lmer(LMER, frames[kind], weights="w")
    assert_same_fit(fit, ref)
    assert ref.nobs < len(frames["pandas"])  # the nulls were left out
    new = frames[kind].head(20) if kind != "arrow" else frames[kind].slice(0, 20)
    np.testing.assert_array_equal(fit.predict(new), ref.predict(frames["pandas"].head(20)))


@pytest.mark.parametrize("kind", ["polars", "lazy", "arrow"])
def test_glmer_and_bayesglm_python_engine_equal_pandas(frames, kind):
    ref = mixbridge.glmer("k ~ x + e + (1 | g)", frames["pandas"], family="binomial")
    fit = mixbridge.glmer("k ~ x + e + (1 | g)", frames[kind], family="binomial")
    assert_same_fit(fit, ref)
    bref = mixbridge.bayesglm("y ~ x + d + s", frames["pandas"])
    bfit = mixbridge.bayesglm("y ~ x + d + s", frames[kind])
    assert_same_fit(bfit, bref)


def test_r_engine_equals_pandas_and_r_gets_the_declared_levels(frames, needs_r):
    from mixbridge.bridge import describe_data

    ref = mixbridge.lmer(LMER, frames["pandas"], weights="w", engine="r")
    for kind in ("polars", "lazy", "arrow"):
        fit = mixbridge.lmer(LMER, frames[kind], weights="w", engine="r")
        assert_same_fit(fit, ref, skip={"versions"})
    # what R received: the Enum's and the dictionary's orders; the Categorical as strings,
    # which R's factor() sorts
    seen = {c["name"][0]: c for c in describe_data(as_pandas(frames["polars"].drop("unused")))}
    assert list(seen["e"]["levels"]) == ENUM_LEVELS
    assert list(seen["g"]["levels"]) == sorted(set(frames["pandas"]["g"]))
    assert list(seen["x"]["na"]) and list(seen["s"]["na"]) and list(seen["i"]["na"])
    seen_arrow = {c["name"][0]: c for c in describe_data(as_pandas(frames["arrow"]))}
    assert list(seen_arrow["d"]["levels"]) == DICT_LEVELS
    # and lme4's coefficients follow them: the first declared level is the baseline
    assert [t for t in ref.fixef.index if t[0] in "ed"] == ["emid", "ehi", "dalpha", "dmu"]
    assert list(ref.ranef["g"].index) == sorted(set(frames["pandas"]["g"]))


def test_r_engine_glmer_bayesglm_objectives_equal_pandas(frames, needs_r):
    pdf, pl_df, table = frames["pandas"], frames["polars"], frames["arrow"]
    ref = mixbridge.glmer("k ~ x + e + (1 | g)", pdf, engine="r")
    assert_same_fit(mixbridge.glmer("k ~ x + e + (1 | g)", table, engine="r"), ref,
                    skip={"versions"})  # fmt: skip
    bref = mixbridge.bayesglm("y ~ x + d", pdf, engine="r")
    assert_same_fit(mixbridge.bayesglm("y ~ x + d", pl_df, engine="r"), bref, skip={"versions"})
    for engine in ("python", "r"):
        theta = [0.7]
        assert mixbridge.lmer_objective("y ~ x + (1 | g)", pl_df, theta, engine=engine) == (
            mixbridge.lmer_objective("y ~ x + (1 | g)", pdf, theta, engine=engine)
        )
        args = ("k ~ x + (1 | g)",)
        assert mixbridge.glmer_objective(*args, table, [0.5], [0.1, 0.9], engine=engine) == (
            mixbridge.glmer_objective(*args, pdf, [0.5], [0.1, 0.9], engine=engine)
        )


def test_compare_takes_fits_of_polars_data(frames, needs_r):
    a = mixbridge.lmer("y ~ x + e + (1 | g)", frames["lazy"])
    b = mixbridge.lmer("y ~ x + e + (1 | g)", frames["arrow"], engine="r")
    mixbridge.compare(a, b).assert_ok()
    m = b.to_r()  # the fit's data (converted) travels to R again
    assert m is not None


# ---------------------------------------------------------------------------------------------
# Files from the shell, and a plain install (no pyarrow, polars, narwhals)

ROOT = Path(__file__).resolve().parents[1]
HIDE = """
import importlib.abc, sys
class _Plain(importlib.abc.MetaPathFinder):
    # a plain `pip install mixbridge`: none of the optional data libraries
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"pyarrow", "polars", "narwhals", "fastparquet"}:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _Plain())
"""


def _cli(*args: str, plain: bool = False) -> subprocess.CompletedProcess:
    code = (HIDE if plain else "") + (
        "import sys\nfrom mixbridge.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=600, env=env)  # fmt: skip


@pytest.fixture(scope="module")
def files(frames, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("data_input")
    import pyarrow.parquet as pq

    pq.write_table(frames["arrow"], out / "d.parquet")  # d: a dictionary, declared order
    frames["pandas"].to_csv(out / "d.csv", index=False)
    return {"parquet": out / "d.parquet", "csv": out / "d.csv"}


def test_fit_cli_reads_parquet_dictionaries_in_their_order(frames, files):
    out = _cli("fit", "--model", "lmer", "--formula", "y ~ x + d + (1 | g)",
               "--data", str(files["parquet"]), "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert list(doc["fixef"]) == ["(Intercept)", "x", "dalpha", "dmu"]  # baseline: zeta
    ref = mixbridge.lmer("y ~ x + d + (1 | g)", frames["arrow"])
    assert doc["fixef"] == {k: float(v) for k, v in ref.fixef.items()}


def test_plain_install_reads_csv_and_names_the_extra_for_parquet(files):
    csv = _cli("fit", "--model", "lmer", "--formula", "y ~ x + (1 | g)", "--data",
               str(files["csv"]), plain=True)  # fmt: skip
    assert csv.returncode == 0, csv.stderr
    assert "Linear mixed model fit by REML" in csv.stdout
    for command in ("fit", "compare"):
        out = _cli(command, "--model", "lmer", "--formula", "y ~ x + (1 | g)", "--data",
                   str(files["parquet"]), plain=True)  # fmt: skip
        assert out.returncode == 2, (command, out.stdout, out.stderr)
        assert 'pip install "mixbridge[arrow]"' in out.stderr, (command, out.stderr)
        assert "Traceback" not in out.stderr


def test_plain_install_names_the_extra_for_a_polars_frame():
    code = (
        HIDE.replace('"polars", ', "")
        + """
import polars as pl, mixbridge
try:
    mixbridge.lmer("y ~ x + (1 | g)", pl.DataFrame({"y": [1.0, 2.0], "x": [0.0, 1.0], "g": [1, 2]}))
except mixbridge.DataError as exc:
    print("DataError:", exc)
"""
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "DataError: data is a polars DataFrame" in out.stdout
    assert 'pip install "mixbridge[polars]"' in out.stdout


def test_other_narwhals_frames(frames):
    """A narwhals frame as such, and a lazy DuckDB relation (SQL over the Arrow table)."""
    ref = mixbridge.lmer(LMER, frames["pandas"], weights="w")
    assert_same_fit(mixbridge.lmer(LMER, nw.from_native(frames["polars"]), weights="w"), ref)
    duckdb = pytest.importorskip("duckdb")
    relation = duckdb.from_arrow(frames["arrow"])  # DuckDB decodes dictionaries to strings
    plain = "y ~ x + s + i + b + (1 | g)"
    ref = mixbridge.lmer(plain, frames["pandas"], weights="w")
    assert_same_fit(mixbridge.lmer(plain, relation, weights="w"), ref)


def test_compare_cli_on_parquet(files, needs_r):
    out = _cli("compare", "--model", "lmer", "--formula", "y ~ x + d + (1 | g)",
               "--data", str(files["parquet"]), "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    (case,) = doc["cases"]
    assert case["status"] == "ok"
    fixef = next(r for r in case["comparison"]["rows"] if r["quantity"] == "fixef")
    assert fixef["n"] == 4 and fixef["status"] == "ok"
