"""Negative-binomial GLMM `y ~ x1 + x2 + (1|g)` with θ estimated: mixbridge.glmer_nb against
lme4's glmer.nb (at a size lme4 finishes, its time capped) and the glmm peer's negative-binomial
family (issue 16, part 1).

    python benchmarks/glmer_nb.py --rows 1000000 --groups 50000 --lme4-rows 20000

Each engine runs in a fresh process on the same simulated data (NB with shape 2, group sd 0.5),
built before timing; time is wall clock. θ (NB shape), the random-effect sd and the fixed effects
are printed side by side, and -2 logLik as each engine reports it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

CHILD = r"""
import json, sys, time
import numpy as np

def data(n, G, seed=1):
    rng = np.random.default_rng(seed)
    g = rng.integers(0, G, n)
    x1, x2 = rng.normal(size=n), rng.uniform(size=n)
    mu = np.exp(0.5 + 0.3 * x1 - 0.4 * x2 + rng.normal(scale=0.5, size=G)[g])
    y = rng.negative_binomial(2.0, 2.0 / (2.0 + mu)).astype(float)
    return {"y": y, "x1": x1, "x2": x2, "g": g}

c = data({n}, {G})
engine = {engine!r}
F = "y ~ x1 + x2 + (1|g)"
if engine == "python":
    import pandas as pd
    import mixbridge
    d = pd.DataFrame(c)
    d["g"] = d["g"].astype(str)
    t0 = time.perf_counter()
    fit = mixbridge.glmer_nb(F, d)
    wall = time.perf_counter() - t0
    out = dict(nb_theta=fit.nb_theta, sd=float(np.sqrt(fit.varcorr["vcov"].iloc[0])),
               beta=fit.fixef.to_numpy().tolist(), m2ll=-2 * fit.loglik,
               evals=fit.optimizer["nb"]["n_evals"])
elif engine == "lme4":
    import pandas as pd
    import mixbridge
    d = pd.DataFrame(c)
    d["g"] = d["g"].astype(str)
    t0 = time.perf_counter()
    fit = mixbridge.glmer_nb(F, d, engine="r", timeout={timeout})
    wall = time.perf_counter() - t0
    out = dict(nb_theta=fit.nb_theta, sd=float(np.sqrt(fit.varcorr["vcov"].iloc[0])),
               beta=fit.fixef.to_numpy().tolist(), m2ll=-2 * fit.loglik,
               evals=fit.extra.get("nb_evals"))
else:
    import glmm
    t0 = time.perf_counter()
    fit = glmm.fit(c, F, family="negativebinomial")
    wall = time.perf_counter() - t0
    vc = fit.varcorr if hasattr(fit, "varcorr") else None
    out = dict(nb_theta=float(fit.dispersion), beta=list(map(float, np.ravel(fit.beta))),
               m2ll=-2 * float(fit.loglik), sd=None)
    try:
        out["sd"] = float(np.sqrt(np.ravel(fit.tau2)[0]))
    except Exception:
        pass
out["wall"] = wall
print("RESULT " + json.dumps(out))
"""


def run(engine: str, n: int, groups: int, cap: float) -> dict:
    code = (
        CHILD.replace("{n}", str(n)).replace("{G}", str(groups))
        .replace("{engine!r}", repr(engine)).replace("{timeout}", str(cap))
    )  # fmt: skip
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=cap + 120
        )
    except subprocess.TimeoutExpired:
        return {"error": f"over {cap + 120:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:200],
            "wall": time.perf_counter() - t0}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--groups", type=int, default=50_000)
    ap.add_argument("--lme4-rows", type=int, default=20_000)
    ap.add_argument("--lme4-cap", type=float, default=900.0, help="seconds lme4 may take")
    ap.add_argument("--engines", default="python,glmm,lme4")
    args = ap.parse_args()
    small_groups = max(2, args.groups * args.lme4_rows // args.rows)
    rows = []
    for engine in args.engines.split(","):
        sizes = [(args.lme4_rows, small_groups)]
        if engine != "lme4":
            sizes.append((args.rows, args.groups))
        for n, G in sizes:
            res = run(engine, n, G, args.lme4_cap)
            rows.append((engine, n, G, res))
            print(json.dumps({"engine": engine, "rows": n, "groups": G, **res}), flush=True)
    print()
    print(f"{'engine':<8} {'rows':>9} {'groups':>7} {'time s':>8} {'NB theta':>9} "
          f"{'RE sd':>7} {'-2logLik':>14}  beta")  # fmt: skip
    for engine, n, G, r in rows:
        if "error" in r:
            print(f"{engine:<8} {n:>9} {G:>7}  error: {r['error']}")
            continue
        sd = "" if r.get("sd") is None else f"{r['sd']:.4f}"
        print(f"{engine:<8} {n:>9} {G:>7} {r['wall']:8.1f} {r['nb_theta']:9.4f} {sd:>7} "
              f"{r['m2ll']:14.3f}  {[round(b, 4) for b in r['beta']]}")  # fmt: skip


if __name__ == "__main__":
    main()
