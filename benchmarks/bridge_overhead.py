"""Bridge overhead: data transfer into R and lmer fit time, embedded (rpy2) vs subprocess.

    python benchmarks/bridge_overhead.py [--rows 100000 1000000] [--repeat 3]
    python benchmarks/bridge_overhead.py --vs-lme4 [--rows ...] [--repeat 3]

--vs-lme4: lme4's own `lmer()` timed inside the embedded R session (system.time, on the R
data.frame already there) against the whole `mixbridge.lmer(..., engine="r")` call on the
pandas frame, alternating, best of --repeat each, and their ratio; then the first read of the
fields an embedded fit fetches from R when read (cond_var: lme4's condVar; fitted, residuals).
It runs on whatever `mixbridge` is importable, so the same script times an older checkout
(PYTHONPATH=that checkout) for a before/after comparison.

Model: y ~ x1 + x2 + x3 + (1|g), with n/20 groups (5e4 groups at 1e6 rows). Reported:
* encode: pandas -> flat numpy vectors (shared by both transports);
* to R: encode + building the R data.frame (embedded) or encode + raw file + a fresh Rscript
  that reads it (subprocess; "startup" is the same Rscript with a 10-row frame, so
  transfer = to R - startup);
* fit: the whole mixbridge.lmer(engine="r") call (transfer, lme4, results back); "-condVar"
  with control={"cond_var": False} (lme4's ranef condVar is skipped: at 5e4 levels it costs
  more than the fit).
Times are the best of --repeat runs (fits: one run each at 1e6 rows).
"""

from __future__ import annotations

import argparse
import resource
import time
from functools import partial

import numpy as np
import pandas as pd

import mixbridge
from mixbridge.bridge import embedded, subproc
from mixbridge.bridge.convert import encode_frame

FORMULA = "y ~ x1 + x2 + x3 + (1 | g)"


def make_data(n: int, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    groups = max(n // 20, 2)
    g = rng.integers(0, groups, size=n)
    b = rng.normal(scale=0.5, size=groups)
    x = rng.normal(size=(n, 3))
    y = 1.0 + x @ np.array([0.5, -0.3, 0.2]) + b[g] + rng.normal(size=n)
    return pd.DataFrame(
        {
            "y": y,
            "x1": x[:, 0],
            "x2": x[:, 1],
            "x3": x[:, 2],
            "g": pd.Categorical.from_codes(g, [f"g{i}" for i in range(groups)]),
        }
    )


def _cpu() -> float:
    """CPU seconds of this process (embedded R included) plus finished children (Rscript)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def best(fn, repeat: int) -> str:
    """'wall/cpu' seconds of the fastest run (cpu is robust to a loaded machine)."""
    runs = []
    for _ in range(repeat):
        t, c = time.perf_counter(), _cpu()
        fn()
        runs.append((time.perf_counter() - t, _cpu() - c))
    wall, cpu = min(runs)
    return f"{wall:.3g}/{cpu:.3g}"


def to_r_embedded(df: pd.DataFrame) -> None:
    cols, n, _, _ = encode_frame(df, FORMULA)
    with embedded.LOCK:
        ri, env = embedded.session()
        frame = embedded.data_frame(ri, env, cols, n)
        res = embedded.call("mb_ping", frame)
    assert res["value"][0] == n


def to_r_subprocess(df: pd.DataFrame) -> None:
    cols, n, _, _ = encode_frame(df, FORMULA)
    res = subproc.call("mb_ping", {}, cols, n)
    assert res["value"][0] == n


def _load() -> str:
    try:
        with open("/proc/loadavg") as fh:
            return " ".join(fh.read().split()[:3])
    except OSError:
        return "unknown"


def lme4_in_session(df: pd.DataFrame) -> float:
    """lme4's own lmer() on `df` inside the embedded R session: elapsed seconds (system.time)."""
    cols, n, _, _ = encode_frame(df, FORMULA)
    with embedded.LOCK:
        ri, env = embedded.session()
        frame = embedded.data_frame(ri, env, cols, n)
        timer = ri.evalr(
            "function(d) system.time(lme4::lmer(y ~ x1 + x2 + x3 + (1 | g), data = d))[['elapsed']]"
        )
        return float(timer(frame)[0])


def _list(times: list[float]) -> str:
    return ", ".join(f"{x:.2f}" for x in times)


def vs_lme4(rows: list[int], repeat: int) -> None:
    import mixbridge.bridge as bridge_module

    deferred = getattr(bridge_module, "DEFERRED_FIELDS", ())
    print(f"mixbridge from {mixbridge.__file__}; deferred fields: {list(deferred) or 'none'}")
    print(f"load average at start: {_load()} (2 cores)")
    print(f"{'rows':>9} {'groups':>7} {'lme4 s':>9} {'mixbridge s':>12} {'ratio':>7} "
          f"{'cond_var s':>11} {'fitted s':>9}")  # fmt: skip
    for n in rows:
        df = make_data(n)
        lme4_times, ours = [], []
        first_read: dict[str, float] = {}
        for _ in range(repeat):
            lme4_times.append(lme4_in_session(df))
            t = time.perf_counter()
            fit = mixbridge.lmer(FORMULA, df, engine="r")
            ours.append(time.perf_counter() - t)
            for name in ("cond_var", "fitted"):
                t = time.perf_counter()
                getattr(fit, name)
                first_read[name] = min(first_read.get(name, np.inf), time.perf_counter() - t)
            del fit
        best_r, best_m = min(lme4_times), min(ours)
        print(
            f"{n:>9} {df['g'].cat.categories.size:>7} {best_r:>9.3f} {best_m:>12.3f} "
            f"{best_m / best_r:>7.3f} {first_read['cond_var']:>11.3f} "
            f"{first_read['fitted']:>9.3f}   (all lme4: {_list(lme4_times)}; all mixbridge: "
            f"{_list(ours)})",
            flush=True,
        )
    print(f"load average at end: {_load()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-fit", action="store_true", help="measure the transfer only")
    ap.add_argument(
        "--vs-lme4", action="store_true", help="lme4 in R vs mixbridge.lmer(engine='r')"
    )
    args = ap.parse_args()
    if args.vs_lme4:
        embedded.session()
        mixbridge.lmer(FORMULA, make_data(400), engine="r")  # warm-up: lme4 loaded, code paths hot
        vs_lme4(args.rows, args.repeat)
        return

    embedded.session()  # R start-up is not transfer time
    tiny = make_data(10)
    startup = best(lambda: to_r_subprocess(tiny), args.repeat)
    print(f"Rscript start-up (10 rows, no lme4): {startup}")
    print("seconds, wall/cpu (cpu: this process incl. embedded R, plus Rscript children)")
    print(
        f"{'rows':>9} {'groups':>7} {'encode':>12} {'to R emb':>12} {'to R sub':>12} "
        f"{'fit emb':>12} {'emb -condVar':>12} {'fit sub':>12}"
    )
    for n in args.rows:
        df = make_data(n)
        enc = best(partial(encode_frame, df, FORMULA), args.repeat)
        emb = best(partial(to_r_embedded, df), args.repeat)
        sub = best(partial(to_r_subprocess, df), args.repeat)
        fit_e = fit_n = fit_s = "-"
        if not args.no_fit:
            reps = 1 if n >= 1_000_000 else args.repeat
            fit_e = best(partial(mixbridge.lmer, FORMULA, df, engine="r"), reps)
            no_cv = {"cond_var": False}
            fit_n = best(partial(mixbridge.lmer, FORMULA, df, engine="r", control=no_cv), reps)
            fit_s = best(
                partial(mixbridge.lmer, FORMULA, df, engine="r", transport="subprocess"), reps
            )
        print(
            f"{n:>9} {df['g'].cat.categories.size:>7} {enc:>12} {emb:>12} {sub:>12} "
            f"{fit_e:>12} {fit_n:>12} {fit_s:>12}",
            flush=True,
        )


if __name__ == "__main__":
    main()
