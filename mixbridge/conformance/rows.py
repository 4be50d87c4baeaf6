"""The result of comparing two fits (`Comparison`, one `Row` per quantity, each with its
`RowElements`) and how a row is computed from labelled values under a tolerance (`element_row`,
`aligned_row`, `scalar_row`). `compare` fills them; `_judge` there may turn a FAIL into
"explained".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mixbridge.conformance.tolerance import Tol

OK, EXPLAINED, FAIL = "ok", "explained", "FAIL"


@dataclass
class RowElements:
    """Every compared value of a row: labels, a's and b's values, each value's allowed |a - b|
    (the conformance report plots (a - b) / bound against b)."""

    labels: list[str]
    a: np.ndarray
    b: np.ndarray
    bound: np.ndarray


@dataclass
class Row:
    """One compared quantity: worst differences, where, the tolerance, the verdict and why."""

    quantity: str
    max_abs: float
    max_rel: float
    where: str
    tolerance: str
    status: str
    reason: str = ""
    n: int = 1
    signed_diff: float | None = field(default=None, repr=False)
    bound: float = field(default=0.0, repr=False)
    elements: RowElements | None = field(default=None, repr=False, compare=False)


@dataclass
class Comparison:
    """The result of `compare(a, b)`: one Row per quantity, plus notes."""

    a: str
    b: str
    model: str
    policy: str
    rows: list[Row]
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.status != FAIL for r in self.rows)

    @property
    def failures(self) -> list[Row]:
        return [r for r in self.rows if r.status == FAIL]

    def row(self, quantity: str) -> Row:
        for r in self.rows:
            if r.quantity == quantity:
                return r
        raise KeyError(f"no row {quantity!r}; rows: {[r.quantity for r in self.rows]}")

    def to_frame(self) -> pd.DataFrame:
        cols = ["quantity", "max_abs", "max_rel", "where", "tolerance", "status", "reason", "n"]
        return pd.DataFrame([{c: getattr(r, c) for c in cols} for r in self.rows], columns=cols)

    def to_dict(self) -> dict[str, Any]:
        keys = ("quantity", "max_abs", "max_rel", "where", "tolerance", "status", "reason", "n")
        rows = [{k: getattr(r, k) for k in keys} for r in self.rows]
        return {
            "a": self.a,
            "b": self.b,
            "model": self.model,
            "policy": self.policy,
            "ok": self.ok,
            "rows": rows,
            "notes": list(self.notes),
        }

    def __str__(self) -> str:
        head = f"compare {self.model}: a = {self.a}, b = {self.b}  (policy {self.policy})"
        table = [("quantity", "max|a-b|", "max rel", "where", "tolerance", "status", "reason")]
        for r in self.rows:
            table.append(
                (
                    r.quantity,
                    _num(r.max_abs),
                    _num(r.max_rel),
                    _clip(r.where, 28),
                    r.tolerance,
                    r.status,
                    r.reason,
                )
            )
        widths = [max(len(t[i]) for t in table) for i in range(6)]
        lines = [head]
        for t in table:
            cells = [t[i].ljust(widths[i]) for i in range(6)]
            lines.append("  ".join(cells) + ("  " + t[6] if t[6] else ""))
        verdict = "OK" if self.ok else f"FAIL ({len(self.failures)} quantities)"
        lines.append(f"verdict: {verdict}")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from mixbridge.display import comparison_html

        return comparison_html(self)

    def assert_ok(self) -> None:
        if not self.ok:
            names = ", ".join(r.quantity for r in self.failures)
            raise AssertionError(f"fits disagree beyond tolerance: {names}\n{self}")


def _num(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.2e}"


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


# ---------------------------------------------------------------------------------------------
# Element-wise rows


def element_row(
    quantity: str,
    labels: list[str],
    va: np.ndarray,
    vb: np.ndarray,
    scales: np.ndarray,
    tol: Tol,
) -> Row:
    """The row of one quantity from its elements: labels, a's and b's values, each element's
    scale (what the tolerance is relative to); the worst difference beyond the bound decides."""
    va, vb = np.asarray(va, dtype=float), np.asarray(vb, dtype=float)
    scales = np.broadcast_to(np.asarray(scales, dtype=float), va.shape)
    if va.size == 0:
        return Row(quantity, 0.0, 0.0, "", tol.describe(), OK, "nothing to compare", n=0)
    both_nan = np.isnan(va) & np.isnan(vb)
    d = np.where(both_nan, 0.0, np.abs(va - vb))
    d = np.where(np.isnan(d), np.inf, d)
    bounds = np.array([tol.bound(s) for s in scales])
    # relative to the quantity's scale; absolute-tolerance rows (scale 0) relative to |b|
    denom = np.where(np.abs(scales) > 0, np.maximum(np.abs(scales), tol.floor), np.abs(vb))
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(d == 0, 0.0, d / denom)
    if tol.one_sided:
        signed = np.where(both_nan, 0.0, va - vb)
        excess = np.where(np.isnan(signed), np.inf, signed) - bounds
    else:
        excess = d - bounds
    i = int(np.argmax(excess)) if np.any(np.isfinite(excess)) else 0
    failed = bool(np.any(excess > 0))
    signed_diff = float(va[0] - vb[0]) if va.size == 1 else None
    elements = RowElements(list(labels), va, vb, bounds)
    return Row(
        quantity=quantity,
        max_abs=float(np.max(d)),
        max_rel=float(np.max(rel)),
        where=labels[int(np.argmax(d))] if not failed else labels[i],
        tolerance=tol.describe(),
        status=FAIL if failed else OK,
        reason="" if not failed else f"{labels[i]}: a={va[i]:.10g}, b={vb[i]:.10g}",
        n=int(va.size),
        signed_diff=signed_diff,
        bound=float(bounds[i]),
        elements=elements,
    )


def aligned_row(quantity: str, sa: pd.Series, sb: pd.Series, scale_of: Any, tol: Tol) -> Row:
    """Rows for labelled values; labels missing on one side fail, naming them."""
    la, lb = [str(x) for x in sa.index], [str(x) for x in sb.index]
    only_a = [x for x in la if x not in lb]
    only_b = [x for x in lb if x not in la]
    if only_a or only_b:
        parts = []
        if only_b:
            parts.append(f"missing in a: {', '.join(only_b)}")
        if only_a:
            parts.append(f"missing in b: {', '.join(only_a)}")
        where = (only_b or only_a)[0]
        return Row(quantity, math.nan, math.nan, where, tol.describe(), FAIL, "; ".join(parts))
    sa = pd.Series(sa.to_numpy(dtype=float), index=la)
    sb = pd.Series(sb.to_numpy(dtype=float), index=lb)
    sa = sa.loc[lb]
    scales = np.array([scale_of(lbl) for lbl in lb], dtype=float)
    return element_row(quantity, lb, sa.to_numpy(), sb.to_numpy(), scales, tol)


def scalar_row(quantity: str, va: float | None, vb: float | None, scale: float, tol: Tol) -> Row:
    """The row of a single number (None: not reported by that fit)."""
    if va is None or vb is None:
        missing = "a" if va is None else "b"
        if va is None and vb is None:
            return Row(quantity, 0.0, 0.0, "", tol.describe(), OK, "not reported by either", 0)
        return Row(quantity, math.nan, math.nan, quantity, tol.describe(), FAIL,
                   f"not reported by {missing}")  # fmt: skip
    return element_row(quantity, [quantity], np.array([va]), np.array([vb]), np.array([scale]), tol)
