"""``medcnn web`` in a real browser: Chromium (Debian's, ``apt-get install chromium``) driven by
Playwright, against the real server and the real worker with the shipped model, on the
synthetic phantom. Slow (the worker loads the model); CI runs them (``.ci/run`` installs
Chromium where it is missing).

Set ``MEDCNN_UPDATE_SCREENSHOTS=1`` to write the README's picture
(``docs/images/web_viewer.png``) from the first test.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip(
    "trame_slicer", reason='the web extra is not installed: pip install -e ".[web]"'
)
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright is not installed: pip install playwright"
)
from browser_support import (  # noqa: E402
    CHROMIUM,
    VIEWPORT,
    click_centre,
    heat_mask,
    open_viewer,
    pixels,
    placed_points,
    results_row,
    start_server,
    stop_server,
)

if CHROMIUM is None:
    pytest.skip("Chromium is not installed: apt-get install chromium", allow_module_level=True)

from medcnn.phantom import NODULE_CENTER_RAS  # noqa: E402

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
README_PICTURE = REPO / "docs" / "images" / "web_viewer.png"
TIMEOUT_MS = 300_000


@pytest.fixture(scope="module")
def server_url():
    """``medcnn web`` on the phantom, on a free port of 127.0.0.1, stopped as Ctrl+C stops it."""
    process, url = start_server([])
    yield url
    assert stop_server(process) == 0  # Ctrl+C ends it cleanly


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(browser, server_url):
    page = browser.new_page(viewport=VIEWPORT, accept_downloads=True)
    page.set_default_timeout(TIMEOUT_MS)
    open_viewer(page, server_url)
    yield page
    page.close()


def start_afresh(page) -> None:
    """The scene as it opened, whatever ran before on this page: no points, no results."""
    if page.locator("#clear-results").count():
        page.click("#clear-results")
    page.click("text=Clear points")
    page.wait_for_function(
        "() => !document.querySelector('#points li')"
        " && !document.querySelector('#results tbody tr')"
    )
    page.wait_for_timeout(1500)  # the views redrawn without the results


def test_click_analyze_shows_the_result_json_probability_and_the_heat_on_the_nodule(page):
    start_afresh(page)
    before = pixels(page)
    assert not heat_mask(before).any()
    centre = click_centre(page)  # the phantom opens with its nodule under every view's centre
    page.wait_for_selector("#points li")
    (point,) = placed_points(page)
    np.testing.assert_allclose(point, NODULE_CENTER_RAS, atol=0.6)  # within a pixel or two

    page.click("#analyze")
    page.wait_for_selector("#results tbody tr")
    assert page.locator("#error").count() == 0
    row = results_row(page)
    assert row["Model"] == "lung_nodule_ct"

    with page.expect_download() as download:
        page.click("#downloads >> text=result.json")
    result = json.loads(Path(download.value.path()).read_text())
    assert row["Probability"] == f"{result['probability']:.3f}"
    assert row["Uncertainty"] == f"{result['uncertainty']:.3f}"
    assert row["Label"] == result["label"]
    assert row["Diameter"] == f"{result['diameter_mm']:.1f}"
    np.testing.assert_allclose(result["point"]["ras"], point, atol=0.01)

    page.wait_for_timeout(1500)  # the last frames of the views
    after = pixels(page)
    heat = heat_mask(after) & ~heat_mask(before)
    rows, columns = np.nonzero(heat)
    assert len(rows) > 50, "no heatmap on screen"
    distance = np.hypot(columns - centre[0], rows - centre[1])
    width = after.shape[1]
    # Around the nodule (12 mm across, at the view's centre, the view about 130 mm wide), not
    # elsewhere: the heat's centre within 4 % of the view's width of the point, all of it
    # within 20 %.
    assert np.hypot(columns.mean() - centre[0], rows.mean() - centre[1]) < 0.04 * width
    assert distance.max() < 0.2 * width, distance.max() / width
    if os.environ.get("MEDCNN_UPDATE_SCREENSHOTS") == "1":
        page.screenshot(path=str(README_PICTURE))


# Analyze, then Cancel as soon as the button says so: in the page, within a frame, so that a
# warm analysis (under a second) cannot end first.
ANALYZE_THEN_CANCEL_JS = """
async () => {
  const button = () => document.querySelector('#analyze');
  button().click();
  await new Promise((resolve) => {
    const check = () => {
      if (/cancel/i.test(button().innerText)) resolve();
      else requestAnimationFrame(check);
    };
    check();
  });
  button().click();
}
"""


def test_cancel_stops_a_running_analysis_and_the_next_one_works(page):
    if not placed_points(page):  # run alone: the point the first test places
        click_centre(page)
        page.wait_for_selector("#points li")
    rows = page.locator("#results tbody tr").count()
    stamp = results_row(page)["Analyzed"] if rows else ""
    page.evaluate(ANALYZE_THEN_CANCEL_JS)
    page.wait_for_selector("#analyze >> text=Analyze")
    assert "cancelled" in page.locator("#message").inner_text()
    assert page.locator("#error").count() == 0
    assert page.locator("#results tbody tr").count() == rows  # a cancelled analysis adds none

    page.click("#analyze")  # the worker was killed: a fresh one starts, then answers
    page.wait_for_function(
        "() => { const m = document.querySelector('#message');"
        " return m && m.innerText && !/cancelled/.test(m.innerText)"
        " && /analyze/i.test(document.querySelector('#analyze').innerText); }"
    )
    assert page.locator("#error").count() == 0
    assert page.locator("#results tbody tr").count() == 1  # the same point: its row replaced
    assert results_row(page)["Analyzed"] >= stamp


def test_a_file_that_is_not_a_scan_shows_the_sentence_and_leaves_the_scene(page, tmp_path):
    points, rows = placed_points(page), page.locator("#results tbody tr").count()
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n" * 40)
    page.set_input_files("input[type=file]", str(text))
    page.wait_for_selector("#error")
    assert page.locator("#error").inner_text().strip() == (
        "notes.txt is not an image MedCNN can read (a DICOM series or file, NIfTI, NRRD, "
        "MetaImage, PNG or JPEG); the scene is unchanged."
    )
    assert page.locator("#image-name").inner_text() == "Synthetic phantom"
    assert placed_points(page) == points
    assert page.locator("#results tbody tr").count() == rows


def test_a_radiograph_shows_in_one_view_and_is_analysed_whole(browser, tmp_path):
    from medcnn.xray.phantom import ensure_radiograph_phantom

    process, url = start_server([str(ensure_radiograph_phantom(tmp_path / "radiograph"))])
    try:
        page = browser.new_page(viewport=VIEWPORT, accept_downloads=True)
        page.set_default_timeout(TIMEOUT_MS)
        open_viewer(page, url)
        assert page.locator(".image-display-area").count() == 1  # one view
        assert "no point is needed" in page.locator("#hint").inner_text()
        assert page.locator("#points").count() == 0
        page.click("#analyze")
        page.wait_for_selector("#results tbody tr")
        row = results_row(page)
        with page.expect_download() as download:
            page.click("#downloads >> text=result.json")
        result = json.loads(Path(download.value.path()).read_text())
        page.close()
    finally:
        status = stop_server(process)
    assert status == 0
    assert row["Model"] == result["model"]["id"] == "chest_xray_pneumonia"
    assert row["Probability"] == f"{result['probability']:.3f}"
    assert row["Point"] == "" and row["Diameter"] == ""
