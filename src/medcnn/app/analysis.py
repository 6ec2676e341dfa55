"""One click, start to end: read the scan, judge the nodule at the point, map the answers back.

``Analyzer`` loads the verified model once and is reused for every point, by the command line,
the batch runner, the MONAI bundle, the worker process behind 3D Slicer and the benchmarks.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cache
from importlib import metadata
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import SimpleITK as sitk
import torch

import medcnn
from medcnn import stages, threads
from medcnn.bundle import default_bundle_dir, load_engine, load_patch_spec
from medcnn.catalog import task_of
from medcnn.errors import UsageError
from medcnn.nodule.checks import check_scan_at_point
from medcnn.nodule.explain import malignancy_heatmap, malignancy_heatmaps
from medcnn.nodule.inference import Prediction, predict, predict_many
from medcnn.nodule.measure import (
    calcified_share,
    longest_axial_diameter_mm,
    nodule_on_scan,
    volume_ml,
)
from medcnn.nodule.preprocessing import Patch, patch_to_scan, sample_patch
from medcnn.outputs.dicom_source import check_dicom_input, check_scan_source, dicom_source
from medcnn.outputs.render import overlay_png, overlay_title
from medcnn.outputs.result import (
    InputImage,
    ModelInfo,
    NoduleFindings,
    OutputFiles,
    Point,
    Result,
)
from medcnn.outputs.writing import (
    HEATMAP,
    OVERLAY,
    RESULT,
    SEGMENTATION,
    write_outputs,
)
from medcnn.reading import ScanRegion, read_scan
from medcnn.volume import MAX_COORDINATE_MM, Volume, ras_point

Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class Analysis:
    """An analysis in memory: the result, the two volumes it made and the scan they lie on
    (what the overlay is drawn from)."""

    result: Result
    heatmap: Volume
    segmentation: Volume
    scan: Volume


@dataclass(frozen=True)
class FileRequest:
    """One click of a batch: ``analyze_file``'s arguments."""

    image: Path | str
    point: Sequence[float] | None
    out_dir: Path | str
    lps: bool = False
    overlay: bool = False
    # Why the engine chose this model, for result.json (None: the caller chose the analyzer).
    chosen_because: str | None = None
    # Also write the results as DICOM SEG, Parametric Map and SR (a DICOM input only).
    dicom: bool = False


@cache
def software_versions() -> dict[str, str]:
    """The versions a result was computed with. MONAI's is read from its package metadata
    without importing it (a click never does), and a click needs no MONAI at all: where it is
    not installed (a viewer's Python may lack it), the result says so instead of failing."""
    return {
        "medcnn": medcnn.__version__,
        "monai": installed_version("monai"),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "SimpleITK": sitk.Version_VersionString(),
        "nibabel": nibabel.__version__,
        "pydicom": pydicom.__version__,
        "python": platform.python_version(),
    }


def installed_version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def checked_point(point: Sequence[float] | None, lps: bool) -> np.ndarray:
    if point is None:
        raise UsageError(
            "The lung nodule model judges the nodule at a point of a CT; give its position with "
            "--point R A S (millimetres, RAS)."
        )
    values = np.asarray(point, dtype=float).reshape(-1)
    if values.size != 3 or not np.all(np.abs(values) <= MAX_COORDINATE_MM):  # NaN fails too
        raise UsageError(
            "The point must be three finite numbers in millimetres, each within "
            f"{MAX_COORDINATE_MM:g} mm of the origin, e.g. --point 21.9 120.5 -611.5."
        )
    return ras_point(values, lps=lps)


class Analyzer:
    """The loaded model and preprocessing definition of a bundle (the shipped one by default)."""

    def __init__(self, bundle_dir: Path | str | None = None, trusted: bool = False) -> None:
        self.bundle_dir = Path(bundle_dir).resolve() if bundle_dir else default_bundle_dir()
        self.model, self.model_info = load_engine(self.bundle_dir, trusted=trusted)
        self.spec = load_patch_spec(self.bundle_dir)
        self.task = task_of(self.bundle_dir)
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
        report(stages.PREPROCESSING.name, stages.PREPROCESSING.fraction)
        patch = self._cut(scan, point_ras, timings)
        report(stages.NETWORK.name, stages.NETWORK.fraction)
        started = time.perf_counter()
        prediction = predict(self.model, patch, self.spec)
        timings["network"] = time.perf_counter() - started
        report(stages.HEATMAP.name, stages.HEATMAP.fraction)
        started = time.perf_counter()
        heat = malignancy_heatmap(self.model, prediction.network_input, prediction.activations)
        analysis = self._finish(scan, point_ras, prediction, heat)
        timings["heatmap"] = time.perf_counter() - started
        return analysis

    def analyze_file(
        self,
        image: Path | str,
        point: Sequence[float] | None,
        out_dir: Path | str,
        lps: bool = False,
        progress: Progress | None = None,
        series_uid: str | None = None,
        overlay: bool = False,
        chosen_because: str | None = None,
        dicom: bool = False,
    ) -> Result:
        """Read a scan, analyse the point, write the outputs; returns the result as written.

        With ``overlay``, ``overlay.png`` is drawn from the analysis in memory and written with
        the other files (all of them or none); with ``dicom``, the DICOM results too (refused
        before any work for an input that is not DICOM, and before the network for a series
        that lacks what they copy)."""
        report = progress or (lambda stage, fraction: None)
        point_ras = checked_point(point, lps)
        if dicom:
            check_dicom_input(image)
        total_start = time.perf_counter()
        report(stages.READING.name, stages.READING.fraction)
        timings: dict[str, float] = {}
        scan = self._read(image, point_ras, series_uid, timings)
        if dicom:
            check_scan_source(scan)
        analysis = self.analyze_volume(scan, point_ras, report, timings)
        analysis = self._chosen(analysis, chosen_because)
        report(stages.WRITING.name, stages.WRITING.fraction)
        result = self._write(analysis, Path(out_dir), lps, timings, total_start, overlay, dicom)
        report(stages.DONE.name, stages.DONE.fraction)
        return result

    def analyze_files(self, requests: Sequence[FileRequest]) -> list[Result | Exception]:
        """Several clicks answered together, for ``medcnn batch``: per request, the same
        result and files as ``analyze_file``, or the error that stopped it.

        The context-box passes and the heatmaps of all requests run as batches through the
        network, which is what makes an archive run faster per nodule than clicks one by one.
        In each ``result.json``, ``network`` and ``heatmap`` timings are the request's share of
        the group's. A request that fails fails alone: reading, cutting and writing are per
        request, and if the shared steps themselves fail, each request is tried on its own.
        """
        outcomes: list[Result | Exception | None] = [None] * len(requests)
        ready: list[tuple[int, Volume, np.ndarray, Patch, dict[str, float], float]] = []
        for index, request in enumerate(requests):
            total_start = time.perf_counter()
            timings: dict[str, float] = {}
            try:
                point_ras = checked_point(request.point, request.lps)
                if request.dicom:
                    check_dicom_input(request.image)
                scan = self._read(request.image, point_ras, None, timings)
                if request.dicom:
                    check_scan_source(scan)
                patch = self._cut(scan, point_ras, timings)
            except Exception as error:
                outcomes[index] = error
                continue
            ready.append((index, scan, point_ras, patch, timings, total_start))
        if not ready:
            return outcomes  # type: ignore[return-value]
        try:
            started = time.perf_counter()
            predictions = predict_many(self.model, [r[3] for r in ready], self.spec)
            network = time.perf_counter() - started
            started = time.perf_counter()
            heats = malignancy_heatmaps(
                self.model,
                [p.activations for p in predictions],  # type: ignore[misc]  # kept by predict_many
                self.spec.shape,
            )
            heatmap = time.perf_counter() - started
        except Exception:
            return [
                outcome if outcome is not None else self._analyze_alone(request)
                for request, outcome in zip(requests, outcomes, strict=True)
            ]
        for (index, scan, point_ras, _, timings, total_start), prediction, heat in zip(
            ready, predictions, heats, strict=True
        ):
            request = requests[index]
            try:
                started = time.perf_counter()
                analysis = self._chosen(
                    self._finish(scan, point_ras, prediction, heat), request.chosen_because
                )
                timings["network"] = network / len(ready)
                timings["heatmap"] = heatmap / len(ready) + time.perf_counter() - started
                outcomes[index] = self._write(
                    analysis,
                    Path(request.out_dir),
                    request.lps,
                    timings,
                    total_start,
                    request.overlay,
                    request.dicom,
                )
            except Exception as error:
                outcomes[index] = error
        return outcomes  # type: ignore[return-value]

    def _analyze_alone(self, request: FileRequest) -> Result | Exception:
        try:
            return self.analyze_file(
                request.image,
                request.point,
                request.out_dir,
                request.lps,
                overlay=request.overlay,
                chosen_because=request.chosen_because,
                dicom=request.dicom,
            )
        except Exception as error:
            return error

    def _read(
        self,
        image: Path | str,
        point_ras: np.ndarray,
        series_uid: str | None,
        timings: dict[str, float],
    ) -> Volume:
        started = time.perf_counter()
        # Only the slices the network's cube reaches are decoded; the overlay is drawn from
        # them too, so it can never fail on a slice the analysis did not need.
        half_width = self.spec.size * self.spec.spacing_mm / 2.0
        scan = read_scan(image, series_uid=series_uid, around=ScanRegion(point_ras, half_width))
        timings["read"] = time.perf_counter() - started
        return scan

    def _cut(self, scan: Volume, point_ras: np.ndarray, timings: dict[str, float]) -> Patch:
        check_scan_at_point(scan, point_ras)
        started = time.perf_counter()
        patch = sample_patch(scan, point_ras, self.spec)
        timings["preprocess"] = time.perf_counter() - started
        return patch

    def _finish(
        self, scan: Volume, point_ras: np.ndarray, prediction: Prediction, heat: np.ndarray
    ) -> Analysis:
        """The heatmap and segmentation on the scan's grid, the measurements, ``result.json``."""
        heatmap = patch_to_scan(heat, prediction.patch, scan, self.spec)
        heatmap = Volume(np.clip(heatmap.array, 0.0, 1.0), heatmap.affine)
        seg_scan = patch_to_scan(prediction.segmentation, prediction.patch, scan, self.spec)
        nodule = nodule_on_scan(seg_scan, scan, seg_scan.world_to_index(point_ras[None])[0])
        segmentation = Volume(nodule.astype(np.uint8), seg_scan.affine)
        probability = prediction.probability
        warnings = list(scan.metadata.get("warnings", []))
        if not nodule.any():
            warnings.append("No nodule was segmented at the point; check that it is on a nodule.")
        members = prediction.member_probabilities
        ras = tuple(round(float(v), 4) for v in point_ras)
        lps = tuple(round(float(v), 4) for v in point_ras * np.array([-1, -1, 1]))
        model = ModelInfo(
            self.model_info["name"],
            self.model_info["version"],
            self.model_info["weights_sha256"],
            self.model_info["id"],
        )
        result = Result(
            task=self.task.name,
            probability=round(probability, 6),
            uncertainty=round(prediction.uncertainty, 6),
            probability_interval=(
                round(float(members.min()), 6),
                round(float(members.max()), 6),
            ),
            member_probabilities=tuple(round(float(p), 6) for p in members),
            threshold=self.threshold,
            label=self.task.label(probability, self.threshold),
            findings=NoduleFindings(
                point=Point(ras, lps),  # type: ignore[arg-type]
                diameter_mm=round(longest_axial_diameter_mm(segmentation), 3),
                volume_ml=round(volume_ml(segmentation), 4),
                calcified_share=calcified_share(scan, segmentation),
            ),
            input=InputImage(
                path=scan.metadata.get("path"),
                format=scan.metadata.get("format"),
                series_instance_uid=scan.metadata.get("series_instance_uid"),
                series_choice=scan.metadata.get("series_choice"),
                shape=tuple(scan.metadata.get("scan_shape", scan.shape)),
                spacing_mm=tuple(round(float(s), 5) for s in scan.spacing),
            ),
            outputs=OutputFiles(result=RESULT, heatmap=HEATMAP, segmentation=SEGMENTATION),
            model=model,
            software=software_versions(),
            threading=threads.in_force(),
            warnings=tuple(warnings),
        )
        return Analysis(result, heatmap, segmentation, scan)

    @staticmethod
    def _chosen(analysis: Analysis, chosen_because: str | None) -> Analysis:
        """The analysis with the engine's reason for choosing this model in its result."""
        if chosen_because is None:
            return analysis
        model = replace(analysis.result.model, chosen_because=chosen_because)
        return replace(analysis, result=replace(analysis.result, model=model))

    def _write(
        self,
        analysis: Analysis,
        out_dir: Path,
        lps: bool,
        timings: dict[str, float],
        total_start: float,
        overlay: bool = False,
        dicom: bool = False,
    ) -> Result:
        """Write the analysis's files (and the overlay, drawn from it in memory, and the DICOM
        results); returns the result as written, with the point's convention and the
        timings."""
        result = analysis.result
        findings = result.nodule
        result = replace(
            result,
            findings=replace(
                findings, point=replace(findings.point, given_as="LPS" if lps else "RAS")
            ),
        )
        pictures: dict[str, Callable[[Path], object]] = {}
        if overlay:
            result = replace(result, outputs=replace(result.outputs, overlay=OVERLAY))
            title = overlay_title(result)

            def draw(path: Path) -> None:
                overlay_png(
                    analysis.scan,
                    analysis.heatmap,
                    analysis.segmentation,
                    np.asarray(findings.point.ras, dtype=float),
                    path,
                    title,
                )

            pictures[OVERLAY] = draw
        if dicom:
            result, made = dicom_files(result, analysis, timings)
            pictures.update(made)
        volumes = {
            HEATMAP: (analysis.heatmap, np.float32),
            SEGMENTATION: (analysis.segmentation, np.uint8),
        }
        return write_timed(out_dir, result, volumes, pictures, timings, total_start)


def dicom_files(
    result: Result, analysis: Analysis, timings: dict[str, float]
) -> tuple[Result, dict[str, Callable[[Path], object]]]:
    """The result naming the DICOM files, and the writers of those files: the objects are made
    now, in memory (their seconds are ``timings['dicom']``), and saved with the other files."""
    from medcnn.outputs.dicom_results import nodule_dicom_results, with_dicom_files  # if asked

    started = time.perf_counter()
    source = dicom_source(analysis.scan, analysis.heatmap)
    made = nodule_dicom_results(result, analysis.segmentation, analysis.heatmap, source)
    timings["dicom"] = time.perf_counter() - started
    return with_dicom_files(result, made)


def write_timed(
    out_dir: Path,
    result: Result,
    volumes: Mapping[str, tuple[Volume, type]],
    pictures: Mapping[str, Callable[[Path], object]],
    timings: dict[str, float],
    total_start: float,
) -> Result:
    """``write_outputs``, with the writing's and the whole analysis's seconds put into
    ``result.json`` once everything else is written; every model's analyzer writes this way."""
    started = time.perf_counter()

    def finish_timings(result: Result) -> Result:
        timings["write"] = time.perf_counter() - started
        timings["total"] = time.perf_counter() - total_start
        return replace(result, timings_s={k: round(v, 4) for k, v in timings.items()})

    return write_outputs(out_dir, result, volumes, before_result=finish_timings, pictures=pictures)
