"""HTML summaries for notebooks (`_repr_html_` of MixedFit, BayesGLMFit and Comparison).

Each shows what the R print a reader expects shows, as tables: for a mixed model the criterion
line, the random-effects table (variance, sd, correlations), the number of observations and
groups, the fixed-effects table with t/z values (p-values where lme4 gives them) and the fit's
warnings; for bayesglm arm's display(); for a comparison its rows with the verdict. Numbers are
shown to 6 significant digits; every text is escaped.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from scipy.special import ndtr

from mixbridge.results import BayesGLMFit, MixedFit

_STYLE = (
    "<style>.mixbridge table{border-collapse:collapse;margin:0.3em 0 0.8em 0}"
    ".mixbridge th,.mixbridge td{padding:2px 8px;border-bottom:1px solid #ddd}"
    ".mixbridge td.num{text-align:right;font-family:monospace}"
    ".mixbridge caption{text-align:left;font-weight:bold;padding:2px 0}"
    ".mixbridge .ok{color:#1a7f37}.mixbridge .explained{color:#9a6700}"
    ".mixbridge .FAIL{color:#cf222e;font-weight:bold}</style>"
)


def number(x: Any, digits: int = 6) -> str:
    """A number as the tables show it: `digits` significant digits, NA for missing."""
    if x is None:
        return "NA"
    v = float(x)
    if math.isnan(v):
        return "NA"
    if math.isinf(v):
        return "Inf" if v > 0 else "-Inf"
    return f"{v:.{digits}g}"


def _cell(value: Any) -> str:
    if isinstance(value, (float, np.floating)) or (
        isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    ):
        text = number(value) if isinstance(value, (float, np.floating)) else str(value)
        return f"<td class='num'>{html.escape(text)}</td>"
    return f"<td>{html.escape('' if value is None else str(value))}</td>"


def table(
    caption: str,
    header: Sequence[str],
    rows: Iterable[Sequence[Any]],
    row_classes: Sequence[str] | None = None,
) -> str:
    """An HTML table: escaped caption and header, one <tr> per row (numbers right-aligned)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = f" class='{html.escape(row_classes[i])}'" if row_classes else ""
        body.append(f"<tr{cls}>" + "".join(_cell(v) for v in row) + "</tr>")
    return (
        f"<table><caption>{html.escape(caption)}</caption><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _messages(messages: list[Any]) -> str:
    shown = [m for m in messages if m.kind in ("warning", "error")]
    if not shown:
        return ""
    items = "".join(f"<li>{html.escape(m.kind)}: {html.escape(m.text)}</li>" for m in shown)
    return f"<ul>{items}</ul>"


def _title(fit: MixedFit) -> str:
    if fit.model == "lmer":
        how = "REML" if fit.reml else "maximum likelihood"
        return f"Linear mixed model fit by {how} (lmerMod)"
    approx = "Laplace" if fit.nagq <= 1 else f"adaptive Gauss-Hermite, nAGQ = {fit.nagq}"
    return f"Generalized linear mixed model fit by maximum likelihood ({approx}) (glmerMod)"


def _random_effects_rows(fit: MixedFit) -> list[list[Any]]:
    vc = fit.varcorr
    rows: list[list[Any]] = []
    has_var2 = "var2" in vc
    variances = vc[vc["var2"].isna()] if has_var2 else vc
    previous = None
    for _, r in variances.iterrows():
        grp = str(r["grp"])
        name = "" if r["var1"] is None or isinstance(r["var1"], float) else str(r["var1"])
        corr = ""
        if has_var2 and name:
            earlier = vc[(vc["grp"] == r["grp"]) & (vc["var2"] == name)]
            corr = " ".join(f"{c:.3f}" for c in earlier["sdcor"])
        rows.append([grp if grp != previous else "", name, float(r["vcov"]),
                     float(r["sdcor"]), corr])  # fmt: skip
        previous = grp
    return rows


def mixed_fit_html(fit: MixedFit) -> str:
    """The HTML summary of a MixedFit (see the module docstring)."""
    parts = [_STYLE, "<div class='mixbridge'>",
             f"<p><b>{html.escape(_title(fit))}</b> &middot; engine "
             f"<code>{html.escape(str(fit.engine))}</code></p>",
             f"<p>Formula: <code>{html.escape(fit.formula)}</code>"]  # fmt: skip
    if fit.model == "glmer":
        parts.append(f" &middot; family {html.escape(fit.family)} ({html.escape(fit.link)})")
    parts.append("</p>")
    if fit.model == "lmer" and fit.reml:
        parts.append(table("Criterion", ["REML criterion", "AIC", "BIC", "logLik", "df.resid"],
                           [[fit.reml_criterion, fit.aic, fit.bic, fit.loglik,
                             fit.nobs - fit.df]]))  # fmt: skip
    else:
        parts.append(table("Criterion", ["AIC", "BIC", "logLik", "deviance", "df.resid"],
                           [[fit.aic, fit.bic, fit.loglik, -2 * fit.loglik,
                             fit.nobs - fit.df]]))  # fmt: skip
    parts.append(table("Random effects", ["Groups", "Name", "Variance", "Std.Dev.", "Corr"],
                       _random_effects_rows(fit)))  # fmt: skip
    groups = ", ".join(f"{html.escape(str(g))}: {n}" for g, n in fit.ngroups.items())
    parts.append(f"<p>Number of obs: {fit.nobs}; groups: {groups}</p>")
    se = fit.fixef_se
    stat = "t value" if fit.model == "lmer" or fit.family not in ("binomial", "poisson") else None
    header = ["", "Estimate", "Std. Error", stat or "z value"]
    rows = []
    for name, est in fit.fixef.items():
        z = float(est) / float(se[name])
        row: list[Any] = [str(name), float(est), float(se[name]), z]
        if stat is None:
            row.append(2.0 * float(ndtr(-abs(z))))
        rows.append(row)
    if stat is None:
        header.append("Pr(>|z|)")
    parts.append(table("Fixed effects", header, rows))
    flags = [f"converged: {'yes' if fit.converged else 'NO'}"]
    if fit.singular:
        flags.append("boundary (singular) fit")
    parts.append(f"<p>{html.escape('; '.join(flags))}</p>")
    parts.append(_messages(fit.messages))
    if any(m.kind == "warning" and m.code == "convergence" for m in fit.messages):
        from mixbridge.results import ALLFIT_POINTER

        parts.append(f"<p>{html.escape(ALLFIT_POINTER)}</p>")
    parts.append("</div>")
    return "".join(parts)


def bayesglm_fit_html(fit: BayesGLMFit) -> str:
    """The HTML summary of a BayesGLMFit: arm's display() as tables."""
    rows = [[str(k), float(v), float(fit.se_display[k]), float(fit.se[k])]
            for k, v in fit.coef.items()]  # fmt: skip
    stats = [[fit.nobs, len(fit.coef), fit.deviance, fit.null_deviance, fit.aic,
              fit.dispersion, fit.iterations, "yes" if fit.converged else "NO"]]  # fmt: skip
    parts = [
        _STYLE,
        "<div class='mixbridge'>",
        f"<p><b>bayesglm</b> &middot; engine <code>{html.escape(str(fit.engine))}</code></p>",
        f"<p>Formula: <code>{html.escape(fit.formula)}</code> &middot; family "
        f"{html.escape(fit.family)} ({html.escape(fit.link)})</p>",
        table("Coefficients", ["", "coef.est", "coef.se", "se (summary)"], rows),
        table(
            "Fit",
            [
                "n",
                "k",
                "residual deviance",
                "null deviance",
                "AIC",
                "dispersion",
                "iterations",
                "converged",
            ],
            stats,
        ),  # fmt: skip
        _messages(fit.messages),
        "</div>",
    ]
    return "".join(parts)


def comparison_html(cmp: Any) -> str:
    """The HTML view of a Comparison: one row per quantity, status coloured, then the notes."""
    verdict = "OK" if cmp.ok else f"FAIL ({len(cmp.failures)} quantities)"
    rows = [[r.quantity, r.max_abs, r.max_rel, r.where, r.tolerance, r.status, r.reason]
            for r in cmp.rows]  # fmt: skip
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in cmp.notes)
    return "".join([
        _STYLE,
        "<div class='mixbridge'>",
        f"<p><b>compare {html.escape(cmp.model)}</b>: a = <code>{html.escape(str(cmp.a))}"
        f"</code>, b = <code>{html.escape(str(cmp.b))}</code> (policy "
        f"{html.escape(cmp.policy)}) &middot; verdict <b class='{'ok' if cmp.ok else 'FAIL'}'>"
        f"{html.escape(verdict)}</b></p>",
        table("Quantities", ["quantity", "max|a-b|", "max rel", "where", "tolerance", "status",
                             "reason"], rows, [r.status for r in cmp.rows]),
        f"<ul>{notes}</ul>" if notes else "",
        "</div>",
    ])  # fmt: skip
