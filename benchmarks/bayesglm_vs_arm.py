"""Speed of the Python bayesglm engine vs arm::bayesglm on one-hot factors.

Model: gaussian `y ~ 0 + factor(id)` with arm's default prior (Cauchy, scaled), `per_level`
observations per level. arm is timed inside R (`system.time` around the bayesglm call only, data
already loaded) through Rscript; it solves a dense (n + G) x G least-squares problem per
iteration, so its cost grows like G^3 and it is run only up to --arm-max levels; larger sizes are
extrapolated with a cubic fitted to the measured times (printed as "extrapolated").

Python is timed two ways: `engine core` = fit_from_matrix on a scipy.sparse one-hot X (the
blocked solver; no n x G or G x G array), and `public API` = mixbridge.bayesglm(formula, data),
which includes input checks and the model frame (a sparse X from 500 levels on; below that the
formula module's dense X).

    .venv/bin/python benchmarks/bayesglm_vs_arm.py                     # 100, 1000, 10000 levels
    .venv/bin/python benchmarks/bayesglm_vs_arm.py --levels 100 1000 10000 100000 --arm-max 500
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp

R_FIT = r"""
suppressPackageStartupMessages(library(arm))
a <- commandArgs(TRUE)
d <- read.csv(a[1]); d$id <- factor(d$id, levels = unique(d$id[order(d$id)]))
t <- system.time(fit <- bayesglm(y ~ 0 + id, data = d))[["elapsed"]]
cat(jsonlite::toJSON(list(time = t, coef = unname(coef(fit)), iter = fit$iter), digits = NA))
"""


def make_data(n_levels: int, per_level: int, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ids = np.repeat(np.arange(n_levels), per_level)
    u = rng.normal(size=n_levels)
    y = 1.0 + u[ids] + rng.normal(size=ids.size) * 2.0
    return pd.DataFrame({"id": ids, "y": y})


def time_core(df: pd.DataFrame, n_levels: int, repeats: int = 3) -> tuple[float, np.ndarray, int]:
    from mixbridge.python_impl.bayesglm import fit_from_matrix

    n = len(df)
    X = sp.csc_matrix((np.ones(n), (np.arange(n), df["id"].to_numpy())), shape=(n, n_levels))
    names = [f"id{k}" for k in range(n_levels)]
    best = np.inf
    fit = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = fit_from_matrix(X, df["y"].to_numpy(), names, has_intercept=False)
        best = min(best, time.perf_counter() - t0)
    assert fit is not None
    return best, fit.coef.to_numpy(), fit.iterations


def time_api(df: pd.DataFrame) -> float:
    import mixbridge

    d = df.assign(id=df["id"].astype(str).str.zfill(7))
    t0 = time.perf_counter()
    mixbridge.bayesglm("y ~ 0 + id", d)
    return time.perf_counter() - t0


def time_arm(df: pd.DataFrame) -> tuple[float, np.ndarray, int]:
    fd, path = tempfile.mkstemp(suffix=".csv")
    os.close(fd)
    try:
        df.to_csv(path, index=False)
        out = subprocess.run(
            ["Rscript", "--vanilla", "-e", R_FIT, path], capture_output=True, text=True
        )
        if out.returncode != 0:
            raise RuntimeError(out.stderr)
        res = json.loads(out.stdout)
        return float(res["time"][0]), np.asarray(res["coef"], float), int(res["iter"][0])
    finally:
        os.unlink(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--levels", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--arm-levels", type=int, nargs="+", default=[100, 200, 300])
    ap.add_argument("--arm-max", type=int, default=300, help="largest G for which arm is run")
    ap.add_argument("--per-level", type=int, default=5)
    ap.add_argument("--api-max", type=int, default=10**6, help="largest G for the public API")
    args = ap.parse_args()

    arm_sizes = sorted({g for g in args.arm_levels + args.levels if g <= args.arm_max})
    arm_times: dict[int, float] = {}
    for g in arm_sizes:
        df = make_data(g, args.per_level)
        t_arm, coef_arm, it_arm = time_arm(df)
        _, coef_py, it_py = time_core(df, g, repeats=1)
        diff = float(np.max(np.abs(coef_py - coef_arm)))
        arm_times[g] = t_arm
        print(
            f"arm G={g:>7}: {t_arm:8.3f} s (iter {it_arm}; python iter {it_py}, max|coef diff| "
            f"{diff:.1e})"
        )
    # cubic extrapolation t = c * G^3 fitted in log space through the largest measured sizes
    gs = np.array(sorted(arm_times))
    c = float(np.exp(np.mean(np.log(np.array([arm_times[g] for g in gs]) / gs.astype(float) ** 3))))

    print()
    header = f"{'levels':>8} {'n':>9} {'python core s':>14} {'public API s':>13} {'arm s':>12}"
    print(header + f" {'arm/python':>11}")
    for g in sorted(set(args.levels) | {500}):
        df = make_data(g, args.per_level)
        t_py, _, _ = time_core(df, g)
        t_api = f"{time_api(df):13.3f}" if g <= args.api_max else f"{'-':>13}"
        if g in arm_times:
            t_arm, note = arm_times[g], ""
        else:
            t_arm, note = c * g**3, " (extrapolated, cubic)"
        print(f"{g:>8} {len(df):>9} {t_py:14.4f} {t_api} {t_arm:12.3f} {t_arm / t_py:11.0f}x{note}")


if __name__ == "__main__":
    main()
