"""Notebook HTML (`_repr_html_`) of MixedFit, BayesGLMFit and Comparison: it parses, and its
tables carry the numbers a reader looks for (estimates, SEs, variance components, the verdict)."""

from __future__ import annotations

import dataclasses
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

import mixbridge
from mixbridge.results import Message


class _Tables(HTMLParser):
    """Tables as {caption: [[cell text, ...], ...]} (header row first); all text seen."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[list[str]]] = {}
        self.text: list[str] = []
        self._caption: str | None = None
        self._rows: list[list[str]] | None = None
        self._cell: list[str] | None = None
        self._in_caption = False
        self.open_tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in ("br", "img", "meta"):
            self.open_tags.append(tag)
        if tag == "table":
            self._rows, self._caption = [], ""
        elif tag == "caption":
            self._in_caption = True
        elif tag == "tr" and self._rows is not None:
            self._rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        assert self.open_tags and self.open_tags[-1] == tag, (tag, self.open_tags[-3:])
        self.open_tags.pop()
        if tag == "caption":
            self._in_caption = False
        elif tag in ("td", "th") and self._cell is not None:
            self._rows[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self.tables[self._caption] = self._rows
            self._rows = None

    def handle_data(self, data):
        self.text.append(data)
        if self._in_caption:
            self._caption += data
        elif self._cell is not None:
            self._cell.append(data)


def _parse(html: str) -> _Tables:
    p = _Tables()
    p.feed(html)
    p.close()
    assert not p.open_tags, f"unclosed tags: {p.open_tags}"
    return p


def _data(seed: int = 4) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.repeat([f"g{j:02d}" for j in range(15)], 12)
    u = rng.normal(0, 1.0, 15)[np.repeat(np.arange(15), 12)]
    v = rng.normal(0, 0.3, 15)[np.repeat(np.arange(15), 12)]
    x = rng.normal(size=len(g))
    eta = -0.3 + 0.8 * x + u
    return pd.DataFrame({
        "y": 2 + (0.5 + v) * x + u + rng.normal(size=len(g)), "x": x, "g": g,
        "s": rng.binomial(1, 1 / (1 + np.exp(-eta))),
    })  # fmt: skip


def _float(text: str) -> float:
    return float(text)


def test_lmer_html_has_the_summary_tables():
    fit = mixbridge.lmer("y ~ x + (x | g)", _data())
    page = _parse(fit._repr_html_())
    assert set(page.tables) == {"Criterion", "Random effects", "Fixed effects"}
    text = " ".join(page.text)
    assert "Linear mixed model fit by REML" in text and "y ~ x + (x | g)" in text
    assert "Number of obs: 180; groups: g: 15" in text
    fixed = page.tables["Fixed effects"]
    assert fixed[0] == ["", "Estimate", "Std. Error", "t value"]
    assert [r[0] for r in fixed[1:]] == list(fit.fixef.index)
    for row in fixed[1:]:
        name = row[0]
        assert _float(row[1]) == pytest.approx(fit.fixef[name], rel=1e-5)
        assert _float(row[2]) == pytest.approx(fit.fixef_se[name], rel=1e-5)
        assert _float(row[3]) == pytest.approx(fit.fixef[name] / fit.fixef_se[name], rel=1e-5)
    ranef = page.tables["Random effects"]
    assert ranef[0] == ["Groups", "Name", "Variance", "Std.Dev.", "Corr"]
    vc = fit.varcorr[fit.varcorr["var2"].isna()]
    assert [r[1] for r in ranef[1:]] == [("" if pd.isna(v) else v) for v in vc["var1"]]
    for row, (_, ref) in zip(ranef[1:], vc.iterrows(), strict=True):
        assert _float(row[2]) == pytest.approx(ref["vcov"], rel=1e-5)
        assert _float(row[3]) == pytest.approx(ref["sdcor"], rel=1e-5)
    corr = fit.varcorr[fit.varcorr["var2"].notna()]["sdcor"].iloc[0]
    assert _float(ranef[2][4]) == pytest.approx(corr, abs=1e-3)  # the x row: corr with (Int)
    crit = page.tables["Criterion"]
    assert crit[0][0] == "REML criterion"
    assert _float(crit[1][0]) == pytest.approx(fit.reml_criterion, rel=1e-5)


def test_glmer_html_has_z_and_p_values():
    fit = mixbridge.glmer("s ~ x + (1 | g)", _data(), family="binomial")
    page = _parse(fit._repr_html_())
    fixed = page.tables["Fixed effects"]
    assert fixed[0] == ["", "Estimate", "Std. Error", "z value", "Pr(>|z|)"]
    tidy = fit.tidy(effects="fixed")
    for row, (_, ref) in zip(fixed[1:], tidy.iterrows(), strict=True):
        assert _float(row[4]) == pytest.approx(ref["p_value"], rel=1e-5)
    assert page.tables["Criterion"][0][:4] == ["AIC", "BIC", "logLik", "deviance"]
    assert _float(page.tables["Criterion"][1][2]) == pytest.approx(fit.loglik, rel=1e-5)


def test_html_escapes_text_and_shows_warnings():
    fit = mixbridge.lmer("y ~ x + (1 | g)", _data())
    fit = dataclasses.replace(
        fit, messages=[Message("warning", "<script>alert(1)</script> & more", "R")]
    )
    html = fit._repr_html_()
    assert "<script>" not in html and "&lt;script&gt;" in html
    page = _parse(html)
    assert "warning: <script>alert(1)</script> & more" in " ".join(page.text)


def test_bayesglm_html():
    d = _data()
    fit = mixbridge.bayesglm("s ~ x + g", d, family="binomial")
    page = _parse(fit._repr_html_())
    coef = page.tables["Coefficients"]
    assert coef[0] == ["", "coef.est", "coef.se", "se (summary)"]
    assert [r[0] for r in coef[1:]] == list(fit.coef.index)
    for row in coef[1:]:
        assert _float(row[1]) == pytest.approx(fit.coef[row[0]], rel=1e-5, abs=1e-12)
        assert _float(row[2]) == pytest.approx(fit.se_display[row[0]], rel=1e-5)
    stats = page.tables["Fit"]
    assert int(stats[1][0]) == fit.nobs and int(stats[1][1]) == len(fit.coef)
    assert _float(stats[1][2]) == pytest.approx(fit.deviance, rel=1e-5)


def test_comparison_html_shows_every_row_and_the_verdict():
    d = _data()
    a = mixbridge.lmer("y ~ x + (1 | g)", d)
    b = mixbridge.lmer("y ~ x + (1 | g)", d)
    b.fixef = b.fixef + 0.1  # a drifted reference: fixef fails
    cmp = mixbridge.compare(a, b)
    page = _parse(cmp._repr_html_())
    rows = page.tables["Quantities"]
    assert rows[0] == ["quantity", "max|a-b|", "max rel", "where", "tolerance", "status",
                       "reason"]  # fmt: skip
    assert [r[0] for r in rows[1:]] == [r.quantity for r in cmp.rows]
    status = {r[0]: r[5] for r in rows[1:]}
    assert status["fixef"] == "FAIL" and status["theta"] == "ok"
    fixef_row = next(r for r in rows[1:] if r[0] == "fixef")
    assert _float(fixef_row[1]) == pytest.approx(0.1, rel=1e-4)
    assert "verdict FAIL (1 quantities)" in "".join(page.text)
    assert "class='FAIL'" in cmp._repr_html_()
