"""Timings of the formula layer on factors with very many levels (issue #7, target 4).

    python benchmarks/formula_speed.py [--quick] [--bayesglm]

Cases: build_mixed_terms and check_inputs for "y ~ x1 + x2 + x3 + (1|g)" at 1e6 rows with 5e4
groups (g as int, str and pandas Categorical); with --bayesglm also mixbridge.bayesglm
("y ~ x + factor(id)") end to end at G = 1e4 and 1e5 levels (10 rows per level).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd


def _mixed_data(n: int, groups: int, kind: str, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = rng.integers(0, groups, n)
    df = pd.DataFrame({f"x{j}": rng.normal(size=n) for j in (1, 2, 3)})
    df["y"] = df.x1 + rng.normal(size=g.max() + 1)[g] + rng.normal(size=n)
    if kind == "int":
        df["g"] = g
    elif kind == "str":
        df["g"] = np.char.add("s", g.astype(str)).astype(object)
    else:
        df["g"] = pd.Categorical(g)
    return df


def _time(fn, repeat: int = 1) -> float:
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    from mixbridge.checks import check_inputs
    from mixbridge.formula import build_mixed_terms

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="1e5 rows instead of 1e6")
    ap.add_argument("--bayesglm", action="store_true", help="also time bayesglm end to end")
    args = ap.parse_args()
    n = 100_000 if args.quick else 1_000_000
    f = "y ~ x1 + x2 + x3 + (1|g)"
    for kind in ("int", "str", "categorical"):
        df = _mixed_data(n, 50_000, kind)
        tb = _time(lambda df=df: build_mixed_terms(f, df), 2)
        tc = _time(lambda df=df: check_inputs("lmer", f, df), 2)
        print(f"n={n:>8} g={kind:<11} build_mixed_terms {tb:6.3f} s   check_inputs {tc:6.3f} s")
    if args.bayesglm:
        import mixbridge

        # warm-up: the first call imports scipy.stats etc. (several seconds on a busy machine)
        t0 = time.perf_counter()
        small = pd.DataFrame({"x": np.arange(20.0), "id": np.arange(20) % 4, "y": np.ones(20)})
        small.loc[::2, "y"] = 0.0
        mixbridge.bayesglm("y ~ x + factor(id)", small)
        print(f"first call (imports) {time.perf_counter() - t0:6.2f} s")
        for G in (10_000, 100_000):
            rng = np.random.default_rng(2)
            nn = 10 * G
            ids = rng.integers(0, G, nn)
            x = rng.normal(size=nn)
            df = pd.DataFrame(
                {"x": x, "id": ids, "y": x + rng.normal(size=G)[ids] + rng.normal(size=nn)}
            )
            t = _time(lambda df=df: mixbridge.bayesglm("y ~ x + factor(id)", df))
            print(f"bayesglm y ~ x + factor(id)  G={G:>6} n={nn:>7}  {t:6.2f} s")


if __name__ == "__main__":
    main()
