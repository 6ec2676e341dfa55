"""Driving ``medcnn web`` in Chromium with Playwright, for the browser tests and the benchmark
of a click in the browser (``benchmarks/web_click.py``): starting and stopping the server,
opening the page, clicking in the axial view, reading the panel and the heat on screen."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from io import BytesIO
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
VIEWPORT = {"width": 1400, "height": 900}
# A pixel is heat-coloured (the heat map's red to orange) when red exceeds blue and green by
# these: grey CT has r = g = b, the nodule's segment is green, points are cyan.
RED_OVER_BLUE, RED_OVER_GREEN = 40, 20


def start_server(arguments: list[str], timeout: float = 180.0) -> tuple[subprocess.Popen, str]:
    """``medcnn web ARGUMENTS --port 0``, and the address it announces."""
    process = subprocess.Popen(
        [sys.executable, "-m", "medcnn", "web", *arguments, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        found = re.search(r"open (http://127\.0\.0\.1:\d+/) in a browser", line)
        if found:
            return process, found.group(1)
    process.kill()
    raise AssertionError(f"medcnn web did not announce its address; it said: {''.join(seen)}")


def stop_server(process: subprocess.Popen) -> int | None:
    """As Ctrl+C stops it (the worker goes with it); its exit status, None if it had to be
    killed."""
    process.send_signal(signal.SIGINT)
    try:
        status: int | None = process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        status = None
    process.stdout.close()
    return status


def open_viewer(page, url: str) -> None:
    """Load the page and wait for the first picture and the worker's list of models."""
    page.goto(url)
    page.wait_for_function(
        "() => { const img = document.querySelector('.image-display-area');"
        " return img && img.naturalWidth > 0; }"
    )
    page.wait_for_selector("text=Automatic: the image decides")


def axial(page):
    return page.locator(".image-display-area").first  # the CT layout's main view


def pixels(page) -> np.ndarray:
    """The axial view as the browser shows it, (height, width, RGB)."""
    from PIL import Image

    png = axial(page).screenshot()
    return np.asarray(Image.open(BytesIO(png)).convert("RGB")).astype(int)


def heat_mask(image: np.ndarray) -> np.ndarray:
    """Where the image is heat-coloured (``RED_OVER_BLUE``, ``RED_OVER_GREEN``)."""
    red, green, blue = image[..., 0], image[..., 1], image[..., 2]
    return (red - blue > RED_OVER_BLUE) & (red - green > RED_OVER_GREEN)


def click_centre(page) -> tuple[float, float]:
    """A click at the axial view's centre; returns it in the view's pixels."""
    box = axial(page).bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x - 4, y)
    page.mouse.click(x, y)
    return box["width"] / 2, box["height"] / 2


def placed_points(page) -> list[list[float]]:
    text = page.locator("#points").inner_text() if page.locator("#points li").count() else ""
    return [
        [float(v) for v in found]
        for found in re.findall(r"R (-?[\d.]+), A (-?[\d.]+), S (-?[\d.]+)", text)
    ]


def results_row(page) -> dict[str, str]:
    cells = page.locator("#results tbody tr").first.locator("td")
    return {
        cells.nth(i).get_attribute("data-column"): cells.nth(i).inner_text()
        for i in range(cells.count())
    }


# In the page: press Analyze, then read the axial view's every new frame until heat colours
# cover its centre (where the point is); resolves with the milliseconds since the press.
ANALYZE_TO_HEAT_JS = """
async ([redOverBlue, redOverGreen, radiusShare, minimum, timeoutMs]) => {
  const img = document.querySelector('.image-display-area');
  const canvas = document.createElement('canvas');
  const context = canvas.getContext('2d', { willReadFrequently: true });
  const heatAtCentre = () => {
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    context.drawImage(img, 0, 0);
    const r = Math.round(radiusShare * canvas.width);
    const x = canvas.width / 2 - r, y = canvas.height / 2 - r;
    const data = context.getImageData(x, y, 2 * r, 2 * r).data;
    let count = 0;
    for (let i = 0; i < data.length; i += 4) {
      if (data[i] - data[i + 2] > redOverBlue && data[i] - data[i + 1] > redOverGreen) count++;
    }
    return count >= minimum;
  };
  const start = performance.now();
  document.querySelector('#analyze').click();
  return await new Promise((resolve, reject) => {
    const check = () => {
      const elapsed = performance.now() - start;
      if (heatAtCentre()) resolve(elapsed);
      else if (elapsed > timeoutMs) reject(new Error('no heat within the timeout'));
      else requestAnimationFrame(check);
    };
    check();
  });
}
"""


def analyze_to_heat_seconds(page, radius_share: float = 0.1, minimum: int = 30) -> float:
    """Press Analyze and time, in the browser, until the heat is on screen at the view's
    centre (one frame's resolution)."""
    arguments = [RED_OVER_BLUE, RED_OVER_GREEN, radius_share, minimum, 120_000]
    return page.evaluate(ANALYZE_TO_HEAT_JS, arguments) / 1000.0
