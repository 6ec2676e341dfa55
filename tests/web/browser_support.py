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


def stop_server(process: subprocess.Popen) -> None:
    """As Ctrl+C stops it (the worker goes with it)."""
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
    process.stdout.close()


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
    """The heat colours' red to orange: red well above blue and green (grey CT has r = g = b,
    the nodule's segment and the point are green)."""
    red, green, blue = image[..., 0], image[..., 1], image[..., 2]
    return (red - blue > 40) & (red - green > 20)


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
