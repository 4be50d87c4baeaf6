"""R data sets through the bridge: the project's test data, checked against Rscript itself."""

from __future__ import annotations

import subprocess

import numpy as np
import pandas as pd
import pytest

from mixbridge.bridge.datasets import load_r_dataset

DATASETS = [
    "sleepstudy", "Dyestuff", "Dyestuff2", "Penicillin", "Pastes", "InstEval", "cbpp",
    "grouseticks", "VerbAgg",
]  # fmt: skip

REFERENCE_R = r"""
suppressPackageStartupMessages(library(lme4))
for (nm in commandArgs(trailingOnly = TRUE)) {
  e <- new.env(); data(list = nm, package = "lme4", envir = e); d <- e[[nm]]
  cat(nm, "\tnrow\t", nrow(d), "\n", sep = "")
  for (col in names(d)) {
    x <- d[[col]]
    kind <- if (is.ordered(x)) "ordered" else if (is.factor(x)) "factor" else typeof(x)
    cat(nm, "\tcol\t", col, "\t", kind, "\n", sep = "")
    if (is.factor(x)) {
      cat(nm, "\tlevels\t", col, "\t", paste(levels(x), collapse = "\x1f"), "\n", sep = "")
      cat(nm, "\tcodes\t", col, "\t", sprintf("%.17g", sum(as.numeric(x) * seq_along(x))), "\n",
          sep = "")
    } else {
      cat(nm, "\tsum\t", col, "\t", sprintf("%.17g", sum(as.numeric(x) * seq_along(x))), "\n",
          sep = "")
    }
  }
}
"""


@pytest.fixture(scope="module")
def ref(needs_r) -> list[list[str]]:
    out = subprocess.run(
        ["Rscript", "--vanilla", "-e", REFERENCE_R, "--args", *DATASETS],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return [line.split("\t") for line in out.stdout.splitlines()]


@pytest.mark.parametrize("name", DATASETS)
def test_dataset_matches_r(ref, name):
    df = load_r_dataset(name)
    rows = [r for r in ref if r[0] == name]
    assert len(df) == int(next(r[2] for r in rows if r[1] == "nrow"))
    cols = [(r[2], r[3]) for r in rows if r[1] == "col"]
    assert list(df.columns) == [c for c, _ in cols]
    weights = np.arange(1, len(df) + 1, dtype=np.float64)
    for col, kind in cols:
        s = df[col]
        if kind in ("factor", "ordered"):
            assert isinstance(s.dtype, pd.CategoricalDtype), col
            assert s.cat.ordered == (kind == "ordered"), col
            levels = next(r[3] for r in rows if r[1] == "levels" and r[2] == col)
            assert list(s.cat.categories) == levels.split("\x1f"), col
            codes = next(r[3] for r in rows if r[1] == "codes" and r[2] == col)
            # position-weighted sum of R's 1-based codes: same rows, same order, same codes
            assert int(((s.cat.codes.to_numpy() + 1) * np.arange(1, len(s) + 1)).sum()) == int(
                float(codes)
            ), col
        else:
            total = float(next(r[3] for r in rows if r[1] == "sum" and r[2] == col))
            # R sums in long double, numpy pairwise: agreement to rounding only
            assert float((s.to_numpy(dtype=np.float64) * weights).sum()) == pytest.approx(
                total, rel=1e-13
            ), col
            if kind == "integer":
                assert s.dtype.kind == "i", col


def test_cached_copies_are_independent(needs_r):
    a = load_r_dataset("Dyestuff")
    a.loc[0, "Yield"] = -1.0
    b = load_r_dataset("Dyestuff")
    assert b.loc[0, "Yield"] != -1.0
