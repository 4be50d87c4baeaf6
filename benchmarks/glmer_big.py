"""Binomial glmer `y ~ x1 + x2 + (1|g)` at 1e7 rows / 5e5 groups: mixbridge's public call
against the glmm peer (issue 15, target 4: at least 2x faster, peak memory under 2x the input
columns).

    python benchmarks/glmer_big.py --rows 10000000 --groups 500000

Each engine runs in a fresh process on the benchmark's data (`datasets.glmm_data`), in the
container its API takes (our DataFrame, glmm's dict of columns), built before the memory
baseline: peak memory is the process's peak RSS during the fit minus its RSS just before (as
`run.py`), time is wall clock and process CPU. The estimates of both are printed side by side.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = r"""
import json, sys, time
sys.path.insert(0, {here!r})
import numpy as np
from datasets import glmm_data

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1e3

c = glmm_data({n}, {G})
engine = {engine!r}
if engine == "mixbridge":
    import pandas as pd
    import mixbridge
    data = pd.DataFrame({{"y": c["y"], "x1": c["x1"], "x2": c["x2"], "g": c["g"]}})
    input_mb = float(data.memory_usage(index=False).sum()) / 1e6
    mixbridge.glmer("y ~ x1 + x2 + (1|g)", data.iloc[:400].reset_index(drop=True),
                    family="binomial")
    fit_fn = lambda: mixbridge.glmer("y ~ x1 + x2 + (1|g)", data, family="binomial")
else:
    import glmm
    data = {{k: v.astype(np.int64) if k == "g" else v for k, v in c.items()}}
    input_mb = float(sum(v.nbytes for v in data.values())) / 1e6
    glmm.fit({{k: v[:400] for k, v in data.items()}}, "y ~ x1 + x2 + (1|g)", family="binomial")
    fit_fn = lambda: glmm.fit(data, "y ~ x1 + x2 + (1|g)", family="binomial")
del c
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak RSS to the current RSS
base = status("VmRSS")
t0, c0 = time.perf_counter(), time.process_time()
fit = fit_fn()
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
peak = status("VmHWM") - base
if engine == "mixbridge":
    theta, beta = float(fit.theta[0]), fit.fixef.to_numpy().tolist()
    extra = fit.extra.get("path", "general")
else:
    theta = float(np.sqrt(float(np.asarray(fit.varcorr[0]).ravel()[0])))  # τ (binomial: θ)
    beta = np.ravel(fit.beta).tolist()
    extra = ""
print(json.dumps(dict(engine=engine, wall=wall, cpu=cpu, peak_mb=peak, input_mb=input_mb,
                      theta=theta, beta=beta, path=extra)))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--groups", type=int, default=500_000)
    ap.add_argument("--engines", default="mixbridge,glmm")
    a = ap.parse_args()
    rows = []
    for engine in a.engines.split(","):
        code = CHILD.format(here=str(HERE), n=a.rows, G=a.groups, engine=engine)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{engine} failed: {out.stderr.strip()[-500:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(json.dumps(r), flush=True)
    print(f"\nrows {a.rows:,}  groups {a.groups:,}")
    print("| engine | wall s | CPU s | peak MB over input | input MB | peak / input | θ |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['engine']} {r['path']} | {r['wall']:.1f} | {r['cpu']:.1f} | "
            f"{r['peak_mb']:.0f} | {r['input_mb']:.0f} | {r['peak_mb'] / r['input_mb']:.2f} | "
            f"{r['theta']:.6f} |"
        )
    if len(rows) == 2:
        print(
            f"glmm / mixbridge wall = {rows[1]['wall'] / rows[0]['wall']:.2f}, "
            f"CPU = {rows[1]['cpu'] / rows[0]['cpu']:.2f}"
        )


if __name__ == "__main__":
    main()
