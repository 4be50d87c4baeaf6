"""`mixbridge compare` and `mixbridge conformance`.

    mixbridge compare --model lmer --formula "Reaction ~ Days + (Days|Subject)" --data ss.csv
    mixbridge conformance [--suite builtin|FILE] [--report DIR] [--case NAME ...] [--slow]

Exit status: 0 all ok (or explained), 1 a FAIL or an error in a case, 2 bad usage or input.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from mixbridge.errors import MixbridgeError


def _float_or_inf(text: str) -> float:
    return math.inf if text.lower() in ("inf", "infinity") else float(text)


def _compare_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mixbridge compare",
        description="Fit one model with two engines and print the comparison table.",
    )
    p.add_argument("--model", required=True, choices=("lmer", "glmer", "bayesglm"))
    p.add_argument("--formula", required=True)
    p.add_argument("--data", required=True, help="a .csv or .parquet file")
    p.add_argument("--engine-a", default="python", help="candidate engine (default python)")
    p.add_argument(
        "--engine-b", default="r", help="reference engine (default r; r:subprocess for Rscript)"
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--reml", dest="reml", action="store_true", default=True, help="(default)")
    g.add_argument("--ml", dest="reml", action="store_false")
    p.add_argument("--family", default=None)
    p.add_argument("--link", default=None)
    p.add_argument("--nagq", type=int, default=1)
    p.add_argument("--weights", default=None, help="column of prior weights")
    p.add_argument("--offset", default=None, help="column of offsets")
    p.add_argument("--prior-mean", type=float, default=None)
    p.add_argument("--prior-scale", type=float, default=None)
    p.add_argument("--prior-df", type=_float_or_inf, default=None)
    p.add_argument("--no-scaled", dest="scaled", action="store_false", default=True)
    p.add_argument("--tolerance", default=None, help="policy name (default: chosen per model)")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    return p


def compare_main(argv: list[str] | None = None) -> int:
    from mixbridge.conformance.compare import compare
    from mixbridge.conformance.suite import fit_model, read_data
    from mixbridge.conformance.tolerance import POLICIES

    args = _compare_parser().parse_args(argv)
    if args.tolerance is not None and args.tolerance not in POLICIES:
        sys.stderr.write(
            f"mixbridge compare: unknown --tolerance {args.tolerance!r}; known: "
            f"{', '.join(sorted(POLICIES))}\n"
        )
        return 2
    try:
        data = read_data(args.data)
    except ValueError as exc:
        sys.stderr.write(f"mixbridge compare: {exc}\n")
        return 2
    options: dict[str, Any] = {}
    for key in ("weights", "offset"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    if args.model == "lmer":
        options["reml"] = args.reml
    elif args.model == "glmer":
        options.update(family=args.family or "binomial", link=args.link, nagq=args.nagq)
    else:
        options.update(family=args.family or "gaussian", link=args.link, scaled=args.scaled)
        for key in ("prior_mean", "prior_scale", "prior_df"):
            if getattr(args, key) is not None:
                options[key] = getattr(args, key)
    try:
        a = fit_model(args.model, args.formula, data, args.engine_a, options)
        b = fit_model(args.model, args.formula, data, args.engine_b, options)
        cmp = compare(a, b, tolerance=args.tolerance)
    except (MixbridgeError, ValueError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        sys.stderr.write(f"mixbridge compare: {type(exc).__name__}: {first_line}\n")
        return 2
    cmp.a, cmp.b = args.engine_a, args.engine_b
    sys.stdout.write(json.dumps(cmp.to_dict(), indent=2, default=str) if args.json else str(cmp))
    sys.stdout.write("\n")
    return 0 if cmp.ok else 1


def _conformance_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mixbridge conformance",
        description="Run the built-in (or a TOML) conformance suite: every case fitted by two "
        "engines and compared; non-zero exit on any FAIL.",
    )
    p.add_argument("--suite", default="builtin", help="'builtin' or a TOML suite file")
    p.add_argument("--report", default=None, metavar="DIR", help="write an HTML report here")
    p.add_argument("--case", action="append", default=[], help="run only these cases (repeat)")
    p.add_argument("--slow", action="store_true", help="include cases marked slow")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument("--verbose", action="store_true", help="print every case's full table")
    return p


def _progress(i: int, n: int, case: Any, result: Any) -> None:
    """A text progress bar on stderr (one line per finished case when stderr is not a tty)."""
    width = 24
    done = i - (1 if result is None else 0)
    bar = "#" * (width * done // n) + "." * (width - width * done // n)
    tty = sys.stderr.isatty()
    if result is None:
        if tty:
            sys.stderr.write(f"\r[{bar}] {i}/{n} {case.name} ...".ljust(78))
    else:
        line = f"[{bar}] {i}/{n} {case.name}: {result.status} ({result.seconds:.1f} s)"
        sys.stderr.write(("\r" + line.ljust(78) if tty else line) + "\n")
    sys.stderr.flush()


def conformance_main(argv: list[str] | None = None) -> int:
    from mixbridge.conformance.suite import load_suite, run_suite, summary_frame

    args = _conformance_parser().parse_args(argv)
    try:
        cases = load_suite(args.suite)
    except (ValueError, OSError) as exc:
        sys.stderr.write(f"mixbridge conformance: {exc}\n")
        return 2
    report_dir = Path(args.report) if args.report else None
    if report_dir is not None and not args.list:
        # Checked before any case runs: a report that cannot be written fails at once.
        if report_dir.exists() and not report_dir.is_dir():
            sys.stderr.write(
                f"mixbridge conformance: --report {report_dir} is an existing file; give a "
                "folder (it is created if missing)\n"
            )
            return 2
        try:
            report_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            sys.stderr.write(f"mixbridge conformance: cannot create --report folder: {exc}\n")
            return 2
    if args.case:
        unknown = [c for c in args.case if c not in {k.name for k in cases}]
        if unknown:
            sys.stderr.write(f"mixbridge conformance: unknown case(s): {', '.join(unknown)}\n")
            return 2
        cases = [c for c in cases if c.name in args.case]
    if args.list:
        for c in cases:
            sys.stdout.write(f"{c.name:<34} {c.model:<9} {c.formula}  [{c.data}]\n")
        return 0
    results = run_suite(cases, progress=_progress, include_slow=args.slow or bool(args.case))
    frame = summary_frame(results)
    sys.stdout.write(_summary_text(frame) + "\n")
    for r in results:
        if args.verbose or r.failed:
            sys.stdout.write(f"\n== {r.case.name}\n")
            sys.stdout.write((str(r.comparison) if r.comparison else f"ERROR {r.error}") + "\n")
    if report_dir is not None:
        from mixbridge.conformance.report import write_report

        try:
            index = write_report(results, report_dir, suite=str(args.suite))
        except OSError as exc:
            sys.stderr.write(f"mixbridge conformance: cannot write the report: {exc}\n")
            return 2
        sys.stdout.write(f"\nreport: {index}\n")
    return 1 if any(r.failed for r in results) else 0


def _summary_text(frame: Any) -> str:
    cols = ["case", "model", "engines", "status", "worst", "max_rel", "explained", "seconds"]
    rows = [cols]
    for _, r in frame.iterrows():
        rel = "-" if not math.isfinite(r["max_rel"]) else f"{r['max_rel']:.1e}"
        rows.append(
            [r["case"], r["model"], r["engines"], r["status"], r["worst"], rel,
             r["explained"] or "-", f"{r['seconds']:.1f}"]
        )  # fmt: skip
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(cols))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)) for row in rows]
    counts = frame["status"].value_counts().to_dict()
    total = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    return "\n".join(lines) + f"\n{len(frame)} cases ({total})"


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - dispatch fallback
    argv = list(sys.argv[1:] if argv is None else argv)
    return conformance_main(argv)
