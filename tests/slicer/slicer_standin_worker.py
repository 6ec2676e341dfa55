"""A stand-in for ``python -m medcnn.app.worker`` that speaks the same protocol without the model.

It stands in for both models, and its hello lists both (``STANDIN_MODELS``) whatever is
installed. It chooses the model as the engine does (``medcnn.app.engine.choose_model``): the
request's ``model``, else a point means the CT model, no point on a 2D image (one slice) the
chest X-ray model; a point on a radiograph or a CT without one is refused (exit code "usage").

For a point in a CT it reads the scan with SimpleITK and writes a heatmap (a Gaussian blob) and
a segmentation (a ball) on a sub-grid of the scan's own grid around the point, like the engine
does, so the fast tests exercise the real runner and the real MRML import in seconds. For a
radiograph it writes a heatmap on the radiograph's whole grid (its brightness, smoothed and
scaled to 0..1), as the X-ray model does, and no segmentation. Its numbers are computed from the
image, not echoed constants, so a test can tell a value was carried from ``result.json`` to the
scene: for a CT the probability is a logistic of the mean HU in the ball (dense tissue
malignant, lung benign), its two "members" use two slopes, and the diameter, volume and
calcified share are the ball's; for a radiograph it is a logistic of the mean brightness of the
image's lower half. Its ``result.json`` follows the engine's schema (``medcnn.outputs.result``,
schema version 2). Behaviour switches, by environment variable ``STANDIN_MODE``:

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

from medcnn import threads
from medcnn.app.worker import hello  # the engine's stages and exit codes (no model)
from medcnn.errors import EXIT_CODES_BY_NAME
from medcnn.stages import DONE, HEATMAP, NETWORK, PREPROCESSING, READING, WRITING

RADIUS = 8  # voxels of the sub-grid around the point
SLOPES_HU = (130.0, 170.0)  # the two stand-in members' logistic slopes
SLOPES_BRIGHTNESS = (0.08, 0.12)  # the radiograph members', on brightness scaled to 0..1
THRESHOLD = 0.5
NODULE_MODEL, XRAY_MODEL = "lung_nodule_ct", "chest_xray_pneumonia"
STANDIN_MODELS = [
    {
        "id": NODULE_MODEL,
        "name": "standin lung nodule",
        "version": "0.0.1",
        "task": "Lung nodule malignancy at a point (stand-in)",
        "input": "a chest CT and a point on a nodule",
        "needs_point": True,
    },
    {
        "id": XRAY_MODEL,
        "name": "standin chest X-ray",
        "version": "0.0.2",
        "task": "Pneumonia on a frontal chest radiograph (stand-in)",
        "input": "a frontal chest radiograph; no point",
        "needs_point": False,
    },
]
WEIGHTS = {NODULE_MODEL: "0" * 64, XRAY_MODEL: "1" * 64}


class Refused(ValueError):
    """A request the engine refuses; ``kind`` is the exit code's name."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def send(**message) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def choose_model(request: dict, image: sitk.Image) -> tuple[str, str]:
    """The engine's rule (``medcnn.app.engine.choose_model``), and why."""
    two_d = 1 in image.GetSize()
    point = request.get("point")
    if request.get("model"):
        model, because = request["model"], f"--model {request['model']} was given"
    elif point is not None:
        model, because = NODULE_MODEL, "a point was given in a 3D scan"
    elif not two_d:
        raise Refused("The image is a 3D scan: the lung nodule model judges a point.", "usage")
    else:
        model, because = XRAY_MODEL, "no point was given and the image is a 2D radiograph"
    if model not in WEIGHTS:
        raise Refused(f"There is no model {model!r}.", "usage")
    if model == NODULE_MODEL and point is None:
        raise Refused("The lung nodule model judges a nodule at a point; give it.", "usage")
    if model == XRAY_MODEL and point is not None:
        raise Refused("The chest X-ray model judges a whole radiograph; no point.", "usage")
    if model == NODULE_MODEL and two_d:
        raise Refused("The image is a 2D radiograph; leave out the point.", "usage")
    if model == XRAY_MODEL and not two_d:
        raise Refused("The image is a 3D scan, not a radiograph.", "not_radiograph")
    return model, because


def model_info(model: str, because: str) -> dict:
    listed = next(m for m in STANDIN_MODELS if m["id"] == model)
    return {
        "name": listed["name"],
        "version": listed["version"],
        "weights_sha256": WEIGHTS[model],
        "id": model,
        "chosen_because": because,
    }


def analyse(request: dict) -> dict:
    image = sitk.ReadImage(request["image"])
    model, because = choose_model(request, image)
    if model == XRAY_MODEL:
        return analyse_radiograph(request, image, because)
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
        "model": model_info(NODULE_MODEL, because),
        "software": {"medcnn": "0.0.0-standin"},
        "warnings": [],
    }
    (out / "result.json").write_text(json.dumps(result))
    return result


def analyse_radiograph(request: dict, image: sitk.Image, because: str) -> dict:
    """The whole radiograph: a heatmap on its own grid (every pixel), no point, no segment."""
    pixels = sitk.GetArrayFromImage(image).astype(float)  # (k, j, i), one axis of size 1
    low, high = np.percentile(pixels, [0.5, 99.5])
    brightness = np.clip((pixels - low) / max(high - low, 1e-6), 0.0, 1.0)
    plane = np.squeeze(brightness)  # (rows, columns)
    smooth = sitk.GetArrayFromImage(
        sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(plane), 4.0)
    ).reshape(pixels.shape)
    heat = sitk.GetImageFromArray(np.clip(smooth, 0.0, 1.0).astype(np.float32))
    heat.CopyInformation(image)
    out = Path(request["out"])
    out.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(heat, str(out / "heatmap.nii.gz"))
    lower = plane[plane.shape[0] // 2 :].mean()
    members = [1.0 / (1.0 + np.exp(-(lower - 0.3) / slope)) for slope in SLOPES_BRIGHTNESS]
    probability = round(float(np.mean(members)), 6)
    size = [n for n in image.GetSize() if n != 1] or [1, 1]
    spacing = [s for s, n in zip(image.GetSpacing(), image.GetSize(), strict=True) if n != 1]
    result = {
        "schema_version": 2,
        "task": "chest_xray_pneumonia",
        "probability": probability,
        "uncertainty": round(float(np.std(members)), 6),
        "probability_interval": [round(float(min(members)), 6), round(float(max(members)), 6)],
        "member_probabilities": [round(float(m), 6) for m in members],
        "threshold": THRESHOLD,
        "label": "pneumonia" if probability >= THRESHOLD else "no pneumonia",
        "input": {
            "path": request["image"],
            "format": "nrrd",
            "series_instance_uid": None,
            "series_choice": None,
            "shape": size[::-1],  # (rows, columns)
            "spacing_mm": [round(float(s), 5) for s in spacing[::-1]],
        },
        "outputs": {"result": "result.json", "heatmap": "heatmap.nii.gz"},
        "model": model_info(XRAY_MODEL, because),
        "software": {"medcnn": "0.0.0-standin"},
        "warnings": [],
    }
    (out / "result.json").write_text(json.dumps(result))
    return result


def main() -> int:
    mode = os.environ.get("STANDIN_MODE", "normal")
    send(**{**hello(), "models": STANDIN_MODELS})
    if mode == "fatal":
        send(
            event="fatal",
            message="The analysis engine cannot start (no torch).",
            exit_code=EXIT_CODES_BY_NAME["internal_error"],
        )
        return 1
    loaded = [
        {
            **{key: model[key] for key in ("id", "name", "version", "needs_point")},
            "weights_sha256": WEIGHTS[model["id"]],
            "threshold": THRESHOLD,
        }
        for model in STANDIN_MODELS
    ]
    send(
        event="ready",
        pid=os.getpid(),
        models=loaded,
        model=loaded[0],
        threading=threads.in_force().to_json(),  # the engine's own, as the worker reports it
    )
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
        except Refused as error:
            send(
                id=rid, event="error", message=str(error), exit_code=EXIT_CODES_BY_NAME[error.kind]
            )
            continue
        for stage in (HEATMAP, WRITING, DONE):
            send(id=rid, event="progress", stage=stage.name, fraction=stage.fraction)
        send(id=rid, event="result", result=result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
