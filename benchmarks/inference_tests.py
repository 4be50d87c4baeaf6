"""Speed of the tests and degrees of freedom (issue 13), side by side in one run.

    python benchmarks/inference_tests.py [--quick]

1. Satterthwaite table for y ~ x1 + x2 + x3 + (1|g) at 1e6 rows / 5e4 groups vs our fit time
   (target < 2x: the O(G) path differentiates the deviance on the group sums, no data pass).
2. lmerTest's summary (Satterthwaite) at 1e4 and 1e5 rows (its fit + as_lmerModLT), the ratio
   to ours at the same size, and a linear extrapolation to 1e6 (R's time is kept short).
3. Kenward-Roger at 1e5 rows (1|g) (target < 10 s) and pbkrtest at growing n until it takes
   more than 60 s or n = 4000 (it builds dense n x n matrices).
"""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pandas as pd

import mixbridge


def simulate(n: int, groups: int, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = rng.integers(0, groups, n)
    x = rng.normal(size=(n, 3))
    u = rng.normal(scale=0.7, size=groups)
    y = 1 + x @ np.array([0.5, -0.2, 0.1]) + u[g] + rng.normal(size=n)
    return pd.DataFrame({"y": y, "x1": x[:, 0], "x2": x[:, 1], "x3": x[:, 2], "g": g.astype(str)})


FORMULA = "y ~ x1 + x2 + x3 + (1 | g)"

R_TIME = r"""
suppressPackageStartupMessages(library(lmerTest))
args <- commandArgs(TRUE); d <- read.csv(args[1]); d$g <- factor(d$g)
what <- args[2]
t0 <- proc.time()[["elapsed"]]
m <- lmer(y ~ x1 + x2 + x3 + (1 | g), d)
t1 <- proc.time()[["elapsed"]]
if (what == "satt") s <- coef(summary(m)) else s <- coef(summary(m, ddf = "Kenward-Roger"))
t2 <- proc.time()[["elapsed"]]
cat(t1 - t0, t2 - t1, "\n")
"""


def r_time(d: pd.DataFrame, what: str, timeout: float) -> tuple[float, float] | None:
    path = f"/tmp/mixbridge_bench_{len(d)}.csv"
    d.to_csv(path, index=False)
    try:
        out = subprocess.run(
            ["Rscript", "--vanilla", "-e", R_TIME, path, what],
            capture_output=True, text=True, timeout=timeout, check=True,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return None
    fit_s, test_s = (float(v) for v in out.stdout.split())
    return fit_s, test_s


def ours(d: pd.DataFrame, ddf: str) -> tuple[float, float]:
    t0 = time.perf_counter()
    fit = mixbridge.lmer(FORMULA, d)
    t1 = time.perf_counter()
    fit.coef_table(ddf=ddf)
    return t1 - t0, time.perf_counter() - t1


def main(quick: bool) -> None:
    big = 100_000 if quick else 1_000_000
    rows = []
    d = simulate(big, big // 20)
    fit_s, satt_s = ours(d, "satterthwaite")
    rows.append(("Satterthwaite table, ours", big, fit_s, satt_s, satt_s / fit_s))
    del d
    for n in (10_000,) if quick else (10_000, 100_000):
        d = simulate(n, n // 20)
        o_fit, o_satt = ours(d, "satterthwaite")
        r = r_time(d, "satt", timeout=300)
        if r is None:
            rows.append(("lmerTest summary (Satterthwaite): > 300 s", n, o_fit, o_satt, np.nan))
            continue
        rows.append(("lmerTest summary (Satterthwaite), R", n, r[0], r[1], r[1] / r[0]))
        label = "  ours at the same size (ratio = R / ours, tests)"
        rows.append((label, n, o_fit, o_satt, r[1] / o_satt))
    d = simulate(100_000, 5_000)
    fit_s, kr_s = ours(d, "kenward-roger")
    rows.append(("Kenward-Roger table, ours", 100_000, fit_s, kr_s, kr_s / fit_s))
    for n in (1000, 2000, 4000):
        d = simulate(n, max(n // 20, 5))
        r = r_time(d, "kr", timeout=120)
        if r is None:
            rows.append(("pbkrtest KR: > 120 s", n, np.nan, np.nan, np.nan))
            break
        o_fit, o_kr = ours(d, "kenward-roger")
        rows.append(("pbkrtest KR via lmerTest, R", n, r[0], r[1], r[1] / o_kr))
        if r[1] > 60:
            break
    table = pd.DataFrame(rows, columns=["what", "rows", "fit_s", "tests_s", "ratio"])
    with pd.option_context("display.width", 200, "display.max_colwidth", 60):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))


if __name__ == "__main__":
    main("--quick" in sys.argv)
