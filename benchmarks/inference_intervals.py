"""Profile and bootstrap intervals at scale: the Python engine against lme4 (issue 13).

    python benchmarks/inference_intervals.py                      # the issue's sizes
    python benchmarks/inference_intervals.py --r-profile 10000 100000 --r-boot-reps 30

1. Profile intervals for every parameter of `y ~ x1 + x2 + x3 + (1|g)` at 1e6 rows / 5e4 groups
   (target < 10 s), beside lme4's `confint(method = "profile")` at the sizes given by
   --r-profile (each capped at --r-cap seconds; lme4 re-runs its whole PLS per profile point, so
   its time grows with n: the 1e6 figure is extrapolated linearly from the largest size that
   finished, and labelled so).
2. Parametric bootstrap, 1000 replicates of the 1e5-row model (target < 60 s), beside lme4's
   `bootMer` at the same size with --r-boot-reps replicates, extrapolated to 1000 (bootMer's
   time is linear in the number of replicates: each is one refit).
Both tables print the differences from lme4 where both ran (profile bounds relative to the
interval's half-width). Timings are wall clock, engine="python" vs the embedded R session.
Set OPENBLAS_NUM_THREADS=1 on a shared machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

import mixbridge
from mixbridge.errors import RTimeoutError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import lmm_data  # noqa: E402

FORMULA = "y ~ x1 + x2 + x3 + (1 | g)"


def frame(n: int, groups: int) -> pd.DataFrame:
    cols = lmm_data(n, groups)
    data = pd.DataFrame(cols)
    data["g"] = pd.Categorical(cols["g"])
    return data


def half_width_diff(a: pd.DataFrame, b: pd.DataFrame) -> float:
    half = (b["upper"] - b["lower"]) / 2.0
    d = np.maximum((a["lower"] - b["lower"]).abs(), (a["upper"] - b["upper"]).abs()) / half
    return float(d.max())


def profile_part(n_big: int, r_sizes: list[int], cap: float) -> None:
    print(f"## Profile intervals, {FORMULA}, all parameters\n")
    print("| rows | engine | fit s | profile s | max Δ vs lme4 / half-width |")
    print("|---:|---|---:|---:|---:|")
    data = frame(n_big, n_big // 20)
    t0 = time.perf_counter()
    fit = mixbridge.lmer(FORMULA, data)
    t1 = time.perf_counter()
    ci_big = fit.confint("profile")
    t2 = time.perf_counter()
    print(f"| {n_big:,} | python | {t1 - t0:.2f} | {t2 - t1:.2f} | |", flush=True)
    largest: tuple[int, float] | None = None
    mixbridge.lmer(FORMULA, frame(2000, 100), engine="r")  # start R outside the timings
    for n in r_sizes:
        d = frame(n, n // 20)
        py = mixbridge.lmer(FORMULA, d)
        t1 = time.perf_counter()
        ci_py = py.confint("profile")
        t_py = time.perf_counter() - t1
        try:
            t0 = time.perf_counter()
            r = mixbridge.lmer(FORMULA, d, engine="r", timeout=cap)
            t1 = time.perf_counter()
            ci_r = r.confint("profile")  # refits in R, then lme4's profile
            t2 = time.perf_counter()
        except RTimeoutError:
            print(f"| {n:,} | lme4 | | > {cap:.0f} (stopped) | |", flush=True)
            break
        r_profile = (t2 - t1) - (t1 - t0)  # R refits once before profiling: the fit's time off
        print(f"| {n:,} | python | | {t_py:.2f} | {half_width_diff(ci_py, ci_r):.1e} |")
        print(f"| {n:,} | lme4 | {t1 - t0:.2f} | {r_profile:.2f} | |", flush=True)
        largest = (n, r_profile)
    if largest is not None and largest[0] < n_big:
        n, s = largest
        print(f"| {n_big:,} | lme4 (extrapolated linearly from {n:,}) | | ~{s * n_big / n:.0f} | |")
    print()
    print(ci_big.to_string())
    print()


def boot_part(n: int, nsim: int, r_reps: int, cap: float) -> None:
    print(f"## Parametric bootstrap, {FORMULA}, {n:,} rows\n")
    print("| engine | replicates | seconds | seconds per 1000 |")
    print("|---|---:|---:|---:|")
    data = frame(n, n // 20)
    fit = mixbridge.lmer(FORMULA, data)
    t0 = time.perf_counter()
    ci = fit.confint("boot", nsim=nsim, seed=1, progress=True)
    s = time.perf_counter() - t0
    print(f"| python | {nsim} | {s:.1f} | {s * 1000 / nsim:.1f} |", flush=True)
    try:
        r = mixbridge.lmer(FORMULA, data, engine="r", timeout=cap)
        t0 = time.perf_counter()
        mixbridge.lmer(FORMULA, data, engine="r", timeout=cap)
        t_fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        ci_r = r.confint("boot", nsim=r_reps, seed=1)
        s = time.perf_counter() - t0 - t_fit
        print(f"| lme4 bootMer | {r_reps} | {s:.1f} | ~{s * 1000 / r_reps:.0f} (extrapolated) |")
    except RTimeoutError:
        print(f"| lme4 bootMer | {r_reps} | > {cap:.0f} (stopped) | |")
        ci_r = None
    print()
    print(ci.to_string())
    if ci_r is not None:
        print(f"\nlme4 ({r_reps} replicates):\n{ci_r.to_string()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile-rows", type=int, default=1_000_000)
    ap.add_argument("--r-profile", type=int, nargs="*", default=[10_000, 100_000])
    ap.add_argument("--boot-rows", type=int, default=100_000)
    ap.add_argument("--nsim", type=int, default=1000)
    ap.add_argument("--r-boot-reps", type=int, default=30)
    ap.add_argument("--r-cap", type=float, default=600.0)
    args = ap.parse_args()
    profile_part(args.profile_rows, args.r_profile, args.r_cap)
    boot_part(args.boot_rows, args.nsim, args.r_boot_reps, args.r_cap)


if __name__ == "__main__":
    main()
