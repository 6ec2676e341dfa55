"""Speed of the chest X-ray model, against reading the image, in one run.

    python benchmarks/radiographs.py --out benchmarks/results/radiographs.json   # about 3 minutes

Rows: ``floor`` (decoding the 1024 x 1024 PNG, nothing else), ``warm`` (a click on a running
worker, as 3D Slicer runs it, request to result with the files written), ``cold`` (a new
``medcnn analyze`` process), ``batch`` (``medcnn batch`` over NIH radiographs, whole command),
and ``networks`` (forward passes per radiograph of MedCNN's five members against the founding
document's CNN, five of them too, the row to beat). Needs ``../shared/data/xray``.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from run import PYTHON, REPO, Worker, machine_state, summary

XRAY = REPO.parent / "shared" / "data" / "xray"
SIDE = 1024


def big_radiograph(tmp: Path) -> Path:
    """A real NIH radiograph brought back to the 1024 pixels of the originals."""
    source = sorted((XRAY / "nih" / "images").glob("*.png"))[0]
    path = tmp / "radiograph_1024.png"
    with Image.open(source) as image:
        image.resize((SIDE, SIDE), Image.Resampling.BICUBIC).save(path)
    return path


def floor_row(image: Path, repeats: int) -> dict:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        with Image.open(image) as picture:
            np.asarray(picture)
        times.append(time.perf_counter() - started)
    return summary(times)


def warm_row(image: Path, bundle: Path, repeats: int, tmp: Path) -> dict:
    worker = Worker(bundle)
    try:
        worker.analyze(str(image), None, tmp / "warm_first")  # oneDNN's one-time set-up
        times, stages = [], []
        for k in range(repeats):
            elapsed, result = worker.analyze(str(image), None, tmp / f"warm_{k}")
            times.append(elapsed)
            stages.append(result["timings_s"])
        peak = worker.peak_rss_mb()
    finally:
        worker.close()
    keys = [k for k in stages[0] if k != "total"]
    return {
        **summary(times),
        "stages_median_s": {k: round(statistics.median(s[k] for s in stages), 4) for k in keys},
        "peak_rss_mb": round(peak, 1),
    }


def cold_row(image: Path, repeats: int, tmp: Path) -> dict:
    times = []
    for k in range(repeats):
        started = time.perf_counter()
        subprocess.run(
            [PYTHON, "-m", "medcnn", "analyze", str(image), "--out", str(tmp / f"cold_{k}")],
            check=True,
            capture_output=True,
            cwd=REPO,
        )
        times.append(time.perf_counter() - started)
    return summary(times)


def batch_row(count: int, tmp: Path) -> dict:
    """``medcnn batch`` over ``count`` NIH radiographs and over a third of them: the whole
    command's rate, and the rate once started (the extra radiographs over the extra time)."""
    images = sorted((XRAY / "nih" / "images").glob("*.png"))[:count]
    seconds = {}
    for n in (len(images) // 3, len(images)):
        manifest = tmp / f"manifest_{n}.csv"
        with open(manifest, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "image"])
            writer.writerows([path.stem, str(path)] for path in images[:n])
        out = tmp / f"batch_{n}"
        started = time.perf_counter()
        subprocess.run(
            [PYTHON, "-m", "medcnn", "batch", str(manifest), "--out", str(out), "--no-progress"],
            check=True,
            capture_output=True,
            cwd=REPO,
        )
        seconds[n] = time.perf_counter() - started
        shutil.rmtree(out)
    small, large = sorted(seconds)
    return {
        "radiographs": large,
        "size": "512 x 512 PNG (the NIH copies)",
        "seconds": round(seconds[large], 2),
        "radiographs_per_s": round(large / seconds[large], 1),
        "radiographs_per_s_once_started": round(
            (large - small) / (seconds[large] - seconds[small]), 1
        ),
    }


def networks_row(batch: int, repeats: int) -> dict:
    """Forward passes per radiograph, five members each, on a batch of inputs."""
    import torch

    from medcnn.xray.analysis import RadiographAnalyzer
    from medcnn.xray.network import FoundingCNN
    from medcnn.xray.training.training import network_input

    model = RadiographAnalyzer().model
    founding = [FoundingCNN().eval() for _ in model.members]
    inputs = torch.rand(batch, 1, 128, 128)
    rows = {}
    with torch.inference_mode():
        for name, run in (
            ("medcnn_ensemble", lambda: model.explain(inputs)),
            ("founding_ensemble", lambda: [f(network_input(inputs, "founding")) for f in founding]),
        ):
            run()
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                run()
                times.append((time.perf_counter() - started) / batch)
            rows[name] = {"per_radiograph_ms": round(1000 * statistics.median(times), 3)}
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "radiographs.json"
    )
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, default=300, help="radiographs in the batch row")
    args = parser.parse_args(argv)
    if not (XRAY / "nih").is_dir():
        print(f"needs {XRAY}", file=sys.stderr)
        return 2
    from medcnn.catalog import XRAY_MODEL, default_bundle_dir

    bundle = default_bundle_dir(XRAY_MODEL)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        image = big_radiograph(tmp)
        result = {"machine_before": machine_state(), "image": f"{SIDE} x {SIDE} PNG"}
        result["floor"] = floor_row(image, args.repeats)
        result["warm"] = warm_row(image, bundle, args.repeats, tmp)
        result["cold"] = cold_row(image, max(3, args.repeats // 5), tmp)
        result["batch"] = batch_row(args.batch, tmp)
        result["networks"] = networks_row(32, args.repeats)
        result["machine_after"] = machine_state()
    result["ratios"] = {
        "warm_over_floor": round(result["warm"]["median_s"] / result["floor"]["median_s"], 2),
        "cold_over_warm": round(result["cold"]["median_s"] / result["warm"]["median_s"], 2),
        "founding_over_medcnn_network": round(
            result["networks"]["founding_ensemble"]["per_radiograph_ms"]
            / result["networks"]["medcnn_ensemble"]["per_radiograph_ms"],
            2,
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
