"""A warm click in the browser (``medcnn web``): from pressing Analyze to the heatmap on screen.

    python benchmarks/web_click.py --out benchmarks/results/web_click.json   # about 2 minutes

The real server and worker, Debian's Chromium driven by Playwright (``pip install -e
".[test,web]"``, ``apt-get install chromium``). For each scan, ``medcnn web SCAN --point R A S``
places the point and centres the views on it; a first Analyze loads the model and exports the
volume (not counted). Then, ``--repeats`` times: Clear results (the heat leaves the screen),
press Analyze, and read the axial view's pictures in the page (a canvas, at every animation
frame) until the heat colours cover the point. The time includes the worker's analysis,
importing the results into the scene, rendering the views and streaming the picture to the
browser; its resolution is one frame. Scans: the real chest CT series of ``../shared/data`` at the
benchmark's point (``scans.POINT_RAS``), and the synthetic phantom at its nodule.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from run import REPO, machine_state, summary
from scans import CHEST_CT, POINT_RAS

sys.path.insert(0, str(REPO / "tests" / "web"))
from browser_support import (  # noqa: E402
    CHROMIUM,
    VIEWPORT,
    analyze_to_heat_seconds,
    heat_mask,
    open_viewer,
    pixels,
    start_server,
    stop_server,
)

from medcnn.phantom import NODULE_CENTER_RAS  # noqa: E402

MIN_HEAT_PIXELS = 30


def heat_on_point(page) -> tuple[bool, float]:
    """Whether heat colours lie at the view's centre (where the point is); the screenshot's
    duration."""
    start = time.perf_counter()
    image = pixels(page)
    took = time.perf_counter() - start
    height, width = image.shape[:2]
    rows, columns = np.nonzero(heat_mask(image))
    near = np.hypot(columns - width / 2, rows - height / 2) < 0.1 * width
    return int(near.sum()) >= MIN_HEAT_PIXELS, took


def wait_for(page, want: bool, timeout: float = 120.0) -> tuple[float, list[float]]:
    start = time.perf_counter()
    shots = []
    while time.perf_counter() - start < timeout:
        shown, took = heat_on_point(page)
        shots.append(took)
        if shown == want:
            return time.perf_counter() - start, shots
    raise TimeoutError(f"the heat did not {'appear' if want else 'go'} within {timeout} s")


def measure(scan: Path | None, point, repeats: int) -> dict:
    from playwright.sync_api import sync_playwright

    arguments = ([str(scan)] if scan else []) + ["--point", *(str(v) for v in point)]
    process, url = start_server(arguments)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(300_000)
            open_viewer(page, url)
            page.click("#analyze")  # the first: the model loads, the volume is exported
            page.wait_for_selector("#results tbody tr")
            wait_for(page, True)
            times, shots = [], []
            for _ in range(repeats):
                page.click("#clear-results")
                _, taken = wait_for(page, False)
                shots.extend(taken)
                times.append(analyze_to_heat_seconds(page))
                page.wait_for_selector("#analyze >> text=Analyze")
            browser.close()
    finally:
        stop_server(process)
    return {
        "scan": str(scan) if scan else "synthetic phantom",
        "point_ras": list(point),
        "click_to_overlay": summary(times),
        "times_s": times,
        "screenshot_s": summary(shots),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if CHROMIUM is None:
        print("Chromium is not installed: apt-get install chromium", file=sys.stderr)
        return 2
    results: dict = {"machine_before": machine_state(), "rows": {}}
    if CHEST_CT.is_dir():
        results["rows"]["chest_ct_dicom"] = measure(CHEST_CT, POINT_RAS, args.repeats)
    results["rows"]["phantom"] = measure(None, NODULE_CENTER_RAS, args.repeats)
    results["machine_after"] = machine_state()
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    for name, row in results["rows"].items():
        timing = row["click_to_overlay"]
        print(
            f"{name}: click to overlay median {timing['median_s']:.3f} s "
            f"(min {timing['min_s']:.3f}, max {timing['max_s']:.3f}, {timing['runs']} runs; "
            f"one screenshot {row['screenshot_s']['median_s']:.3f} s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
