"""The HTML conformance report: summary table, one comparison table per case, and plots (PNG files
saved beside index.html; matplotlib with the Agg backend):

- the margin plot: for every compared quantity, each value's difference against its tolerance,
  (a - b) / tolerance, against the value, with the band |(a - b) / tolerance| <= 1 drawn, so
  the reader sees how far inside (or outside) the tolerance each number is;
- caterpillar plot of ranef ± 1.96·sqrt(cond_var) for both engines, one panel per ranef column
  of the first grouping factor;
- the shrinkage plot for shrinkage cases: true (when simulated), raw, shrunken (fixef + ranef) and
  bayesglm group means, with the grand-mean line.
"""

from __future__ import annotations

import html
import math
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mixbridge.results import BayesGLMFit, MixedFit

_STATUS_COLOUR = {"ok": "#1a7f37", "explained": "#9a6700", "FAIL": "#cf222e", "ERROR": "#cf222e"}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    return plt


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


# ---------------------------------------------------------------------------------------------
# Plots


def _margins(row: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """(b's values, (a - b) / bound) of a row's elements; None when there is nothing to scale
    (no elements, or an exact-equality row such as nobs whose bound is 0)."""
    el = getattr(row, "elements", None)
    if el is None or len(el.b) == 0:
        return None
    bound = np.asarray(el.bound, dtype=float)
    keep = np.isfinite(bound) & (bound > 0)
    if not keep.any():
        return None
    a, b = np.asarray(el.a, dtype=float)[keep], np.asarray(el.b, dtype=float)[keep]
    with np.errstate(invalid="ignore"):
        return b, (a - b) / bound[keep]


def _value_limits(x: np.ndarray) -> tuple[float, float]:
    """The value axis, padded by 5% of the data range or of the values' magnitude, whichever is
    larger: values a hair apart (a criterion at two parameter sets) then get readable ticks."""
    x = x[np.isfinite(x)]
    if x.size == 0:
        return -1.0, 1.0
    lo, hi = float(x.min()), float(x.max())
    pad = 0.05 * max(hi - lo, float(np.abs(x).max()), 1e-12)
    return lo - pad, hi + pad


def margin_plot(comparison: Any, path: Path, title: str) -> Path | None:
    """Each quantity's differences against its tolerance: (a - b) / tolerance against b's
    value, one panel per quantity, with the band |(a - b) / tolerance| <= 1 shaded (one-sided
    tolerances: everything below +1). Points outside the band are the misses, drawn in red
    (amber when the row is explained); the distance to the band edge is the margin."""
    plt = _plt()
    panels = [(r, m) for r in comparison.rows if (m := _margins(r)) is not None]
    if not panels:
        return None
    ncols = min(4, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.9 * nrows), squeeze=False)
    for ax in axes.ravel()[len(panels) :]:
        ax.set_visible(False)
    for ax, (row, (x, y)) in zip(axes.ravel(), panels, strict=False):
        finite = np.isfinite(y)
        worst = float(np.max(np.abs(y[finite]))) if finite.any() else math.nan
        reach = max(1.5, 1.15 * (worst if math.isfinite(worst) else 1.0))
        one_sided = "a <= b" in row.tolerance
        ax.axhspan(-reach * 10 if one_sided else -1.0, 1.0, color="#d8f0dc", zorder=0)
        for level in (-1.0, 1.0) if not one_sided else (1.0,):
            ax.axhline(level, color="#1a7f37", lw=0.8, ls="--", zorder=1)
        ax.axhline(0.0, color="grey", lw=0.6, zorder=1)
        outside = finite & (np.abs(y) > 1.0) if not one_sided else finite & (y > 1.0)
        miss = "#9a6700" if row.status == "explained" else "#cf222e"
        ax.scatter(x[~outside], y[~outside], s=12, color="tab:blue", zorder=3)
        ax.scatter(x[outside], y[outside], s=18, color=miss, zorder=4)
        if reach > 20:  # far misses: keep the band readable
            ax.set_yscale("symlog", linthresh=1.0)
        ax.set_ylim(-reach, reach)
        ax.set_xlim(*_value_limits(x))
        ax.ticklabel_format(axis="x", useOffset=False)
        ax.set_title(f"{row.quantity} ({row.status}): {len(x)} values, "
                     f"max |a-b|/tol {worst:.2g}", fontsize=8)  # fmt: skip
        ax.set_xlabel(f"value (b = {comparison.b})", fontsize=8)
        ax.set_ylabel("(a - b) / tolerance", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"{title}: differences against their tolerance (band: within tolerance)",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def caterpillar_plot(a: MixedFit, b: MixedFit, path: Path, title: str) -> Path | None:
    """ranef ± 1.96 sqrt(cond_var) of the first factor, one panel per column, both engines;
    levels sorted by b's first column."""
    plt = _plt()
    if not b.ranef:
        return None
    factor, frame_b = next(iter(b.ranef.items()))
    frame_a = a.ranef.get(factor)
    if frame_a is None:
        return None
    cols = [c for c in frame_b.columns if c in frame_a.columns][:4]
    if not cols:
        return None
    levels = [str(x) for x in frame_b.index]
    n = len(levels)

    def sd(fit: MixedFit, k: int) -> np.ndarray:
        arr = np.asarray(fit.cond_var.get(factor, np.full((n, 1, 1), np.nan)), float)
        if arr.ndim == 3 and arr.shape[0] == n and k < arr.shape[1]:
            return np.sqrt(np.abs(arr[:, k, k]))
        if arr.ndim < 3 and k == 0 and arr.reshape(-1).size == n:
            return np.sqrt(np.abs(arr.reshape(-1)))
        return np.full(n, np.nan)

    order = np.argsort(frame_b[cols[0]].to_numpy(float))
    pos = np.arange(n)
    height = max(3.0, min(0.22 * n + 1.4, 14.0))
    fig, axes = plt.subplots(1, len(cols), figsize=(3.2 + 3.3 * len(cols), height),
                             squeeze=False, sharey=True)  # fmt: skip
    for j, (ax, col) in enumerate(zip(axes[0], cols, strict=True)):
        k = list(frame_b.columns).index(col)
        vb = frame_b[col].to_numpy(float)
        va = frame_a[col].reindex(frame_b.index).to_numpy(float)
        sb, sa = sd(b, k), sd(a, list(frame_a.columns).index(col))
        ax.errorbar(vb[order], pos - 0.15, xerr=1.96 * sb[order], fmt="o", ms=3,
                    label=f"b = {b.engine}")  # fmt: skip
        ax.errorbar(va[order], pos + 0.15, xerr=1.96 * sa[order], fmt="s", ms=3,
                    label=f"a = {a.engine}")  # fmt: skip
        ax.axvline(0.0, color="grey", lw=0.8)
        ax.set_xlabel(f"{col}  (± 1.96 sqrt(cond_var))", fontsize=8)
        ax.tick_params(labelsize=7)
        if j == 0:
            if n <= 60:
                ax.set_yticks(pos)
                ax.set_yticklabels([levels[i] for i in order], fontsize=7)
            else:  # too many to label: positions in the sort order
                ax.set_ylabel(f"{n} levels of {factor}, sorted", fontsize=8)
    # the legend above the panels: inside, it covers the largest (top-right) intervals
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", ncol=2, fontsize=8, frameon=False)
    fig.suptitle(f"{title}: ranef of {factor}", fontsize=10, x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / height))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def shrinkage_plot(
    bayes: BayesGLMFit,
    mixed: MixedFit,
    data: pd.DataFrame | None,
    truth: pd.Series | None,
    path: Path,
    title: str,
) -> Path:
    """True, raw, shrunken and bayesglm group means with the grand-mean line."""
    from mixbridge.conformance.shrinkage import level_names

    plt = _plt()
    factor, frame = next(iter(mixed.ranef.items()))
    levels = [str(x) for x in frame.index]
    mu = float(mixed.fixef["(Intercept)"])
    shrunk = mu + frame["(Intercept)"].to_numpy(float)
    names = level_names(list(bayes.coef.index), levels, factor)
    coef = np.array([float(bayes.coef[names[lv]]) for lv in levels])
    raw = None
    if data is not None and factor in data.columns:
        g = data[factor].astype(str)
        if "y" in data.columns:
            raw = data.groupby(g, observed=True)["y"].mean().reindex(levels).to_numpy(float)
        elif {"s", "f"} <= set(data.columns):
            s = data.groupby(g, observed=True)["s"].sum().reindex(levels).to_numpy(float)
            f = data.groupby(g, observed=True)["f"].sum().reindex(levels).to_numpy(float)
            p = np.clip(s / (s + f), 1e-3, 1 - 1e-3)
            raw = np.log(p / (1 - p))
    x = np.arange(len(levels))
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    if truth is not None:
        tv = truth.reindex(levels).to_numpy(float)
        ax.scatter(x, tv, marker="*", s=60, color="black", label="true", zorder=3)
    if raw is not None:
        ax.scatter(x, raw, marker="o", facecolors="none", edgecolors="tab:blue", label="raw mean")
        for xi, r0, s0 in zip(x, raw, shrunk, strict=True):
            ax.annotate("", (xi, s0), (xi, r0), arrowprops=dict(arrowstyle="->", color="0.6"))
    # hollow and larger: bayesglm's x sits exactly on it when the identity holds, and both show
    ax.scatter(x, shrunk, marker="s", facecolors="none", edgecolors="tab:red", s=70,
               label="shrunken (fixef + ranef)", zorder=3)  # fmt: skip
    ax.scatter(x, coef, marker="x", color="tab:green", s=40, label="bayesglm", zorder=4)
    ax.axhline(mu, color="grey", ls="--", lw=1, label=f"grand mean {mu:.3g}")
    ax.set_xticks(x)
    ax.set_xticklabels(levels, rotation=60, fontsize=7)
    ax.set_ylabel("group mean" + (" (log-odds)" if bayes.family == "binomial" else ""))
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# HTML


def _plots_for(result: Any, out_dir: Path) -> list[Path]:
    a, b, name = result.fit_a, result.fit_b, result.case.name
    out: list[Path] = []
    slug = _slug(name)
    try:
        margins = margin_plot(result.comparison, out_dir / f"{slug}_margin.png", name)
        if margins is not None:  # result.comparison is set: cases with errors have no plots
            out.append(margins)
        if isinstance(a, MixedFit) and isinstance(b, MixedFit):
            cat = caterpillar_plot(a, b, out_dir / f"{slug}_caterpillar.png", name)
            if cat is not None:
                out.append(cat)
        elif isinstance(a, BayesGLMFit) and isinstance(b, MixedFit):
            out.append(
                shrinkage_plot(
                    a, b, result.data, result.truth, out_dir / f"{slug}_shrinkage.png", name
                )
            )
    except Exception as exc:  # a plot must never hide the tables
        result.plot_error = f"{type(exc).__name__}: {exc}"
    return out


def write_report(results: list[Any], out_dir: Path, suite: str = "") -> Path:
    """Write index.html and the PNGs into `out_dir`; return the index path."""
    from mixbridge.conformance.suite import summary_frame

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summary_frame(results)
    n_fail = int(summary["status"].isin(["FAIL", "ERROR"]).sum())
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        "<title>mixbridge conformance report</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}"
        "table{border-collapse:collapse;font-size:12px;margin:0.5em 0}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}"
        "img{max-width:100%;margin:4px;border:1px solid #eee}"
        ".ok{color:#1a7f37}.explained{color:#9a6700}.FAIL,.ERROR{color:#cf222e;font-weight:bold}"
        "</style></head><body>",
        "<h1>mixbridge conformance report</h1>",
        f"<p>suite: {html.escape(suite)} &middot; {stamp} &middot; {len(results)} cases, "
        f"<b>{n_fail} failing</b></p>",
        "<h2>Summary</h2>",
        _status_table(summary),
    ]
    for r in results:
        status = r.status
        parts.append(f"<h2 id='{_slug(r.case.name)}'>{html.escape(r.case.name)} "
                     f"<span class='{status}'>{status}</span></h2>")  # fmt: skip
        parts.append(
            f"<p><code>{html.escape(r.case.model)}: {html.escape(r.case.formula)}</code> on "
            f"<code>{html.escape(r.case.data)}</code>; a = {html.escape(r.case.engine_a)}, "
            f"b = {html.escape(r.case.engine_b)}; {r.seconds:.1f} s</p>"
        )
        if r.case.description:
            parts.append(f"<p>{html.escape(r.case.description)}</p>")
        if r.error:
            parts.append(f"<pre class='ERROR'>{html.escape(r.error)}</pre>")
            continue
        frame = r.comparison.to_frame()
        frame["max_abs"] = frame["max_abs"].map(_fmt)
        frame["max_rel"] = frame["max_rel"].map(_fmt)
        parts.append(frame.to_html(index=False, escape=True, border=0))
        for note in r.comparison.notes:
            parts.append(f"<p><i>note: {html.escape(note)}</i></p>")
        for png in _plots_for(r, out_dir):
            parts.append(f"<img src='{html.escape(png.name)}' alt='{html.escape(png.stem)}'>")
        if getattr(r, "plot_error", None):
            parts.append(f"<p><i>plot failed: {html.escape(r.plot_error)}</i></p>")
    parts.append("</body></html>")
    index = out_dir / "index.html"
    index.write_text("\n".join(parts), encoding="utf-8")
    return index


def _fmt(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2e}"


def _status_table(summary: pd.DataFrame) -> str:
    cols = ["case", "model", "engines", "status", "worst", "max_rel", "explained", "seconds"]
    head = "".join(f"<th>{c}</th>" for c in cols)
    body = []
    for _, row in summary.iterrows():
        cells = []
        for c in cols:
            v = row[c]
            if c == "case":
                cells.append(f"<td><a href='#{_slug(v)}'>{html.escape(str(v))}</a></td>")
            elif c == "status":
                cells.append(f"<td class='{v}'>{v}</td>")
            elif c == "max_rel":
                cells.append(f"<td>{_fmt(float(v))}</td>")
            else:
                cells.append(f"<td>{html.escape(str(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"
