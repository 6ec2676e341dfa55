"""One chest radiograph, start to end: read it, judge it whole, map the heatmap back onto it.

``RadiographAnalyzer`` is the chest X-ray model's counterpart of ``app.analysis.Analyzer``,
with the same calls (``analyze_file``, ``analyze_files``), so the engine, the batch runner, the
worker and the MONAI bundle drive either the same way. A radiograph has no point: one given is
refused, not ignored.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from medcnn import stages, threads
from medcnn.app.analysis import FileRequest, Progress, software_versions, write_timed
from medcnn.bundle import (
    XRAY_MODEL,
    default_bundle_dir,
    load_network,
    load_radiograph_spec,
)
from medcnn.catalog import task_of
from medcnn.errors import ModelIntegrityError, UsageError
from medcnn.outputs.dicom_source import check_dicom_input, radiograph_source
from medcnn.outputs.render import heatmap_png, overlay_title, radiograph_overlay_png
from medcnn.outputs.result import InputImage, ModelInfo, OutputFiles, Result
from medcnn.outputs.writing import HEATMAP, HEATMAP_PNG, OVERLAY, RESULT
from medcnn.reading.radiograph import Radiograph, read_radiograph
from medcnn.volume import Volume
from medcnn.xray.inference import (
    RadiographPrediction,
    model_input,
    predict_inputs,
    predict_radiographs,
)
from medcnn.xray.network import RadiographEnsemble, for_inference

# Threads that read and write a batch's files at once: one more than the cores, since a thread
# also waits on the disk (on 2 cores, 3 gave 52 radiographs a second, 2 and 4 about 50).
FILE_THREADS = min(4, (os.cpu_count() or 1) + 1)
# Inputs that are pictures, which get the heatmap as a picture of their size too.
PICTURE_FORMATS = ("png", "jpg", "jpeg")


@dataclass(frozen=True)
class RadiographAnalysis:
    """An analysis in memory: the result, the heatmap on the radiograph's grid, the radiograph."""

    result: Result
    heatmap: Volume
    radiograph: Radiograph


def refuse_point(point: Sequence[float] | None) -> None:
    if point is not None:
        raise UsageError(
            "The chest X-ray model judges the whole radiograph and takes no point; leave out "
            "--point (or the manifest's r, a, s)."
        )


class RadiographAnalyzer:
    """The loaded chest X-ray model of a bundle (the shipped one by default)."""

    def __init__(self, bundle_dir: Path | str | None = None, trusted: bool = False) -> None:
        self.bundle_dir = (
            Path(bundle_dir).resolve() if bundle_dir else default_bundle_dir(XRAY_MODEL)
        )
        model, self.model_info = load_network(self.bundle_dir, trusted=trusted)
        if not isinstance(model, RadiographEnsemble):
            raise ModelIntegrityError(
                f"The bundle {self.bundle_dir} is not a chest X-ray model; give its own bundle."
            )
        self.model = for_inference(model)
        self.spec = load_radiograph_spec(self.bundle_dir)
        self.threshold = self.model_info["threshold"]
        self.task = task_of(self.bundle_dir)

    def analyze_file(
        self,
        image: Path | str,
        point: Sequence[float] | None = None,
        out_dir: Path | str = "medcnn_output",
        lps: bool = False,
        progress: Progress | None = None,
        series_uid: str | None = None,
        overlay: bool = False,
        chosen_because: str | None = None,
        dicom: bool = False,
    ) -> Result:
        """Read a radiograph, judge it, write the outputs; returns the result as written."""
        report = progress or (lambda stage, fraction: None)
        refuse_point(point)
        if dicom:
            check_dicom_input(image)
        total_start = time.perf_counter()
        timings: dict[str, float] = {}
        report(stages.READING.name, stages.READING.fraction)
        radiograph = self._read(image, timings)
        if dicom:
            radiograph_source(radiograph.metadata)  # refused before the network, not after
        report(stages.NETWORK.name, stages.NETWORK.fraction)
        started = time.perf_counter()
        prediction = predict_radiographs(self.model, [radiograph], self.spec)[0]
        timings["network"] = time.perf_counter() - started
        report(stages.HEATMAP.name, stages.HEATMAP.fraction)
        analysis = self._finish(radiograph, prediction, image, chosen_because)
        report(stages.WRITING.name, stages.WRITING.fraction)
        result = self._write(analysis, Path(out_dir), timings, total_start, overlay, dicom)
        report(stages.DONE.name, stages.DONE.fraction)
        return result

    def analyze_files(self, requests: Sequence[FileRequest]) -> list[Result | Exception]:
        """Several radiographs through the network as one batch (``medcnn batch``); per
        request the same files as ``analyze_file``, or the error that stopped it.

        Decoding and encoding files (PNG, JPEG, DICOM, zlib) release Python's lock, so the
        radiographs of a batch are read, and their files written, on a few threads at once."""
        with ThreadPoolExecutor(max_workers=FILE_THREADS) as pool:
            read = list(pool.map(self._read_request, requests))
            outcomes: list[Result | Exception | None] = [
                r if isinstance(r, Exception) else None for r, _, _ in read
            ]
            ready = [
                (i, r, timings, began)
                for i, (r, timings, began) in enumerate(read)
                if isinstance(r, Radiograph)
            ]
            if not ready:
                return outcomes  # type: ignore[return-value]
            started = time.perf_counter()
            predictions: list[RadiographPrediction | Exception]
            try:
                predictions = list(
                    predict_inputs(
                        self.model,
                        [model_input(radiograph, self.spec) for _, radiograph, _, _ in ready],
                        [radiograph.shape for _, radiograph, _, _ in ready],
                    )
                )
            except Exception as error:
                predictions = [error] * len(ready)
            network = (time.perf_counter() - started) / len(ready)

            def finish(
                job: tuple[
                    tuple[int, Radiograph, dict[str, float], float],
                    RadiographPrediction | Exception,
                ],
            ) -> Result | Exception:
                (index, radiograph, timings, total_start), prediction = job
                request = requests[index]
                try:
                    if isinstance(prediction, Exception):
                        raise prediction
                    timings["network"] = network
                    analysis = self._finish(
                        radiograph, prediction, request.image, request.chosen_because
                    )
                    return self._write(
                        analysis,
                        Path(request.out_dir),
                        timings,
                        total_start,
                        request.overlay,
                        request.dicom,
                    )
                except Exception as error:
                    return error

            jobs = zip(ready, predictions, strict=True)
            for (index, _, _, _), outcome in zip(ready, pool.map(finish, jobs), strict=True):
                outcomes[index] = outcome
        return outcomes  # type: ignore[return-value]

    def _read_request(
        self, request: FileRequest
    ) -> tuple[Radiograph | Exception, dict[str, float], float]:
        """A request's radiograph, or the error that stopped its reading."""
        total_start, timings = time.perf_counter(), dict[str, float]()
        try:
            refuse_point(request.point)
            if request.dicom:
                check_dicom_input(request.image)
            radiograph = self._read(request.image, timings)
            if request.dicom:
                radiograph_source(radiograph.metadata)
            return radiograph, timings, total_start
        except Exception as error:
            return error, timings, total_start

    def _read(self, image: Path | str, timings: dict[str, float]) -> Radiograph:
        started = time.perf_counter()
        radiograph = read_radiograph(image)
        timings["read"] = time.perf_counter() - started
        return radiograph

    def _finish(
        self,
        radiograph: Radiograph,
        prediction: RadiographPrediction,
        image: Path | str,
        chosen_because: str | None,
    ) -> RadiographAnalysis:
        """The heatmap on the radiograph's own grid and ``result.json``."""
        heatmap = Volume(
            np.ascontiguousarray(prediction.heatmap.T[:, :, None], dtype=np.float32),
            radiograph.grid.affine,
        )
        members = prediction.member_probabilities
        probability = prediction.probability
        info = self.model_info
        picture = radiograph.source_format in PICTURE_FORMATS
        result = Result(
            task=self.task.name,
            probability=round(probability, 6),
            uncertainty=round(prediction.uncertainty, 6),
            probability_interval=(round(float(members.min()), 6), round(float(members.max()), 6)),
            member_probabilities=tuple(round(float(p), 6) for p in members),
            threshold=self.threshold,
            label=self.task.label(probability, self.threshold),
            input=InputImage(
                path=str(image),
                format=radiograph.source_format,
                shape=radiograph.shape,
                spacing_mm=tuple(round(float(s), 5) for s in radiograph.grid.spacing[:2][::-1]),
            ),
            outputs=OutputFiles(
                result=RESULT, heatmap=HEATMAP, heatmap_png=HEATMAP_PNG if picture else None
            ),
            model=ModelInfo(
                info["name"], info["version"], info["weights_sha256"], info["id"], chosen_because
            ),
            software=software_versions(),
            threading=threads.in_force(),
            warnings=tuple(radiograph.warnings),
        )
        return RadiographAnalysis(result, heatmap, radiograph)

    def _write(
        self,
        analysis: RadiographAnalysis,
        out_dir: Path,
        timings: dict[str, float],
        total_start: float,
        overlay: bool,
        dicom: bool = False,
    ) -> Result:
        result = analysis.result
        heat = analysis.heatmap.array[:, :, 0].T
        pictures: dict[str, Callable[[Path], object]] = {}
        if result.outputs.heatmap_png:
            pictures[HEATMAP_PNG] = lambda path: heatmap_png(heat, path)
        if overlay:
            result = replace(result, outputs=replace(result.outputs, overlay=OVERLAY))
            title = overlay_title(result)
            pixels = analysis.radiograph.pixels
            pictures[OVERLAY] = lambda path: radiograph_overlay_png(pixels, heat, path, title)
        if dicom:
            result, made = radiograph_dicom_files(result, analysis, timings)
            pictures.update(made)
        # The heatmap as 0..1 in 1/255 steps (outputs.writing.nifti_image).
        volumes = {HEATMAP: (analysis.heatmap, np.uint8)}
        return write_timed(out_dir, result, volumes, pictures, timings, total_start)


def radiograph_dicom_files(
    result: Result, analysis: RadiographAnalysis, timings: dict[str, float]
) -> tuple[Result, dict[str, Callable[[Path], object]]]:
    """As ``analysis.dicom_files``, for a radiograph: the Parametric Map and the SR."""
    from medcnn.outputs.dicom_results import radiograph_dicom_results, with_dicom_files

    started = time.perf_counter()
    source = radiograph_source(analysis.radiograph.metadata)
    made = radiograph_dicom_results(result, analysis.heatmap, source)
    timings["dicom"] = time.perf_counter() - started
    return with_dicom_files(result, made)
