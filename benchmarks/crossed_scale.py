"""Crossed random effects at scale (issue 15, target 1): `y ~ x + (1|a) + (1|b)`, side by side.

    python benchmarks/crossed_scale.py [--sizes check,5k,20k] [--engines ...] [--cap SECONDS]
                                       [--out benchmarks/results/crossed_scale.json]

Sizes (rows, levels of a, levels of b; a and b crossed at random, y = 1 + x/2 + a + b + noise):

    check  2e4 rows, 2e3 × 100    every engine, lme4 included: the others are checked against it
    5k     1e6 rows, 1e5 × 5e3    the issue's main size (lme4 does not finish in 15 minutes)
    20k    1e6 rows, 1e5 × 2e4    the dense block is 3.2 GB; ours and glmm (within --cap)

Engines, each in its own subprocess (time of the fit call, peak RSS above the process's size
just before it, from VmHWM):

    mixbridge  the Python engine (project venv); also reports CPU time, the load average, and
               where the time goes: criterion evaluations, the dense Cholesky factorizations
               (count, time each), the gradients' inverses (trtri + lauum), the final state
               (its factorization), and the rest
    glmm       glmm 0.6.2 (Rust; the project's `peers` extra, in the project venv)
    interlace  interlace-lme 0.3.2 in its own venv, benchmarks/.venv-interlace (Python 3.13;
               created by `--setup`, with scikit-sparse when it builds; not committed)
    lme4       lme4 1.1-31 through Rscript, timed inside R

Every engine's θ is scored with lme4's REML criterion (mixbridge's `lmer_objective`, the same
deviance function; checked against lme4's own devfun in tests/test_crossed_scale.py) at the
check size, so "criterion − lme4's" is comparable across engines.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
INTERLACE_VENV = HERE / ".venv-interlace"
SIZES = {
    "check": (20_000, 2_000, 100),
    "5k": (1_000_000, 100_000, 5_000),
    "20k": (1_000_000, 100_000, 20_000),
}
FORMULA = "y ~ x + (1|a) + (1|b)"


def make_data(n: int, na: int, nb: int, seed: int = 15) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, na, n).astype(np.int32)
    b = rng.integers(0, nb, n).astype(np.int32)
    x = rng.normal(size=n)
    y = 1.0 + 0.5 * x + 0.8 * rng.normal(size=na)[a] + 0.5 * rng.normal(size=nb)[b]
    y += rng.normal(size=n)
    return {"y": y, "x": x, "a": a, "b": b}


def write(directory: Path, cols: dict[str, np.ndarray]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for k, v in cols.items():
        v.tofile(directory / f"{k}.bin")
    meta = {"n": int(cols["y"].size), "columns": {k: str(v.dtype) for k, v in cols.items()}}
    (directory / "meta.json").write_text(json.dumps(meta))


def read(directory: Path) -> dict[str, np.ndarray]:
    meta = json.loads((directory / "meta.json").read_text())
    return {k: np.fromfile(directory / f"{k}.bin", dtype=t) for k, t in meta["columns"].items()}


# ---------------------------------------------------------------------------------------------
# Workers (run in a subprocess: `crossed_scale.py --worker ENGINE DIR`)


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _hwm_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _frame(cols: dict[str, np.ndarray], strings: bool = False):
    import pandas as pd

    df = pd.DataFrame({"y": cols["y"], "x": cols["x"]})
    for g in ("a", "b"):
        levels = int(cols[g].max()) + 1
        names = [f"{g}{i}" for i in range(levels)] if strings else list(range(levels))
        df[g] = pd.Categorical.from_codes(cols[g], names)
    return df


def _timed_lapack() -> dict[str, list[float]]:
    """Wrap the engine's LAPACK entry points with timers (module functions, looked up per call)."""
    from mixbridge.python_impl import pls_augmented, pls_blocked

    times: dict[str, list[float]] = {
        "profile_potrf": [],
        "grad_inverse": [],
        "grad_trtri": [],  # one per gradient (lauum follows it only below SPARSE_GRADIENT_ORDER)
        "final": [],
    }

    def wrap(mod, name, key):
        inner = getattr(mod, name)

        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                times[key].append(time.perf_counter() - t)

        setattr(mod, name, timed)

    wrap(pls_augmented, "_dpotrf", "profile_potrf")
    wrap(pls_augmented, "_dtrtri", "grad_trtri")
    wrap(pls_augmented, "_dlauum", "grad_inverse")
    wrap(pls_blocked, "_dpotrf", "final")
    wrap(pls_blocked, "_dpotri", "final")
    return times


def worker_mixbridge(cols: dict[str, np.ndarray]) -> dict:
    import mixbridge

    df = _frame(cols)
    if os.environ.get("CROSSED_SCALE_SINGLE_THREAD"):  # on an oversubscribed machine
        from mixbridge.python_impl import pls

        pls.BIG_BLOCK_ORDER = 10**9
    # warm-up on a few rows: imports and BLAS set-up stay out of the timing (as benchmarks/run.py)
    mixbridge.lmer(FORMULA, _frame(make_data(2000, 200, 20, seed=1)), engine="python")
    times = _timed_lapack()
    rss0 = _rss_mb()
    load0 = os.getloadavg()[0]
    t, cpu = time.perf_counter(), time.process_time()
    fit = mixbridge.lmer(FORMULA, df, engine="python")
    elapsed = time.perf_counter() - t
    cpu = time.process_time() - cpu
    pot = times["profile_potrf"]
    big = [x for x in pot if x > 0.2 * max(pot)] if pot else []  # the dense ones (not probes)
    one = float(np.median(big)) if big else float("nan")
    n_evals = int(fit.optimizer["n_evals"])
    return {
        "time": elapsed,
        "cpu": cpu,
        "load": [load0, os.getloadavg()[0]],  # 1-minute load average before and after
        "peak_mb": _hwm_mb() - rss0,
        "theta": np.asarray(fit.theta).tolist(),
        "beta": np.asarray(fit.fixef).tolist(),
        "sigma": float(fit.sigma),
        "criterion": float(fit.reml_criterion),
        "start": list(fit.optimizer["start"]),
        "breakdown": {
            "evaluations": n_evals,
            "dense_factorizations": len(big),
            "one_factorization_s": one,
            "factorizations_s": float(np.sum(pot)),
            "gradients": len(times["grad_trtri"]),
            "gradient_inverse_s": float(
                np.sum(times["grad_inverse"]) + np.sum(times["grad_trtri"])
            ),
            "final_state_s": float(np.sum(times["final"])),
            "rest_s": elapsed
            - float(
                np.sum(pot)
                + np.sum(times["grad_inverse"])
                + np.sum(times["grad_trtri"])
                + np.sum(times["final"])
            ),
            "floor_s": n_evals * one,
            "time_over_floor": elapsed / (n_evals * one) if big else float("nan"),
            "time_over_dense_floor": elapsed / (len(big) * one) if big else float("nan"),
        },
    }


def worker_glmm(cols: dict[str, np.ndarray]) -> dict:
    import glmm

    data = {k: v.astype(np.int64) if k in ("a", "b") else v for k, v in cols.items()}
    small = {
        k: v.astype(np.int64) if k in ("a", "b") else v
        for k, v in make_data(2000, 200, 20, 1).items()
    }
    glmm.fit(small, FORMULA, reml=True, satterthwaite=False)  # warm-up
    rss0 = _rss_mb()
    load0 = os.getloadavg()[0]
    t, cpu = time.perf_counter(), time.process_time()
    f = glmm.fit(data, FORMULA, reml=True, satterthwaite=False)
    elapsed = time.perf_counter() - t
    cpu = time.process_time() - cpu
    disp = float(f.dispersion)
    tau2 = [float(np.asarray(v).ravel()[0]) for v in f.varcorr]
    return {
        "time": elapsed,
        "cpu": cpu,
        "load": [load0, os.getloadavg()[0]],
        "peak_mb": _hwm_mb() - rss0,
        "theta": [float(np.sqrt(v / disp)) for v in tau2],
        "beta": np.asarray(f.beta).tolist(),
        "sigma": float(np.sqrt(disp)),
    }


def worker_interlace(cols: dict[str, np.ndarray]) -> dict:
    import interlace

    try:
        from interlace.profiled_reml import _try_cholmod

        cholmod = _try_cholmod() is not None
    except ImportError:
        cholmod = False
    df = _frame(cols, strings=True)
    interlace.fit("y ~ x", _frame(make_data(2000, 200, 20, 1), strings=True), groups=["a", "b"])
    rss0 = _rss_mb()
    t = time.perf_counter()
    r = interlace.fit("y ~ x", df, groups=["a", "b"], method="REML")
    elapsed = time.perf_counter() - t
    vc = r.variance_components
    scale = float(r.scale)
    return {
        "time": elapsed,
        "peak_mb": _hwm_mb() - rss0,
        "theta": [float(np.sqrt(vc["a"] / scale)), float(np.sqrt(vc["b"] / scale))],
        "beta": np.asarray(r.fe_params).tolist(),
        "sigma": float(np.sqrt(scale)),
        "cholmod": cholmod,
    }


R_SCRIPT = r"""
suppressMessages({library(lme4); library(jsonlite)})
args <- commandArgs(TRUE); d <- args[1]
meta <- fromJSON(file.path(d, "meta.json"))
rd <- function(nm, kind) { con <- file(file.path(d, paste0(nm, ".bin")), "rb")
  on.exit(close(con)); if (kind == "int32") readBin(con, "integer", meta$n, size = 4)
  else readBin(con, "double", meta$n) }
df <- data.frame(y = rd("y", "float64"), x = rd("x", "float64"))
df$a <- factor(rd("a", "int32")); df$b <- factor(rd("b", "int32"))
invisible(gc(reset = TRUE))
t <- system.time(f <- lmer(y ~ x + (1|a) + (1|b), df, REML = TRUE))[["elapsed"]]
mem <- sum(gc()[, 6])  # "max used" (MB) since the reset
cat(toJSON(list(time = t, peak_mb = mem, theta = unname(getME(f, "theta")),
  beta = unname(fixef(f)), sigma = sigma(f), criterion = unname(getME(f, "devcomp")$cmp[["REML"]])),
  digits = NA, auto_unbox = TRUE))
"""


def run_engine(engine: str, directory: Path, cap: float) -> dict:
    if engine == "lme4":
        cmd = ["Rscript", "-e", R_SCRIPT, str(directory)]
    else:
        python = sys.executable
        if engine == "interlace":
            python = str(INTERLACE_VENV / "bin" / "python")
            if not Path(python).exists():
                return {"error": "not installed (run with --setup)"}
        cmd = [python, str(Path(__file__).resolve()), "--worker", engine, str(directory)]
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=cap)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish in {cap:.0f} s"}
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:300]}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall"] = time.perf_counter() - t
    return out


def setup() -> None:
    """The interlace venv: Python ≥ 3.12 (pyenv's 3.13 here, else python3.13 on PATH)."""
    py = next(
        (
            p
            for p in (
                "/root/.pyenv/versions/3.13.0/bin/python",
                "python3.13",
                "python3.12",
            )
            if subprocess.run(["which", p], capture_output=True).returncode == 0 or Path(p).exists()
        ),
        None,
    )
    if py is None:
        raise SystemExit("interlace-lme needs Python >= 3.12: none found")
    if not (INTERLACE_VENV / "bin" / "python").exists():
        subprocess.run([py, "-m", "venv", str(INTERLACE_VENV)], check=True)
    pip = [str(INTERLACE_VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "numpy", "pandas", "interlace-lme==0.3.2"], check=True)
    # the optional sparse Cholesky (needs SuiteSparse's headers: Debian's libsuitesparse-dev)
    if subprocess.run([*pip, "scikit-sparse>=0.4"]).returncode != 0:
        print("scikit-sparse did not install: interlace runs without CHOLMOD", file=sys.stderr)


def score(cols: dict[str, np.ndarray], theta: list[float]) -> float:
    """lme4's REML criterion at θ (mixbridge's lmer_objective: lme4's deviance function)."""
    import mixbridge

    return float(mixbridge.lmer_objective(FORMULA, _frame(cols), theta=theta, reml=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", nargs=2, metavar=("ENGINE", "DIR"))
    ap.add_argument("--setup", action="store_true")
    ap.add_argument("--sizes", default="check,5k,20k")
    ap.add_argument("--engines", default="mixbridge,glmm,interlace,lme4")
    ap.add_argument("--cap", type=float, default=900.0, help="seconds per engine and size")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "crossed_scale.json")
    args = ap.parse_args()
    if args.worker:
        engine, directory = args.worker
        fn = {"mixbridge": worker_mixbridge, "glmm": worker_glmm, "interlace": worker_interlace}
        print(json.dumps(fn[engine](read(Path(directory)))))
        return
    if args.setup:
        setup()
    results = []
    engines = args.engines.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            n, na, nb = SIZES[size]
            d = Path(tmp) / size
            cols = make_data(n, na, nb)
            write(d, cols)
            for engine in engines:
                if engine == "lme4" and size != "check":
                    continue  # lme4 did not finish in 15 minutes at 5k (issue 15)
                if engine == "interlace" and size == "20k":
                    continue  # the dense 2e4 block: ours and glmm's (within --cap)
                r = run_engine(engine, d, args.cap)
                r.update(size=size, engine=engine, n=n, levels=[na, nb])
                if "theta" in r and size == "check":
                    r["criterion_at_theta"] = score(cols, r["theta"])
                results.append(r)
                print(json.dumps(r), flush=True)
    check = {r["engine"]: r for r in results if r["size"] == "check" and "theta" in r}
    if "lme4" in check:
        ref = check["lme4"]
        for r in check.values():
            r["vs_lme4"] = {
                "criterion": r["criterion_at_theta"] - ref["criterion"],
                "theta": float(np.max(np.abs(np.subtract(r["theta"], ref["theta"])))),
                "beta": float(np.max(np.abs(np.subtract(r["beta"], ref["beta"])))),
            }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(table(results))


def table(results: list[dict]) -> str:
    lines = [
        "| size | engine | time | CPU | peak RSS | θ | vs lme4 (criterion, max θ diff) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['size']} | {r['engine']} | {r['error']} | | | | |")
            continue
        vs = r.get("vs_lme4")
        vs_txt = f"{vs['criterion']:+.2e}, {vs['theta']:.1e}" if vs else ""
        theta = ", ".join(f"{t:.5f}" for t in r["theta"])
        cpu = f"{r['cpu']:.1f} s" if "cpu" in r else ""
        lines.append(
            f"| {r['size']} | {r['engine']} | {r['time']:.1f} s | {cpu} "
            f"| {r['peak_mb'] / 1024:.2f} GB | {theta} | {vs_txt} |"
        )
    for r in results:
        if "breakdown" in r:
            b = r["breakdown"]
            lines.append(
                f"\nmixbridge {r['size']}: wall {r['time']:.1f} s, CPU {r.get('cpu', 0):.1f} s, "
                f"load {r.get('load', ['?'])[0]}; {b['evaluations']} evaluations, "
                f"{b['dense_factorizations']} dense factorizations of "
                f"{b['one_factorization_s']:.2f} s ({b['factorizations_s']:.1f} s), "
                f"{b.get('gradients', '?')} gradients (inverses {b['gradient_inverse_s']:.1f} s),"
                f" final state {b['final_state_s']:.1f} s, rest {b['rest_s']:.1f} s; time / "
                f"(evaluations × one factorization) = {b['time_over_floor']:.2f}, / (dense "
                f"evaluations × one) = {b.get('time_over_dense_floor', float('nan')):.2f}"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
