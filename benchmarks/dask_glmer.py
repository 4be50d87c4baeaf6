"""glmer on a Dask LocalCluster against the in-memory fit (issue 15, target 2).

    python benchmarks/dask_glmer.py --rows 10000000 --groups 500000 --workers 2

Binomial `y ~ x1 + x2 + (1|g)`: the data are written to parquet files (one per partition) that
the workers read, so the client never holds them; the Dask fit persists the model rows on the
workers and runs every step as one map-reduce. The same rows are then fitted in memory. Prints
wall time of both, the passes over the data, and the largest relative difference of θ, β and
the log-likelihood (the two must agree to 1e-8).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import mixbridge


def make_data(n: int, G: int, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = rng.integers(0, G, n)
    x1, x2 = rng.normal(size=n), rng.uniform(size=n)
    eta = -0.4 + 0.7 * x1 - 0.8 * x2 + rng.normal(0, 0.8, G)[g]
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-eta))).astype(float)
    return pd.DataFrame({"g": g, "x1": x1, "x2": x2, "y": y})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--groups", type=int, default=50_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--partitions", type=int, default=8)
    a = ap.parse_args()
    import dask.dataframe as dd
    from distributed import Client, LocalCluster

    formula = "y ~ x1 + x2 + (1|g)"
    with tempfile.TemporaryDirectory() as tmp:
        df = make_data(a.rows, a.groups)
        bounds = np.linspace(0, a.rows, a.partitions + 1).astype(int)
        for k in range(a.partitions):
            df.iloc[bounds[k] : bounds[k + 1]].to_parquet(Path(tmp) / f"part{k}.parquet")
        with (
            LocalCluster(
                n_workers=a.workers, threads_per_worker=1, dashboard_address=None
            ) as cluster,
            Client(cluster),
        ):
            ddf = dd.read_parquet(str(Path(tmp) / "*.parquet"))
            t0 = time.perf_counter()
            fit = mixbridge.glmer(formula, ddf, family="binomial")
            t_dask = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref = mixbridge.glmer(formula, df, family="binomial")
        t_mem = time.perf_counter() - t0
    d_theta = float(np.max(np.abs(fit.theta / ref.theta - 1)))
    d_beta = float(np.max(np.abs(fit.fixef.to_numpy() / ref.fixef.to_numpy() - 1)))
    d_ll = abs(fit.loglik / ref.loglik - 1)
    print(f"rows {a.rows:,}  groups {a.groups:,}  partitions {a.partitions}  workers {a.workers}")
    print(f"| path | seconds |\n|---|---|\n| Dask LocalCluster | {t_dask:.1f} |")
    print(f"| in memory | {t_mem:.1f} |")
    print(f"passes over the data (Dask): {fit.extra['passes']}")
    print(f"max rel. difference: theta {d_theta:.1e}  beta {d_beta:.1e}  logLik {d_ll:.1e}")


if __name__ == "__main__":
    main()
