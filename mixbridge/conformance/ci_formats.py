"""Conformance results in CI systems' own formats (`mixbridge conformance` / `compare` options):

- `junit_xml`: JUnit XML, one <testcase> per suite case; a FAIL is a <failure> whose message
  names the failing quantities and whose text is the table of failing rows; a case that could
  not run is an <error>; every case's full comparison table is in <system-out>;
- `results_json`: one JSON document (schema "mixbridge.conformance/1") with every case and its
  full comparison (`Comparison.to_dict()`);
- `markdown_summary`: a Markdown summary for a CI job page (GitHub's $GITHUB_STEP_SUMMARY,
  GitLab/Gitea job summaries): the summary table, then the failing rows of each failing case.

Each takes the `CaseResult`s of a run (`mixbridge.conformance.suite.run_suite`) and the suite's
name, and returns text.
"""

from __future__ import annotations

import json
import math
import re
import socket
import xml.etree.ElementTree as ET
from collections import Counter
from datetime import datetime, timezone
from typing import Any

from mixbridge.conformance.rows import FAIL, Comparison, Row

SCHEMA = "mixbridge.conformance/1"
_ROW_HEADER = ("quantity", "max|a-b|", "max rel", "where", "tolerance", "status", "reason")


def _num(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def _row_cells(r: Row) -> tuple[str, ...]:
    return (r.quantity, _num(r.max_abs), _num(r.max_rel), r.where, r.tolerance, r.status,
            r.reason)  # fmt: skip


def _failure_message(cmp: Comparison) -> str:
    names = ", ".join(r.quantity for r in cmp.failures)
    n = len(cmp.failures)
    return f"{n} {'quantity' if n == 1 else 'quantities'} beyond tolerance: {names}"


def _text_table(rows: list[tuple[str, ...]]) -> str:
    table = [_ROW_HEADER, *rows]
    widths = [max(len(t[i]) for t in table) for i in range(len(_ROW_HEADER) - 1)]
    lines = []
    for t in table:
        cells = [t[i].ljust(widths[i]) for i in range(len(widths))]
        lines.append("  ".join(cells) + ("  " + t[-1] if t[-1] else ""))
    return "\n".join(lines)


def _suite_id(suite: str) -> str:
    stem = re.sub(r"\.toml$", "", str(suite).replace("\\", "/").rsplit("/", 1)[-1])
    return "mixbridge.conformance." + (re.sub(r"[^A-Za-z0-9_]+", "_", stem) or "suite")


# ---------------------------------------------------------------------------------------------
# JUnit XML


def junit_xml(results: list[Any], suite: str = "") -> str:
    """JUnit XML for a run: one test case per case (see the module docstring)."""
    counts = Counter(r.status for r in results)
    total_time = sum(r.seconds for r in results)
    classname = _suite_id(suite)
    root = ET.Element("testsuites", name="mixbridge conformance", tests=str(len(results)),
                      failures=str(counts[FAIL]), errors=str(counts["ERROR"]),
                      time=f"{total_time:.3f}")  # fmt: skip
    ts = ET.SubElement(
        root, "testsuite", name=classname, tests=str(len(results)), failures=str(counts[FAIL]),
        errors=str(counts["ERROR"]), skipped="0", time=f"{total_time:.3f}",
        timestamp=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
        hostname=socket.gethostname(),
    )  # fmt: skip
    props = ET.SubElement(ts, "properties")
    ET.SubElement(props, "property", name="suite", value=str(suite))
    for r in results:
        case = r.case
        tc = ET.SubElement(ts, "testcase", classname=classname, name=case.name,
                           time=f"{r.seconds:.3f}")  # fmt: skip
        what = (f"{case.model}: {case.formula} on {case.data}; a = {case.engine_a}, "
                f"b = {case.engine_b}")  # fmt: skip
        if r.error is not None:
            el = ET.SubElement(tc, "error", message=r.error.splitlines()[0][:500], type="ERROR")
            el.text = f"{what}\n{r.error}"
            continue
        cmp = r.comparison
        if not cmp.ok:
            el = ET.SubElement(tc, "failure", message=_failure_message(cmp), type=FAIL)
            el.text = f"{what}\n" + _text_table([_row_cells(row) for row in cmp.failures])
        out = ET.SubElement(tc, "system-out")
        out.text = f"{what}\n{cmp}"
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode")


# ---------------------------------------------------------------------------------------------
# JSON


def _jsonable(value: Any) -> Any:
    """Non-finite floats as JSON allows them: NaN -> null, ±inf -> "Inf"/"-Inf"."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "Inf" if value > 0 else "-Inf"
    return value


def results_json(results: list[Any], suite: str = "") -> dict[str, Any]:
    """The run as data (schema "mixbridge.conformance/1")."""
    counts = Counter(r.status for r in results)
    cases = []
    for r in results:
        c = r.case
        cases.append({
            "name": c.name, "model": c.model, "formula": c.formula, "data": c.data,
            "engine_a": c.engine_a, "engine_b": c.engine_b, "status": r.status,
            "seconds": round(float(r.seconds), 3), "error": r.error,
            "comparison": None if r.comparison is None else r.comparison.to_dict(),
        })  # fmt: skip
    return _jsonable({
        "schema": SCHEMA,
        "suite": str(suite),
        "ok": not any(r.failed for r in results),
        "counts": {k: int(v) for k, v in sorted(counts.items())},
        "cases": cases,
    })  # fmt: skip


def results_json_text(results: list[Any], suite: str = "") -> str:
    return json.dumps(results_json(results, suite), indent=2, allow_nan=False)


# ---------------------------------------------------------------------------------------------
# Markdown

_ICON = {"ok": "✅", "explained": "🟡", FAIL: "❌", "ERROR": "💥"}


def _md(text: Any) -> str:
    """A table cell: pipes escaped, line breaks flattened."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").strip()


def markdown_summary(results: list[Any], suite: str = "") -> str:
    """A Markdown job summary: counts, one line per case, then each failing case's rows."""
    n_bad = sum(r.failed for r in results)
    counts = Counter(r.status for r in results)
    tally = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    verdict = "all agree" if n_bad == 0 else f"{n_bad} failing"
    lines = [
        f"## mixbridge conformance: {_md(suite) or 'run'}: {len(results)} cases, {verdict}",
        "",
        f"{tally}." if tally else "No cases ran.",
        "",
        "| case | model | engines | status | worst | max rel | explained | seconds |",
        "|---|---|---|---|---|--:|---|--:|",
    ]
    for r in results:
        worst, rel, explained = "", math.nan, []
        if r.comparison is not None:
            rows = r.comparison.rows
            bad = [x for x in rows if x.status == FAIL]
            finite = [x for x in rows if math.isfinite(x.max_rel)]
            pick = bad[0] if bad else (max(finite, key=lambda x: x.max_rel) if finite else None)
            if pick is not None:
                worst, rel = pick.quantity, pick.max_rel
            explained = [x.quantity for x in rows if x.status == "explained"]
        lines.append(
            f"| {_md(r.case.name)} | {_md(r.case.model)} | "
            f"{_md(r.case.engine_a)} vs {_md(r.case.engine_b)} | {_ICON[r.status]} {r.status} | "
            f"{_md(worst)} | {_num(rel)} | {_md(', '.join(explained)) or '-'} | "
            f"{r.seconds:.1f} |"
        )
    for r in results:
        if not r.failed:
            continue
        c = r.case
        lines += ["", f"### {_ICON[r.status]} {_md(c.name)} ({r.status})", "",
                  f"`{c.model}: {c.formula}` on `{c.data}`; a = `{c.engine_a}`, "
                  f"b = `{c.engine_b}`", ""]  # fmt: skip
        if r.error is not None:
            lines += ["```", r.error, "```"]
            continue
        lines.append("| " + " | ".join(_md(h) for h in _ROW_HEADER) + " |")
        lines.append("|---|--:|--:|---|---|---|---|")
        for row in r.comparison.failures:
            lines.append("| " + " | ".join(_md(x) for x in _row_cells(row)) + " |")
        if r.comparison.notes:
            lines += ["", *(f"- note: {_md(n)}" for n in r.comparison.notes)]
    return "\n".join(lines) + "\n"
