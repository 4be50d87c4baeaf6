"""The HTML conformance report is self-contained: every reference resolves, every image is a PNG.

Built in-process from engines that need no R (python vs statsmodels, python vs python), so the
check runs everywhere; the live-R report is exercised by test_conformance_cli.py.
"""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest

from mixbridge.conformance.report import write_report
from mixbridge.conformance.suite import Case, run_case

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class _Refs(HTMLParser):
    """Collects the ids and every (tag, attribute, value) that points at another resource."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.refs: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name == "id" and value:
                self.ids.add(value)
            if name in ("src", "href") and value is not None:
                self.refs.append((tag, name, value))


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR", f"{path.name}: first chunk is not IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cases = [
        Case("slopes_vs_statsmodels", "lmer", "y ~ x + (x | g)", "sim:unbalanced_slopes:3",
             engine_a="python", engine_b="statsmodels", options={"reml": False}),
        Case("bayesglm_poisson", "bayesglm", "y ~ x", "sim:poisson_groups:2",
             options={"family": "poisson"}, engine_a="python", engine_b="python"),
        Case("shrinkage_python", "shrinkage", "y ~ 0 + factor(g)", "sim:twelve_groups:1",
             mixed_formula="y ~ 1 + (1 | g)", engine_a="python", engine_b="python",
             options={"reml": False}),
        # a case that errors: the report shows the error and references no image for it
        Case("broken_case", "lmer", "y ~ x + (1 | g)", "sim:no_such_simulator:1",
             engine_a="python", engine_b="python"),
    ]  # fmt: skip
    results = [run_case(c) for c in cases]
    for r in results[:3]:
        assert r.error is None, r.error
    assert results[3].error is not None
    return write_report(results, tmp_path_factory.mktemp("report") / "rep", suite="test")


def test_report_references_resolve_and_images_are_pngs(report):
    out_dir = report.parent
    parser = _Refs()
    parser.feed(report.read_text(encoding="utf-8"))
    images = []
    for tag, attr, value in parser.refs:
        url = urlparse(value)
        if value.startswith("#"):  # in-page link: the summary's case links
            assert value[1:] in parser.ids, f"<{tag} {attr}={value!r}>: no element with that id"
            continue
        # only relative paths inside the report directory: it must open when copied elsewhere
        assert not url.scheme and not url.netloc and not value.startswith("/"), value
        target = (out_dir / unquote(url.path)).resolve()
        assert target.is_relative_to(out_dir.resolve()), f"{value!r} points outside the report"
        assert target.is_file(), f"<{tag} {attr}={value!r}>: {target} does not exist"
        if tag == "img":
            images.append(target)
    # every case: the margin plot; lmer: + caterpillar; shrinkage: + shrinkage plot; error: none
    assert sorted(p.name for p in images) == [
        "bayesglm_poisson_margin.png",
        "shrinkage_python_margin.png",
        "shrinkage_python_shrinkage.png",
        "slopes_vs_statsmodels_caterpillar.png",
        "slopes_vs_statsmodels_margin.png",
    ]
    # every PNG written is shown, and each is a real, non-blank image
    assert sorted(p.name for p in out_dir.glob("*.png")) == sorted(p.name for p in images)
    import matplotlib.image as mpimg

    for png in images:
        width, height = _png_size(png)
        assert width >= 200 and height >= 200, (png.name, width, height)
        pixels = mpimg.imread(png)
        assert pixels.shape[:2] == (height, width)
        assert np.ptp(pixels[..., :3]) > 0.5, f"{png.name} is blank"


def test_report_tables_and_error(report):
    text = report.read_text(encoding="utf-8")
    for name in ("slopes_vs_statsmodels", "bayesglm_poisson", "shrinkage_python", "broken_case"):
        assert f"id='{name}'" in text and f"href='#{name}'" in text
    assert "unknown simulator" in text  # the broken case's error is shown, not hidden
    assert "<b>1 failing</b>" in text


# ---------------------------------------------------------------------------------------------
# The report in a real browser: headless Chromium (Debian's `chromium`, installed by ci/setup.sh)

IMAGES_JS = """JSON.stringify([...document.images].map(i => ({
    src: i.getAttribute('src'), complete: i.complete, width: i.naturalWidth,
    shown: i.getBoundingClientRect().width})))"""
TABLES_JS = """JSON.stringify([...document.querySelectorAll('table')].map(t => ({
    rows: t.rows.length, height: t.getBoundingClientRect().height,
    text: t.innerText.slice(0, 2000)})))"""
BAND_RGB = (0xD8, 0xF0, 0xDC)  # the margin plots' within-tolerance band


@pytest.fixture(scope="module")
def chromium(request, tmp_path_factory):
    """A headless Chromium; skipped locally without one, a failure under CI=true."""
    import os
    import shutil

    from browser import HeadlessChromium

    exe = shutil.which(os.environ.get("MIXBRIDGE_CHROMIUM") or "chromium")
    if exe is None:
        message = "chromium not found (apt-get install -y chromium; ci/setup.sh installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    browser = HeadlessChromium(exe, tmp_path_factory.mktemp("chromium") / "profile")
    yield browser
    browser.close()


def _page_state(browser, page: Path) -> tuple[list[dict], list[dict], bytes]:
    import json

    browser.open(page)
    images = json.loads(browser.evaluate(IMAGES_JS))
    tables = json.loads(browser.evaluate(TABLES_JS))
    return images, tables, browser.screenshot()


def test_report_renders_in_headless_chromium(report, chromium):
    import io

    import matplotlib.image as mpimg

    source = report.read_text(encoding="utf-8")
    images, tables, png = _page_state(chromium, report)
    # every image the HTML references was loaded and laid out
    assert len(images) == source.count("<img ") == 5
    for img in images:
        assert img["complete"] and img["width"] > 0 and img["shown"] > 0, img
    # every table rendered, with its rows: the summary names each case and its status
    assert len(tables) == source.count("<table")
    assert all(t["rows"] >= 2 and t["height"] > 0 for t in tables), tables
    summary = tables[0]["text"]
    for name in ("slopes_vs_statsmodels", "bayesglm_poisson", "shrinkage_python", "broken_case"):
        assert name in summary
    assert "ERROR" in summary
    # the full-page screenshot is not blank, and the plots were painted into it
    pixels = mpimg.imread(io.BytesIO(png))[..., :3]
    height, width = pixels.shape[:2]
    assert width >= 1200 and height > 2000, (width, height)
    rgb = np.round(pixels * 255).astype(int)
    ink = np.mean(np.any(rgb < 200, axis=-1))
    assert ink > 0.01, f"screenshot nearly blank: {ink:.4f} of pixels drawn"
    band = np.all(np.abs(rgb - np.array(BAND_RGB)) <= 3, axis=-1)
    assert band.sum() > 20_000, f"margin-plot bands not painted ({band.sum()} pixels)"


def test_browser_check_catches_a_broken_image(report, chromium, tmp_path):
    """The same check fails on a page whose image does not load (the check can fail)."""
    import shutil

    copy = tmp_path / "report"
    shutil.copytree(report.parent, copy)
    page = copy / "index.html"
    page.write_text(
        page.read_text(encoding="utf-8").replace(
            "</body>", "<img src='no_such_plot.png' alt='missing'></body>"
        ),
        encoding="utf-8",
    )
    images, _, _ = _page_state(chromium, page)
    broken = [i["src"] for i in images if not (i["complete"] and i["width"] > 0)]
    assert broken == ["no_such_plot.png"]
