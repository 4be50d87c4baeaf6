"""Wall-clock timings of glmer: the Python engine against lme4 (through the bridge).

    python benchmarks/glmer_timings.py                 # cbpp, grouseticks, VerbAgg
    python benchmarks/glmer_timings.py --big 1000000   # plus a 1e6-row random-intercept logit
    python benchmarks/glmer_timings.py --big 1000000 --no-r-big   # skip lme4 on the big one
    python benchmarks/glmer_timings.py --agq-ratio 1000000          # issue 7 target 3 (below)

Each line: data set, engine, seconds, −2 logLik on lme4's scale, max relative difference of
θ and β from lme4's. Set OPENBLAS_NUM_THREADS=1 on a shared machine: small LAPACK calls with
contended BLAS threads are up to 100x slower.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

import mixbridge
from mixbridge.bridge.datasets import load_r_dataset


def lme4_scale(fit) -> float:
    return -2.0 * (fit.loglik - fit.loglik_constant)


def timed(label: str, formula: str, data: pd.DataFrame, engines, **kw):
    fits = {}
    for engine in engines:  # lme4 first, so each Python line can show its differences
        t0 = time.perf_counter()
        fits[engine] = fit = mixbridge.glmer(formula, data, engine=engine, **kw)
        fit.extra["seconds"] = time.perf_counter() - t0
        ref = fits.get("r")
        line = f"{label:<28} {engine:<7} {fit.extra['seconds']:8.2f} s  crit {lme4_scale(fit):.6f}"
        if ref is not None and engine != "r":
            dth = np.max(np.abs(fit.theta / ref.theta - 1))
            dbe = np.max(np.abs(fit.fixef.to_numpy() / ref.fixef.to_numpy() - 1))
            line += f"  dcrit {lme4_scale(fit) - lme4_scale(ref):+.2e}  θ {dth:.1e}  β {dbe:.1e}"
        print(line, flush=True)


def big_data(n: int, groups: int, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = rng.integers(0, groups, n)
    x = rng.standard_normal(n)
    eta = -0.5 + 0.8 * x + 0.7 * rng.standard_normal(groups)[g]
    y = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(float)
    return pd.DataFrame({"y": y, "x": x, "g": pd.Categorical(g)})


def agq_ratio(n: int, repeats: int) -> None:
    """Issue 7, target 3: the benchmark's binomial data (datasets.glmm_data(n, n // 20), framed as
    worker.frame does), Laplace and nAGQ = 25 fits, median of `repeats`, and the peer glmm in its
    own venv (benchmarks/.venv) on the same data when it is installed. No R: lme4 takes ~25 min
    at 1e6 (the agreement with lme4 is checked at 1e5 by the tests' big-data paths)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    sys.path.insert(0, str(here))
    from datasets import glmm_data
    from worker import frame

    groups = n // 20
    df = frame(glmm_data(n, groups))
    formula = "y ~ x1 + x2 + (1|g)"
    mixbridge.glmer(formula, df.iloc[:2000], family="binomial")  # imports, warm caches
    medians = {}
    for nagq in (1, 25):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fit = mixbridge.glmer(formula, df, family="binomial", nagq=nagq)
            times.append(time.perf_counter() - t0)
        medians[nagq] = float(np.median(times))
        runs = ", ".join(f"{t:.2f}" for t in times)
        beta = np.round(fit.fixef.to_numpy(), 8)
        print(
            f"python nagq={nagq:<3} median {medians[nagq]:6.2f} s  ({runs})"
            f"  crit {lme4_scale(fit):.6f}  θ {fit.theta[0]:.8f}  β {beta}",
            flush=True,
        )
    print(f"AGQ25 / Laplace = {medians[25] / medians[1]:.2f}", flush=True)
    peer = here / ".venv" / "bin" / "python"
    if peer.exists():
        code = (
            f"import sys, time, json, numpy as np; sys.path.insert(0, {str(here)!r})\n"
            "from datasets import glmm_data\nimport glmm\n"
            f"c = glmm_data({n}, {groups}); d = {{k: v.astype(np.int64) if k == 'g' else v "
            "for k, v in c.items()}\nts = []\n"
            f"for _ in range({repeats}):\n    t0 = time.perf_counter(); "
            f"glmm.fit(d, {formula!r}, family='binomial'); ts.append(time.perf_counter() - t0)\n"
            "print(json.dumps(ts))"
        )
        out = subprocess.run([str(peer), "-c", code], capture_output=True, text=True, check=False)
        if out.returncode == 0:
            ts = json.loads(out.stdout.strip().splitlines()[-1])
            med = float(np.median(ts))
            print(
                f"glmm (peer)  median {med:6.2f} s  ({', '.join(f'{t:.2f}' for t in ts)})"
                f"  python Laplace / glmm = {medians[1] / med:.2f}",
                flush=True,
            )
        else:
            print(f"glmm (peer) failed: {out.stderr.strip()[-300:]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--agq-ratio", type=int, default=0, help="rows: Laplace vs nAGQ=25 vs glmm, no R"
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--big", type=int, default=0, help="rows of the random-intercept model")
    ap.add_argument("--no-r-big", action="store_true")
    ap.add_argument("--skip-verbagg", action="store_true")
    args = ap.parse_args()
    if args.agq_ratio:
        agq_ratio(args.agq_ratio, args.repeats)
        return
    both = ("r", "python")
    # warm up imports and R so that they are not charged to the first fit
    cbpp = load_r_dataset("cbpp")
    for engine in ("r", "python"):
        f = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
        mixbridge.glmer(f, cbpp, engine=engine)
    cb = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
    timed("cbpp nAGQ=1", cb, cbpp, both, family="binomial")
    timed("cbpp nAGQ=25", cb, cbpp, both, family="binomial", nagq=25)
    gt = load_r_dataset("grouseticks")
    timed("grouseticks (1|BROOD)", "TICKS ~ YEAR + cHEIGHT + (1|BROOD)", gt, both, family="poisson")
    if not args.skip_verbagg:
        va = load_r_dataset("VerbAgg")
        f = "r2 ~ Anger + Gender + btype + situ + (1|id) + (1|item)"
        timed("VerbAgg (1|id)+(1|item)", f, va, both, family="binomial")
    if args.big:
        d = big_data(args.big, max(2, args.big // 10))
        engines = ("python",) if args.no_r_big else both
        timed(f"(1|g) logit n={args.big}", "y ~ x + (1|g)", d, engines, family="binomial")


if __name__ == "__main__":
    main()
