"""Bridge overhead: data transfer into R and lmer fit time, embedded (rpy2) vs subprocess.

    python benchmarks/bridge_overhead.py [--rows 100000 1000000] [--repeat 3]
    python benchmarks/bridge_overhead.py --vs-lme4 [--rows ...] [--repeat 3]

--vs-lme4: lme4's own `lmer()` timed inside the embedded R session (system.time, on the R
data.frame already there) against the whole `mixbridge.lmer(..., engine="r")` call on the
pandas frame, alternating, best of --repeat each (5x as many below 1e6 rows): wall and CPU
time (this process, embedded R included) and their ratios; then the first read of the fields
an embedded fit fetches from R when read (cond_var: lme4's condVar; fitted, residuals).
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


def lme4_in_session(df: pd.DataFrame) -> tuple[float, float]:
    """lme4's own lmer() on `df` inside the embedded R session: (elapsed, CPU) seconds, from
    R's system.time (CPU: user + system)."""
    cols, n, _, _ = encode_frame(df, FORMULA)
    with embedded.LOCK:
        ri, env = embedded.session()
        frame = embedded.data_frame(ri, env, cols, n)
        timer = ri.evalr(
            "function(d) { t <- system.time(lme4::lmer(y ~ x1 + x2 + x3 + (1 | g), data = d));"
            " c(t[['elapsed']], t[['user.self']] + t[['sys.self']]) }"
        )
        wall, cpu = timer(frame)
        return float(wall), float(cpu)


def _own_cpu() -> float:
    """CPU seconds of this process: Python and the embedded R in it."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def _list(times: list[float]) -> str:
    return ", ".join(f"{x:.2f}" for x in times)


def vs_lme4(rows: list[int], repeat: int) -> None:
    """Best wall and best CPU time of each, and their ratios. On a shared machine the CPU ratio
    is the steadier one: wall time moves with the other processes' load."""
    import mixbridge.bridge as bridge_module

    deferred = getattr(bridge_module, "DEFERRED_FIELDS", ())
    print(f"mixbridge from {mixbridge.__file__}; deferred fields: {list(deferred) or 'none'}")
    print(f"load average at start: {_load()} (2 cores)")
    print("best of each; wall s / CPU s; ratio = mixbridge / lme4")
    print(f"{'rows':>9} {'groups':>7} {'lme4':>13} {'mixbridge':>13} {'ratio wall':>10} "
          f"{'ratio CPU':>9} {'cond_var s':>10} {'fitted s':>8}")  # fmt: skip
    for n in rows:
        df = make_data(n)
        lme4_wall, lme4_cpu, our_wall, our_cpu = [], [], [], []
        first_read: dict[str, float] = {}
        # small fits vary more with the machine's load: more repeats (they are cheap)
        for _ in range(repeat if n >= 1_000_000 else 5 * repeat):
            wall, cpu = lme4_in_session(df)
            lme4_wall.append(wall)
            lme4_cpu.append(cpu)
            t, c = time.perf_counter(), _own_cpu()
            fit = mixbridge.lmer(FORMULA, df, engine="r")
            our_wall.append(time.perf_counter() - t)
            our_cpu.append(_own_cpu() - c)
            for name in ("cond_var", "fitted"):
                t = time.perf_counter()
                getattr(fit, name)
                first_read[name] = min(first_read.get(name, np.inf), time.perf_counter() - t)
            del fit
        rw, rc, mw, mc = min(lme4_wall), min(lme4_cpu), min(our_wall), min(our_cpu)
        print(
            f"{n:>9} {df['g'].cat.categories.size:>7} {f'{rw:.2f}/{rc:.2f}':>13} "
            f"{f'{mw:.2f}/{mc:.2f}':>13} {mw / rw:>10.3f} {mc / rc:>9.3f} "
            f"{first_read['cond_var']:>10.3f} {first_read['fitted']:>8.3f}",
            flush=True,
        )
        print(f"{'':>17} wall, lme4: {_list(lme4_wall)}; mixbridge: {_list(our_wall)}")
        print(f"{'':>17} CPU,  lme4: {_list(lme4_cpu)}; mixbridge: {_list(our_cpu)}")
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
