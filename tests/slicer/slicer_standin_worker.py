"""A stand-in for ``python -m medcnn.app.worker`` that speaks the same protocol without the model.

It reads the scan with SimpleITK and writes a heatmap (a Gaussian blob) and a segmentation
(a ball) on a sub-grid of the scan's own grid around the point, like the engine does, so the
fast tests exercise the real runner and the real MRML import in seconds. Its numbers are
computed from the scan, not echoed constants, so a test can tell a value was carried from
``result.json`` to the scene: the probability is a logistic of the mean HU in the ball (dense
tissue malignant, lung benign), its two "members" use two slopes, and the diameter, volume and
calcified share are the ball's. Its ``result.json`` follows the engine's schema
(``medcnn.outputs.result``, schema version 2). Behaviour switches,
by environment variable ``STANDIN_MODE``:

- ``normal``: answer every request;
- ``hang``: report progress, start a child process (so there is a process tree), then hang;
- ``die``: report progress, then exit with status 3 after writing a line to stderr;
- ``fatal``: say the engine cannot start, as the real worker does when torch is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medcnn.app.worker import hello  # the engine's stages and exit codes (no model)
from medcnn.errors import EXIT_CODES_BY_NAME
from medcnn.stages import DONE, HEATMAP, NETWORK, PREPROCESSING, READING, WRITING

RADIUS = 8  # voxels of the sub-grid around the point
SLOPES_HU = (130.0, 170.0)  # the two stand-in members' logistic slopes
THRESHOLD = 0.5


def send(**message) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def analyse(request: dict) -> dict:
    image = sitk.ReadImage(request["image"])
    ras = np.asarray(request["point"], dtype=float)
    lps = ras * np.array([-1.0, -1.0, 1.0])
    index = np.round(image.TransformPhysicalPointToContinuousIndex(lps.tolist())).astype(int)
    size = np.asarray(image.GetSize())
    if np.any(index < 0) or np.any(index >= size):
        raise LookupError(f"The point {ras.round(1).tolist()} (RAS mm) lies outside the scan.")
    low = np.maximum(index - RADIUS, 0)
    high = np.minimum(index + RADIUS + 1, size)
    region = sitk.RegionOfInterest(image, (high - low).tolist(), low.tolist())
    grid = np.stack(
        np.meshgrid(
            *[np.arange(lo, hi) - c for lo, hi, c in zip(low, high, index, strict=True)],
            indexing="ij",
        )
    )
    distance = np.sqrt((grid**2).sum(axis=0)).transpose(2, 1, 0)  # sitk arrays are z, y, x
    heat = sitk.GetImageFromArray(np.exp(-(distance**2) / 18.0).astype(np.float32))
    heat.CopyInformation(region)
    ball = sitk.GetImageFromArray((distance <= 3).astype(np.uint8))
    ball.CopyInformation(region)
    out = Path(request["out"])
    out.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(heat, str(out / "heatmap.nii.gz"))
    sitk.WriteImage(ball, str(out / "segmentation.nii.gz"))
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    inside = distance <= 3
    hu = sitk.GetArrayFromImage(region).astype(float)[inside]
    members = [1.0 / (1.0 + np.exp(-(hu.mean() + 400.0) / slope)) for slope in SLOPES_HU]
    probability = round(float(np.mean(members)), 6)
    result = {
        "schema_version": 2,
        "task": "lung_nodule_malignancy",
        "probability": probability,
        "uncertainty": round(float(np.std(members)), 6),
        "probability_interval": [round(float(min(members)), 6), round(float(max(members)), 6)],
        "member_probabilities": [round(float(m), 6) for m in members],
        "threshold": THRESHOLD,
        "label": "malignant" if probability >= THRESHOLD else "benign",
        "diameter_mm": round(float(np.ptp(np.nonzero(inside)[2]) + 1) * spacing[0], 3),
        "volume_ml": round(int(inside.sum()) * float(np.prod(spacing)) / 1000.0, 4),
        "calcified_share": round(float((hu > 200.0).mean()), 4),
        "point": {"ras": ras.tolist(), "lps": lps.tolist(), "given_as": "RAS"},
        "input": {
            "path": request["image"],
            "format": "nrrd",
            "series_instance_uid": None,
            "series_choice": None,
            "shape": size.tolist(),
            "spacing_mm": spacing.round(5).tolist(),
        },
        "outputs": {
            "result": "result.json",
            "heatmap": "heatmap.nii.gz",
            "segmentation": "segmentation.nii.gz",
        },
        "model": {"name": "standin", "version": "0.0.1", "weights_sha256": "0" * 64},
        "software": {"medcnn": "0.0.0-standin"},
        "warnings": [],
    }
    (out / "result.json").write_text(json.dumps(result))
    return result


def main() -> int:
    mode = os.environ.get("STANDIN_MODE", "normal")
    send(**hello())
    if mode == "fatal":
        send(
            event="fatal",
            message="The analysis engine cannot start (no torch).",
            exit_code=EXIT_CODES_BY_NAME["internal_error"],
        )
        return 1
    send(event="ready", pid=os.getpid(), model={"name": "standin", "version": "0.0.1"})
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("command") == "quit":
            return 0
        rid = request["id"]
        for stage in (READING, PREPROCESSING, NETWORK):
            send(id=rid, event="progress", stage=stage.name, fraction=stage.fraction)
        if mode == "hang":
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
            sys.stderr.write(f"child {child.pid}\n")
            sys.stderr.flush()
            send(id=rid, event="progress", stage="child", fraction=float(child.pid))
            time.sleep(600)
        if mode == "die":
            sys.stderr.write("standin: simulated crash\n")
            sys.stderr.flush()
            return 3
        try:
            result = analyse(request)
        except LookupError as error:
            send(
                id=rid,
                event="error",
                message=str(error),
                exit_code=EXIT_CODES_BY_NAME["point_outside_scan"],
            )
            continue
        for stage in (HEATMAP, WRITING, DONE):
            send(id=rid, event="progress", stage=stage.name, fraction=stage.fraction)
        send(id=rid, event="result", result=result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
