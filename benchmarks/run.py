"""The benchmark suite: every engine side by side on the same data, checked against R in the run.

    python benchmarks/run.py          # full: LMM 1e3..1e7, GLMM, bayesglm G=1e2..1e5, InstEval
    python benchmarks/run.py --quick    # < 2 minutes: small sizes; peers only if already installed
    python benchmarks/run.py --tiny     # a few seconds per engine: what the test suite runs

Engines: our Python engine (`mixbridge`: the public lmer/glmer/bayesglm, engine="python"), its
O(G) core on raw columns (`mixbridge-core`), lme4/arm through the bridge (`bridge-embedded`,
`bridge-subprocess`), lme4/arm timed inside R (`R (in R)`, from r_fit.R: the reference every
other engine's estimates are checked against), statsmodels MixedLM, the Rust-backed PyPI peers
(glmm, mixedlm-rs, mixedlm: in benchmarks/.venv, made by setup.sh) and the numpy one-pass
`floor` (bincount group sums of y and the x columns).

Each (engine, data set) runs in a fresh process (worker.py): median of up to 3 repeats after a
warm-up, peak memory of the fit (RSS), estimates. Sizes run in increasing order; an engine is
skipped at a size where its time extrapolated from the previous size (linear in n, or the
observed growth if worse) exceeds --budget seconds, and the table says so. A result whose
estimates disagree with R's beyond the stated tolerances is marked MISMATCH (a fast wrong answer
is a failure). Output: results/latest.json, results/latest.md, results/lmm_time.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import datasets  # noqa: E402

PEER_PYTHON = HERE / ".venv" / "bin" / "python"
PROJECT_PYTHON = Path(sys.executable)
PEERS = ["glmm", "mixedlm-rs", "mixedlm", "statsmodels"]
R_REF = "R (in R)"

# model -> engines that implement it (the R reference is run separately)
MODEL_ENGINES = {
    "lmm": [
        "floor",
        "mixbridge-core",
        "mixbridge",
        "bridge-embedded",
        "bridge-subprocess",
        "statsmodels",
        "glmm",
        "mixedlm-rs",
        "mixedlm",
    ],
    "glmm": ["floor", "mixbridge", "bridge-embedded", "glmm", "mixedlm"],
    "bayesglm": ["floor", "mixbridge", "bridge-embedded"],
}

# (rows, groups); bayesglm sizes are G with 10 rows per group
PLANS = {
    "full": {
        "lmm": [(10**3, 50), (10**4, 500), (10**5, 5000), (10**6, 50_000), (10**7, 500_000)],
        "glmm": [(10**4, 500), (10**5, 5000), (10**6, 50_000)],
        "bayesglm": [(10 * G, G) for G in (100, 500, 1000, 10_000, 100_000)],
        "insteval": True,
    },
    "quick": {
        "lmm": [(10**4, 500), (10**5, 5000)],
        "glmm": [(10**4, 500)],
        "bayesglm": [(1000, 100)],
        "insteval": False,
    },
    "tiny": {
        "lmm": [(2000, 100)],
        "glmm": [(2000, 100)],
        "bayesglm": [(400, 40)],
        "insteval": False,
    },
}

# Agreement with R required of every timed fit (else MISMATCH), and why:
TOL = {
    # lmer: the criterion is flat at the optimum and lme4 stops at xtol 1e-8 (θ good to ~1e-6),
    # so β agrees to a small fraction of its SE and θ, σ to ~1e-5 relative; 1e-3 SE / 1e-4 rel
    # leaves room for peers' optimizers (statsmodels stops earlier) without hiding real errors.
    "lmm": {"fixef_se": 1e-3, "theta_rel": 1e-4, "sigma_rel": 1e-4},
    # glmer: Laplace estimates depend on the optimizer path (lme4's Nelder-Mead stops at
    # FtolAbs 1e-5): ~1e-3 relative is the expected agreement (lme4_spec §5).
    "glmm": {"fixef_se": 2e-2, "theta_rel": 1e-2},
    # bayesglm: a deterministic IRLS/EM with epsilon 1e-8 on the deviance: 1e-5 of the SE.
    "bayesglm": {"coef_se": 1e-5},
}


def check(model: str, est: dict | None, ref: dict | None) -> str:
    """'ok', 'MISMATCH: ...', or why there is nothing to check."""
    if est is None:
        return "no estimates"
    if model == "lmm" and "fixef" not in est:
        return "n/a (floor)"
    if "n_sums" in est:
        return "n/a (floor)"
    if ref is None:
        return "no R reference at this size"
    tol = TOL[model]
    bad = []
    if model == "bayesglm":
        coef = np.atleast_1d(np.asarray(est["coef"], float))
        rc, se = np.atleast_1d(np.asarray(ref["coef"], float)), np.atleast_1d(ref["se"])
        if coef.shape != rc.shape:
            return f"MISMATCH: {coef.size} coefficients vs R's {rc.size}"
        worst = float(np.max(np.abs(coef - rc) / se))
        if worst > tol["coef_se"]:
            bad.append(f"coef off by {worst:.2g} SE")
        return "ok" if not bad else "MISMATCH: " + "; ".join(bad)
    fe = np.atleast_1d(np.asarray(est["fixef"], float))
    rfe = np.atleast_1d(np.asarray(ref["fixef"], float))
    se = np.atleast_1d(np.asarray(ref["se"], float))
    if fe.shape != rfe.shape:
        return f"MISMATCH: {fe.size} fixed effects vs R's {rfe.size}"
    worst = float(np.max(np.abs(fe - rfe) / se))
    if worst > tol["fixef_se"]:
        bad.append(f"fixef off by {worst:.2g} SE")
    th = np.atleast_1d(np.asarray(est["theta"], float))
    rth = np.atleast_1d(np.asarray(ref["theta"], float))
    if th.shape != rth.shape:
        bad.append(f"theta has {th.size} values vs R's {rth.size}")
    else:
        rel = float(np.max(np.abs(th - rth) / np.maximum(np.abs(rth), 1e-8)))
        if rel > tol["theta_rel"]:
            bad.append(f"theta off by {rel:.2g} rel")
    if "sigma_rel" in tol and "sigma" in est:
        rel = abs(est["sigma"] - ref["sigma"]) / ref["sigma"]
        if rel > tol["sigma_rel"]:
            bad.append(f"sigma off by {rel:.2g} rel")
    if bad and _lower_criterion(est, ref):
        # Same objective (lme4's Laplace deviance / REML criterion: our engine reproduces lme4's
        # deviance function, tests/test_glmer_*), a lower value at this engine's estimates: the
        # parameter gap is lme4 stopping early on a flat surface, not an error.
        gap = ref["criterion"] - est["criterion"]
        why = f"at a criterion {gap:.3g} below lme4's (lme4 stopped early)"
        return f"explained: {'; '.join(bad)}, {why}"
    return "ok" if not bad else "MISMATCH: " + "; ".join(bad)


def _lower_criterion(est: dict, ref: dict) -> bool:
    """This engine's criterion (−2 logLik on lme4's scale) is below R's beyond rounding."""
    a, b = est.get("criterion"), ref.get("criterion")
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
        return False
    return a < b - 1e-9 * abs(b)


# ---------------------------------------------------------------------------------------------
# Running


def engine_available(engine: str) -> str | None:
    """None if the engine can run here, else why not."""
    if engine in ("glmm", "mixedlm-rs", "mixedlm"):
        if not PEER_PYTHON.exists():
            return "peers not installed (run benchmarks/setup.sh)"
        mod = engine.replace("-", "_")
        r = subprocess.run([str(PEER_PYTHON), "-c", f"import {mod}"], capture_output=True)
        return None if r.returncode == 0 else f"{engine} not importable in benchmarks/.venv"
    if engine.startswith("bridge") and shutil.which("Rscript") is None:
        return "R not installed"
    return None


def python_for(engine: str) -> Path:
    return PEER_PYTHON if engine in ("glmm", "mixedlm-rs", "mixedlm") else PROJECT_PYTHON


def run_worker(
    engine: str, model: str, directory: Path, repeats: int, timeout: float, repeat_cap: float
) -> dict:
    cmd = [str(python_for(engine)), str(HERE / "worker.py"), engine, model, str(directory)]
    cmd += [str(repeats), str(repeat_cap)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"error": f"worker failed (rc={proc.returncode}): {proc.stderr.strip()[-300:]}"}
    return json.loads(lines[-1])


def run_r(
    model: str, dirs: list[Path], repeats: int, timeout: float, cap: float = 60.0
) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        cmd = ["Rscript", "--vanilla", str(HERE / "r_fit.R"), model, str(out), str(repeats)]
        cmd.append(str(cap))
        try:
            proc = subprocess.run(
                cmd + [str(d) for d in dirs], capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            return [{"error": f"timed out after {timeout:.0f} s"}]
        if proc.returncode != 0 or not out.exists():
            return [{"error": f"Rscript failed: {proc.stderr.strip()[-300:]}"}]
        res = json.loads(out.read_text())
        res = res if isinstance(res, list) else [res]
        for r in res:  # jsonlite unboxes length-1 vectors
            if "times" in r and not isinstance(r["times"], list):
                r["times"] = [r["times"]]
        return res


def predicted(history: list[tuple[int, float]], n: int) -> float | None:
    """Time at n extrapolated from the last sizes: linear in n, or the observed growth if worse."""
    if not history:
        return None
    n1, t1 = history[-1]
    k = 1.0
    if len(history) >= 2:
        n0, t0 = history[-2]
        if t0 > 0.05 and t1 > t0 and n1 > n0:
            k = max(k, math.log(t1 / t0) / math.log(n1 / n0))
    return t1 * (n / n1) ** k


def memory_guard(engine: str, model: str, n: int, G: int) -> str | None:
    """Skip fits that would need more memory than the machine has (dense n x G designs)."""
    if model == "bayesglm" and engine in ("bridge-embedded", R_REF):
        gb = n * (G + 2) * 8 * 4 / 1e9  # arm's model matrix and its QR copies
        if gb > 6:
            return f"arm builds a dense {n} x {G + 1} model matrix (~{gb:.0f} GB with copies)"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small sizes, < 2 minutes")
    mode.add_argument("--tiny", action="store_true", help="one tiny size per model (tests)")
    ap.add_argument(
        "--budget", type=float, default=None, help="skip fits predicted longer (s; 300, quick 15)"
    )
    ap.add_argument("--models", nargs="+", default=["lmm", "glmm", "bayesglm", "insteval"])
    ap.add_argument("--engines", nargs="+", default=None, help="subset of engines")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "latest.json")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="only these row counts")
    ap.add_argument(
        "--skip-reference", action="store_true", help="do not run R (e.g. with --merge)"
    )
    ap.add_argument(
        "--merge",
        action="store_true",
        help="update --out in place: replace its records of the (model, n, engine) run now",
    )
    args = ap.parse_args(argv)
    plan_name = "tiny" if args.tiny else "quick" if args.quick else "full"
    plan = PLANS[plan_name]
    repeats = 1 if args.tiny else 3
    if args.budget is None:
        args.budget = 300.0 if plan_name == "full" else 15.0
    # Stop repeating once this much time went into one (engine, size): the median of fewer
    # repeats of a long fit is still representative, and --quick must stay short.
    args.repeat_cap = 60.0 if plan_name == "full" else 4.0
    started = time.time()

    records: list[dict] = []
    data_root = Path(tempfile.mkdtemp(prefix="mixbridge-bench-"))
    try:
        for model in [m for m in args.models if m in ("lmm", "glmm", "bayesglm")]:
            records += run_model(model, plan[model], data_root, repeats, args)
        if "insteval" in args.models and plan["insteval"]:
            records += run_insteval(args)
    finally:
        shutil.rmtree(data_root, ignore_errors=True)
    if args.merge and args.out.exists():
        old = json.loads(args.out.read_text())["results"]
        new = {(r["model"], r["n"], r["engine"]): r for r in records}
        merged = [new.pop((r["model"], r["n"], r["engine"]), r) for r in old]
        records = merged + list(new.values())
        recheck(records)  # fits merged in with --skip-reference are checked against the file's R
    add_ratios(records)
    report = {
        "mode": plan_name,
        "machine": machine_info(),
        "versions": versions_info(),
        "budget_s": args.budget,
        "wall_s": time.time() - started,
        "tolerances": TOL,
        "results": records,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=float))
    table = markdown(records)
    args.out.with_suffix(".md").write_text(table + "\n")
    print(table)
    if not args.no_plot:
        plot(records, args.out.parent / "lmm_time.png")
    print(f"\nwall time {report['wall_s']:.0f} s; results in {args.out}")
    # a fast wrong answer (or a crashed fit) fails the run, so CI can run --quick as a check
    bad = [r for r in records if "error" in r or str(r.get("check", "")).startswith("MISMATCH")]
    for r in bad:
        print(f"FAILED: {r['model']} n={r['n']} {r['engine']}: {r.get('error') or r['check']}")
    return 1 if bad else 0


def run_model(model: str, sizes: list, root: Path, repeats: int, args) -> list[dict]:
    engines = [e for e in MODEL_ENGINES[model] if args.engines is None or e in args.engines]
    if args.sizes:
        sizes = [(n, G) for n, G in sizes if n in args.sizes]
    records = []
    ref_hist: list[tuple[int, float]] = []
    refs: dict[int, dict] = {}
    dirs = {}
    for n, G in sizes:
        d = root / f"{model}-{n}-{G}"
        datasets.write(d, datasets.make(model, n, G), {"model": model, "G": G})
        dirs[n] = d
    # The R reference first (its estimates check everyone else).
    for n, G in [] if args.skip_reference else sizes:
        rec = {"model": model, "n": n, "groups": G, "engine": R_REF}
        why = memory_guard(R_REF, model, n, G)
        guess = predicted(ref_hist, n)
        # The reference gets 4x the budget: without it nothing at that size can be checked.
        if why is None and guess is not None and guess > 4 * args.budget:
            why = f"predicted {guess:.0f} s > {4 * args.budget:.0f} s (4x budget for the reference)"
        if why:
            rec["skipped"] = why
        else:
            timeout = 4 * args.budget * repeats + 120
            res = run_r(model, [dirs[n]], repeats, timeout, args.repeat_cap)[0]
            if "error" in res:
                rec["error"] = res["error"]
            else:
                rec.update(median=res["median"], times=res["times"], peak_mb=res["peak_mb"])
                rec["estimates"] = {k: v for k, v in res.items() if k not in ("times", "dir")}
                refs[n] = rec["estimates"]
                ref_hist.append((n, res["median"]))
                rec["check"] = "reference"
        records.append(rec)
        print(f"[{model} n={n}] {R_REF}: {status(rec)}", flush=True)
    for engine in engines:
        why_engine = engine_available(engine)
        hist: list[tuple[int, float]] = []
        for n, G in sizes:
            rec = {"model": model, "n": n, "groups": G, "engine": engine}
            why = why_engine or memory_guard(engine, model, n, G)
            guess = predicted(hist, n)
            if why is None and guess is not None and guess > args.budget:
                why = f"predicted {guess:.0f} s > {args.budget:.0f} s budget"
            if why:
                rec["skipped"] = why
                records.append(rec)
                print(f"[{model} n={n}] {engine}: skipped ({why})", flush=True)
                continue
            res = run_worker(
                engine, model, dirs[n], repeats, args.budget * repeats + 120, args.repeat_cap
            )
            if "error" in res:
                rec["error"] = res["error"]
            else:
                rec.update(median=res["median"], times=res["times"], peak_mb=res["peak_mb"])
                rec["estimates"] = res["estimates"]
                rec["check"] = check(model, res["estimates"], refs.get(n))
                hist.append((n, res["median"]))
                if engine.startswith("bridge-") and n in refs:
                    r_rec = next(r for r in records if r["engine"] == R_REF and r["n"] == n)
                    rec["transfer_s"] = max(res["median"] - r_rec["median"], 0.0)
            records.append(rec)
            print(f"[{model} n={n}] {engine}: {status(rec)}", flush=True)
    return records


def run_insteval(args) -> list[dict]:
    """InstEval crossed REML: lme4 in R vs our general lmer path (the data come from R)."""
    recs = []
    res = run_r("insteval", [], 1, timeout=args.budget + 120)[0]
    ref = {"model": "insteval", "n": 73421, "groups": 4114, "engine": R_REF}
    if "error" in res:
        ref["error"] = res["error"]
    else:
        ref.update(median=res["median"], times=res["times"], peak_mb=res["peak_mb"])
        ref["estimates"] = {k: v for k, v in res.items() if k not in ("times", "dir")}
        ref["check"] = "reference"
    recs.append(ref)
    rec = {"model": "insteval", "n": 73421, "groups": 4114, "engine": "mixbridge"}
    code = (
        "import json,time,resource,warnings;warnings.simplefilter('ignore');import mixbridge;"
        "from mixbridge.bridge.datasets import load_r_dataset as L;"
        "d=L('InstEval','lme4');t=time.perf_counter();"
        "f=mixbridge.lmer('y ~ service + (1|s) + (1|d) + (1|dept)',d,reml=True);"
        "t=time.perf_counter()-t;"
        "print(json.dumps({'median':t,'times':[t],'fixef':f.fixef.tolist(),"
        "'theta':f.theta.tolist(),'sigma':f.sigma,'criterion':f.criterion,"
        "'peak_mb':resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024}))"
    )
    try:
        proc = subprocess.run(
            [str(PROJECT_PYTHON), "-c", code],
            capture_output=True,
            text=True,
            timeout=args.budget + 120,
        )
        out = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if not out:
            rec["error"] = proc.stderr.strip()[-300:]
        else:
            r = json.loads(out[-1])
            rec.update(median=r["median"], times=r["times"], peak_mb=r["peak_mb"])
            rec["estimates"] = {k: r[k] for k in ("fixef", "theta", "sigma", "criterion")}
            rec["check"] = check("lmm", rec["estimates"], ref.get("estimates"))
            rec["note"] = "peak_mb is the process peak (data loading included)"
    except subprocess.TimeoutExpired:
        rec["error"] = f"timed out after {args.budget + 120:.0f} s"
    recs.append(rec)
    for r in recs:
        print(f"[insteval] {r['engine']}: {status(r)}", flush=True)
    return recs


def recheck(records: list[dict]) -> None:
    """Check every fit against the R reference of its (model, n) among `records`."""
    refs = {
        (r["model"], r["n"]): r["estimates"]
        for r in records
        if r["engine"] == R_REF and r.get("estimates")
    }
    for r in records:
        if r["engine"] != R_REF and "estimates" in r:
            model = "lmm" if r["model"] == "insteval" else r["model"]  # an LMM, checked as one
            r["check"] = check(model, r["estimates"], refs.get((r["model"], r["n"])))


def status(rec: dict) -> str:
    if "skipped" in rec:
        return f"skipped ({rec['skipped']})"
    if "error" in rec:
        return f"ERROR {rec['error']}"
    return f"{rec['median']:.4g} s, {rec.get('peak_mb', float('nan')):.0f} MB, {rec.get('check')}"


# ---------------------------------------------------------------------------------------------
# Reporting


def add_ratios(records: list[dict]) -> None:
    by_key: dict[tuple, list[dict]] = {}
    for r in records:
        by_key.setdefault((r["model"], r["n"]), []).append(r)
    for rows in by_key.values():
        timed = {r["engine"]: r for r in rows if "median" in r}
        ref = timed.get(R_REF)
        floor = timed.get("floor")
        peers = [timed[p]["median"] for p in PEERS if p in timed and timed[p].get("check") == "ok"]
        fastest = min(peers) if peers else None
        for r in timed.values():
            t = r["median"]
            r["vs_lme4"] = t / ref["median"] if ref and ref["median"] > 0 else None
            r["vs_fastest_peer"] = t / fastest if fastest else None
            r["vs_floor"] = t / floor["median"] if floor and floor["median"] > 0 else None


def _fmt(x, spec: str) -> str:
    return "" if x is None else format(x, spec)


def markdown(records: list[dict]) -> str:
    head = (
        "| model | n | groups | engine | median s | transfer s | peak MB | ×lme4 | ×fastest peer "
        "| ×floor | check |\n|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|"
    )
    lines = [head]
    for r in records:
        if "median" in r:
            cells = [
                _fmt(r["median"], ".4g"),
                _fmt(r.get("transfer_s"), ".3g"),
                _fmt(r.get("peak_mb"), ".0f"),
                _fmt(r.get("vs_lme4"), ".3g"),
                _fmt(r.get("vs_fastest_peer"), ".3g"),
                _fmt(r.get("vs_floor"), ".3g"),
                r.get("check", ""),
            ]
        else:
            what = f"skipped: {r['skipped']}" if "skipped" in r else f"ERROR: {r.get('error')}"
            cells = ["", "", "", "", "", "", what.replace("|", "/")]
        lines.append(
            f"| {r['model']} | {r['n']} | {r['groups']} | {r['engine']} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def plot(records: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 5))
    engines = sorted({r["engine"] for r in records if r["model"] == "lmm" and "median" in r})
    for e in engines:
        pts = sorted(
            (r["n"], r["median"])
            for r in records
            if r["model"] == "lmm" and r["engine"] == e and "median" in r
        )
        if pts:
            ax.loglog(*zip(*pts, strict=True), marker="o", label=e)
    ax.set_xlabel("rows (groups = rows / 20)")
    ax.set_ylabel("median fit time (s)")
    ax.set_title("y ~ x1 + x2 + x3 + (1|g), REML")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine_info() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": mem,
        "platform": platform.platform(),
        "load_avg_at_start": os.getloadavg(),
    }


def versions_info() -> dict:
    out = {"python": platform.python_version()}
    for mod in ("numpy", "scipy", "pandas", "statsmodels", "rpy2"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - optional
            pass
    if PEER_PYTHON.exists():
        code = (
            "import importlib.metadata as m\n"
            "for p in ('glmm','mixedlm-rs','mixedlm'):\n"
            "    try: print(p, m.version(p))\n"
            "    except Exception: pass\n"
        )
        r = subprocess.run([str(PEER_PYTHON), "-c", code], capture_output=True, text=True)
        for line in r.stdout.splitlines():
            k, v = line.split()
            out[k] = v
    if shutil.which("Rscript"):
        r = subprocess.run(
            [
                "Rscript",
                "--vanilla",
                "-e",
                "cat(R.version$major, R.version$minor, as.character(packageVersion('lme4')), "
                "as.character(packageVersion('arm')))",
            ],
            capture_output=True,
            text=True,
        )
        parts = r.stdout.split()
        if len(parts) == 4:
            out.update(R=f"{parts[0]}.{parts[1]}", lme4=parts[2], arm=parts[3])
    return out


if __name__ == "__main__":
    raise SystemExit(main())
