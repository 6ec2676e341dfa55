"""One click, start to end: read the scan, judge the nodule at the point, map the answers back.

``Analyzer`` loads the verified model once and is reused for every point, by the command line,
the batch runner, the MONAI bundle, the worker process behind 3D Slicer and the benchmarks.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import monai
import nibabel
import numpy as np
import pydicom
import SimpleITK as sitk
import torch

import medcnn
from medcnn.bundle import default_bundle_dir, load_ensemble, load_patch_spec
from medcnn.checks import check_scan_at_point
from medcnn.errors import UsageError
from medcnn.explain import malignancy_heatmap
from medcnn.inference import predict
from medcnn.measure import (
    calcified_share,
    component_nearest_centre,
    longest_axial_diameter_mm,
    volume_ml,
)
from medcnn.preprocessing import patch_to_scan, sample_patch
from medcnn.reading import ScanRegion, read_scan
from medcnn.volume import Volume, ras_point
from medcnn.writing import HEATMAP, RESULT, SEGMENTATION, write_outputs

Progress = Callable[[str, float], None]
SCHEMA_VERSION = 1
STAGES = ("reading", "preprocessing", "network", "heatmap", "writing")


@dataclass(frozen=True)
class Analysis:
    """An analysis in memory: the ``result.json`` content and the two volumes."""

    result: dict
    heatmap: Volume
    segmentation: Volume


def software_versions() -> dict[str, str]:
    return {
        "medcnn": medcnn.__version__,
        "monai": monai.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "SimpleITK": sitk.Version_VersionString(),
        "nibabel": nibabel.__version__,
        "pydicom": pydicom.__version__,
        "python": platform.python_version(),
    }


def checked_point(point: Sequence[float], lps: bool) -> np.ndarray:
    values = np.asarray(point, dtype=float).reshape(-1)
    if values.size != 3 or not np.all(np.isfinite(values)):
        raise UsageError(
            "The point must be three finite numbers in millimetres, e.g. --point 21.9 120.5 -611.5."
        )
    return ras_point(values, lps=lps)


class Analyzer:
    """The loaded model and preprocessing definition of a bundle (the shipped one by default)."""

    def __init__(self, bundle_dir: Path | str | None = None, trusted: bool = False) -> None:
        self.bundle_dir = Path(bundle_dir).resolve() if bundle_dir else default_bundle_dir()
        self.model, self.model_info = load_ensemble(self.bundle_dir, trusted=trusted)
        self.spec = load_patch_spec(self.bundle_dir)
        self.threshold = self.model_info["threshold"]

    def analyze_volume(
        self,
        scan: Volume,
        point_ras: np.ndarray,
        progress: Progress | None = None,
        timings: dict[str, float] | None = None,
    ) -> Analysis:
        """Judge the nodule at a RAS point of an already-read scan."""
        report = progress or (lambda stage, fraction: None)
        timings = {} if timings is None else timings
        check_scan_at_point(scan, point_ras)
        report("preprocessing", 0.2)
        started = time.perf_counter()
        patch = sample_patch(scan, point_ras, self.spec)
        timings["preprocess"] = time.perf_counter() - started
        report("network", 0.3)
        started = time.perf_counter()
        prediction = predict(self.model, patch, self.spec)
        timings["network"] = time.perf_counter() - started
        report("heatmap", 0.6)
        started = time.perf_counter()
        heat = malignancy_heatmap(self.model, prediction.network_input, prediction.activations)
        heatmap = patch_to_scan(heat, prediction.patch, scan, self.spec)
        heatmap = Volume(np.clip(heatmap.array, 0.0, 1.0), heatmap.affine)
        seg_scan = patch_to_scan(prediction.segmentation, prediction.patch, scan, self.spec)
        centre = seg_scan.world_to_index(point_ras[None])[0]
        nodule = component_nearest_centre(seg_scan.array > 0.5, centre)
        segmentation = Volume(nodule.astype(np.uint8), seg_scan.affine)
        timings["heatmap"] = time.perf_counter() - started
        probability = prediction.probability
        warnings = list(scan.metadata.get("warnings", []))
        if not nodule.any():
            warnings.append("No nodule was segmented at the point; check that it is on a nodule.")
        result = {
            "schema_version": SCHEMA_VERSION,
            "probability": round(probability, 6),
            "uncertainty": round(prediction.uncertainty, 6),
            "probability_interval": [
                round(float(prediction.member_probabilities.min()), 6),
                round(float(prediction.member_probabilities.max()), 6),
            ],
            "member_probabilities": [round(float(p), 6) for p in prediction.member_probabilities],
            "threshold": self.threshold,
            "label": "malignant" if probability >= self.threshold else "benign",
            "diameter_mm": round(longest_axial_diameter_mm(segmentation), 3),
            "volume_ml": round(volume_ml(segmentation), 4),
            "calcified_share": calcified_share(scan, segmentation),
            "point": {
                "ras": [round(float(v), 4) for v in point_ras],
                "lps": [round(float(v), 4) for v in point_ras * np.array([-1, -1, 1])],
            },
            "input": {
                "path": scan.metadata.get("path"),
                "format": scan.metadata.get("format"),
                "series_instance_uid": scan.metadata.get("series_instance_uid"),
                "series_choice": scan.metadata.get("series_choice"),
                "shape": list(scan.metadata.get("scan_shape", scan.shape)),
                "spacing_mm": [round(float(s), 5) for s in scan.spacing],
            },
            "outputs": {"result": RESULT, "heatmap": HEATMAP, "segmentation": SEGMENTATION},
            "model": {k: self.model_info[k] for k in ("name", "version", "weights_sha256")},
            "software": software_versions(),
            "warnings": warnings,
        }
        return Analysis(result, heatmap, segmentation)

    def analyze_file(
        self,
        image: Path | str,
        point: Sequence[float],
        out_dir: Path | str,
        lps: bool = False,
        progress: Progress | None = None,
        series_uid: str | None = None,
    ) -> dict:
        """Read a scan, analyse the point, write the outputs; returns ``result.json``'s content."""
        report = progress or (lambda stage, fraction: None)
        point_ras = checked_point(point, lps)
        total_start = time.perf_counter()
        report("reading", 0.0)
        started = time.perf_counter()
        # Only the slices the network's cube reaches are decoded (DICOM series).
        half_width = self.spec.size * self.spec.spacing_mm / 2.0
        scan = read_scan(image, series_uid=series_uid, around=ScanRegion(point_ras, half_width))
        timings = {"read": time.perf_counter() - started}
        analysis = self.analyze_volume(scan, point_ras, report, timings)
        report("writing", 0.9)
        result = analysis.result
        result["point"]["given_as"] = "LPS" if lps else "RAS"
        started = time.perf_counter()

        def finish_timings(result: dict) -> None:
            timings["write"] = time.perf_counter() - started
            timings["total"] = time.perf_counter() - total_start
            result["timings_s"] = {k: round(v, 4) for k, v in timings.items()}

        write_outputs(
            Path(out_dir),
            result,
            analysis.heatmap,
            analysis.segmentation,
            before_result=finish_timings,
        )
        report("done", 1.0)
        return result
