"""`mixbridge compare` and `mixbridge conformance`.

    mixbridge compare --model lmer --formula "Reaction ~ Days + (Days|Subject)" --data ss.csv
    mixbridge conformance [--suite builtin|FILE] [--report DIR] [--case NAME ...] [--slow]

Both write result files for CI systems: --junit-xml FILE, --json [FILE] (without FILE: the
JSON document replaces the text table on stdout), --markdown FILE (a CI job summary).

Exit status: 0 all ok (or explained), 1 a FAIL or an error in a case, 2 bad usage or input.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

from mixbridge.errors import MixbridgeError


def _add_report_arguments(p: argparse.ArgumentParser) -> None:
    """Result files for CI systems (mixbridge.conformance.ci_formats)."""
    p.add_argument(
        "--junit-xml",
        default=None,
        metavar="FILE",
        help="write JUnit XML: one test case per case, failing rows in <failure>",
    )
    p.add_argument(
        "--json",
        dest="json_file",
        nargs="?",
        const="-",
        default=None,
        metavar="FILE",
        help="write the results as JSON (schema "
        "mixbridge.conformance/1) to FILE; without FILE, print them instead of the "
        "text table",
    )
    p.add_argument("--markdown", default=None, metavar="FILE",
                   help="write a Markdown summary (e.g. $GITHUB_STEP_SUMMARY)")  # fmt: skip


def _compare_parser() -> argparse.ArgumentParser:
    from mixbridge.model_options import add_model_arguments

    p = argparse.ArgumentParser(
        prog="mixbridge compare",
        description="Fit one model with two engines and print the comparison table.",
    )
    add_model_arguments(p)
    p.add_argument("--engine-a", default="python", help="candidate engine (default python)")
    p.add_argument(
        "--engine-b", default="r", help="reference engine (default r; r:subprocess for Rscript)"
    )
    p.add_argument("--tolerance", default=None, help="policy name (default: chosen per model)")
    _add_report_arguments(p)
    return p


def _write_reports(args: argparse.Namespace, results: list[Any], suite: str) -> None:
    from mixbridge.conformance import ci_formats

    for path, render in (
        (args.junit_xml, ci_formats.junit_xml),
        (args.json_file, ci_formats.results_json_text),
        (args.markdown, ci_formats.markdown_summary),
    ):
        if path == "-":  # --json without a file: the document on stdout
            sys.stdout.write(render(results, suite=suite) + "\n")
        elif path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(render(results, suite=suite), encoding="utf-8")


def compare_main(argv: list[str] | None = None) -> int:
    from mixbridge.conformance.compare import compare
    from mixbridge.conformance.suite import Case, CaseResult, fit_model, read_data
    from mixbridge.conformance.tolerance import POLICIES
    from mixbridge.model_options import model_options

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
    options = model_options(args)
    case = Case(
        "compare", args.model, args.formula, args.data, options=options,
        engine_a=args.engine_a, engine_b=args.engine_b, tolerance=args.tolerance,
    )  # fmt: skip
    start = time.perf_counter()
    try:
        a = fit_model(args.model, args.formula, data, args.engine_a, options)
        b = fit_model(args.model, args.formula, data, args.engine_b, options)
        cmp = compare(a, b, tolerance=args.tolerance)
    except (MixbridgeError, ValueError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        sys.stderr.write(f"mixbridge compare: {type(exc).__name__}: {first_line}\n")
        error = f"{type(exc).__name__}: {exc}"
        _write_reports(args, [CaseResult(case, None, error, time.perf_counter() - start)],
                       "compare")  # fmt: skip
        return 2
    cmp.a, cmp.b = args.engine_a, args.engine_b
    result = CaseResult(case, cmp, None, time.perf_counter() - start, a, b, data)
    _write_reports(args, [result], "compare")
    if args.json_file != "-":
        sys.stdout.write(str(cmp) + "\n")
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
    _add_report_arguments(p)
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
    if args.json_file != "-":
        frame = summary_frame(results)
        sys.stdout.write(_summary_text(frame) + "\n")
        for r in results:
            if args.verbose or r.failed:
                sys.stdout.write(f"\n== {r.case.name}\n")
                sys.stdout.write((str(r.comparison) if r.comparison else f"ERROR {r.error}") + "\n")
    _write_reports(args, results, str(args.suite))
    if report_dir is not None:
        from mixbridge.conformance.report import write_report

        try:
            index = write_report(results, report_dir, suite=str(args.suite))
        except OSError as exc:
            sys.stderr.write(f"mixbridge conformance: cannot write the report: {exc}\n")
            return 2
        # stdout carries the JSON document when --json has no file
        out = sys.stderr if args.json_file == "-" else sys.stdout
        out.write(f"\nreport: {index}\n")
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
