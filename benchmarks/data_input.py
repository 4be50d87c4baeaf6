"""Data in: the same lmer fit (Python engine) from pandas, polars (eager, lazy) and a pyarrow Table.

    python benchmarks/data_input.py [--rows 1000000] [--repeat 7]

Model `y ~ x1 + x2 + x3 + (1 | g)`, n/20 groups. Two layouts of the grouping column: integer ids
(as benchmarks/run.py), and level labels held as a category type (pandas Categorical, polars
Enum, Arrow dictionary). Each input is built before timing (users hold their data that way);
timed is the whole public call `mixbridge.lmer(formula, data)`, conversion included, and the
conversion alone (`mixbridge.data_input.model_data`). Best of --repeat, the inputs interleaved
so that a busy machine slows them alike; the load average is printed.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa

import mixbridge
from mixbridge.data_input import model_data

FORMULA = "y ~ x1 + x2 + x3 + (1 | g)"


def columns(n: int, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    groups = max(n // 20, 2)
    g = rng.integers(0, groups, size=n)
    x = rng.normal(size=(n, 3))
    y = 1.0 + x @ np.array([0.5, -0.3, 0.2]) + rng.normal(scale=0.5, size=groups)[g]
    y += rng.normal(size=n)
    return {"y": y, "x1": x[:, 0].copy(), "x2": x[:, 1].copy(), "x3": x[:, 2].copy(), "g": g}


def inputs(cols: dict[str, np.ndarray], labels: bool) -> dict[str, object]:
    g = cols["g"]
    numeric = {k: v for k, v in cols.items() if k != "g"}
    if not labels:
        pdf = pd.DataFrame({**numeric, "g": g})
        pl_df = pl.DataFrame({**numeric, "g": g})
        table = pa.table({**numeric, "g": g})
    else:
        names = [f"g{i}" for i in range(int(g.max()) + 1)]
        pdf = pd.DataFrame({**numeric, "g": pd.Categorical.from_codes(g, names)})
        pl_df = pl.DataFrame(numeric).with_columns(
            pl.Series("g", g.astype(np.uint32)).cast(pl.UInt32)
        )
        pl_df = pl_df.with_columns(
            pl.col("g").replace_strict(list(range(len(names))), names, return_dtype=pl.Enum(names))
        )
        table = pa.table(
            {**numeric, "g": pa.DictionaryArray.from_arrays(pa.array(g.astype(np.int32)), names)}
        )
    return {"pandas": pdf, "polars": pl_df, "polars lazy": pl_df.lazy(), "arrow": table}


def _load() -> str:
    try:
        with open("/proc/loadavg") as fh:
            return " ".join(fh.read().split()[:3])
    except OSError:
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    cols = columns(args.rows)
    print(f"rows {args.rows}, groups {int(cols['g'].max()) + 1}; load average {_load()} (2 cores)")
    print(f"{'g as':<10} {'input':<12} {'lmer s':>8} {'x pandas':>9} {'convert s':>10}")
    for labels in (False, True):
        data = inputs(cols, labels)
        ref = mixbridge.lmer(FORMULA, data["pandas"])  # warm-up, and the reference estimates
        fit_t = {k: np.inf for k in data}
        conv_t = {k: np.inf for k in data}
        for _ in range(args.repeat):
            for name, frame in data.items():
                t = time.perf_counter()
                fit = mixbridge.lmer(FORMULA, frame)
                fit_t[name] = min(fit_t[name], time.perf_counter() - t)
                assert fit.fixef.equals(ref.fixef) and fit.sigma == ref.sigma, name
                t = time.perf_counter()
                model_data(frame, FORMULA)
                conv_t[name] = min(conv_t[name], time.perf_counter() - t)
        for name in data:
            print(
                f"{'labels' if labels else 'int ids':<10} {name:<12} {fit_t[name]:>8.4f} "
                f"{fit_t[name] / fit_t['pandas']:>9.2f} {conv_t[name]:>10.4f}",
                flush=True,
            )
    print(f"load average at end {_load()}; every fit equal to the pandas fit (fixef, sigma)")


if __name__ == "__main__":
    main()
