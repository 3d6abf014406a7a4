"""The HTML report in a real browser: headless Chromium opens report.html, and the page must load with
no console error, every image decoded, and the answer (which group won, by how much, how sure) on
the first screen of a 1280x800 window. A screenshot of that first screen is kept as a test artifact
in $DLEXP_TEST_ARTIFACTS (default: test-artifacts/ in the checkout).

Chromium is Debian's `chromium` package (.ci/run installs it). Without it the test is skipped and
says why; under CI=true a missing browser fails the test instead.
"""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

import pytest

from browser import Browser, find_chromium
from conftest import REPO
from test_report import invoke, write_run

ARTIFACTS = Path(os.environ.get("DLEXP_TEST_ARTIFACTS") or REPO / "test-artifacts")
WIDTH, HEIGHT = 1280, 800  # a laptop's browser window: "above the fold"


@pytest.fixture(scope="module")
def chromium():
    path = find_chromium()
    if path is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("CI: no chromium on PATH; install Debian's chromium package (.ci/run does)")
        pytest.skip("no chromium on PATH (apt-get install chromium); the HTML report was not checked in a browser")
    with Browser.start(path) as browser:
        yield browser


def optimizer_study(root: Path) -> None:
    """sgd, momentum sgd and adam, 7 seeds each, 8 epochs: learning curves that look like real ones."""
    import numpy as np

    rng = np.random.default_rng(0)
    for opt, cfg, top, speed in (("sgd", {}, 0.90, 0.35), ("sgd", {"optimizer.momentum": 0.9}, 0.93, 0.6), ("adam", {}, 0.95, 0.8)):
        for seed in range(7):
            curve = top - (top - 0.3) * np.exp(-speed * np.arange(1, 9)) + rng.normal(0, 0.006, 8)
            label = "m" if cfg else ""
            write_run(root, f"{opt}{label}-{seed}", optimizer=opt, lr=0.01 if opt == "adam" else 0.1, seed=seed,
                      curve=curve.tolist(), cfg_extra=cfg, duration=float(20 + rng.uniform(0, 5)))


@pytest.mark.slow
def test_the_html_report_loads_cleanly_in_chromium_and_answers_above_the_fold(chromium, tmp_path):
    root = tmp_path / "results"
    optimizer_study(root)
    out = tmp_path / "report"
    page_file = out / "report.html"
    r = invoke("--results-dir", str(root), "--by", "optimizer,optimizer.momentum", "--baseline",
               "optimizer=sgd,optimizer.momentum=0", "--target", "val/acc=0.85", "--plots", "all",
               "--out", str(out), "--html", str(page_file))
    assert r.exit_code == 0, r.output
    n_plots = len(list(out.glob("*.png")))
    assert n_plots == 5

    page = chromium.open(page_file.as_uri(), WIDTH, HEIGHT)
    assert page.errors == []
    images = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
    assert len(images) == n_plots and all(done and w > 100 and h > 100 for done, w, h in images), images
    fold = page.evaluate("""(() => {
        const a = document.getElementById('answer').getBoundingClientRect();
        const g = document.getElementById('glance').getBoundingClientRect();
        return {answer: a.bottom, glance: g.bottom, height: window.innerHeight,
                text: document.getElementById('answer').innerText};
    })()""")
    # the answer and the table of every group with its CI and its difference to the baseline: first screen
    assert fold["answer"] < fold["height"] and fold["glance"] < fold["height"], fold
    assert re.search(r"Best: adam, .*\(95% CI [\d.]+ to [\d.]+, n=7\)", fold["text"])
    assert re.search(r"adam vs sgd momentum=0: \+[\d.]+ \(95% CI \+[\d.]+ to \+[\d.]+\), paired t p = \S+ after Holm",
                     fold["text"])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = page.screenshot()
    (ARTIFACTS / "report_html_first_screen.png").write_bytes(shot)
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"

    # the checks catch what they look for: the same page with one broken image and a script error
    broken = page_file.read_text().replace("data:image/png;base64,", "data:image/png;base64,AAAA", 1)
    broken = broken.replace("</body>", "<script>console.error('injected'); undefined_function();</script></body>")
    bad_file = tmp_path / "broken.html"
    bad_file.write_text(broken)
    bad = chromium.open(bad_file.as_uri(), WIDTH, HEIGHT)
    assert any("injected" in e for e in bad.errors) and any("undefined_function" in e for e in bad.errors)
    widths = bad.evaluate("Array.from(document.images).map(i => i.naturalWidth)")
    assert sorted(widths)[0] == 0 and sum(w > 0 for w in widths) == n_plots - 1


def test_the_pipe_driver_reports_a_missing_file_and_a_console_error(chromium, tmp_path):
    page_file = tmp_path / "p.html"
    one_pixel = base64.b64encode(bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6364f8cf000003860180b7b4a9690000000049454e44ae426082")).decode()
    page_file.write_text(f"<!DOCTYPE html><html><head><link rel='icon' href='data:,'></head><body>"
                         f"<img src='data:image/png;base64,{one_pixel}'><img src='missing.png'>"
                         "<script>console.error('boom')</script></body></html>")
    page = chromium.open(page_file.as_uri())
    errors = page.errors
    assert any("boom" in e for e in errors) and any("missing.png" in e for e in errors)
    assert page.evaluate("Array.from(document.images).map(i => i.naturalWidth)") == [1, 0]
