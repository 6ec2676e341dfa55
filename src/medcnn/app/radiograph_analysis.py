"""One chest radiograph, start to end: read it, judge it whole, map the heatmap back onto it.

``RadiographAnalyzer`` is the chest X-ray model's counterpart of ``app.analysis.Analyzer``,
with the same calls (``analyze_file``, ``analyze_files``), so the engine, the batch runner, the
worker and the MONAI bundle drive either the same way. A radiograph has no point: one given is
refused, not ignored.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from medcnn import stages, threads
from medcnn.app.analysis import FileRequest, Progress, software_versions
from medcnn.bundle import (
    XRAY_MODEL,
    default_bundle_dir,
    load_network,
    load_radiograph_spec,
)
from medcnn.errors import ModelIntegrityError, UsageError
from medcnn.outputs.render import heatmap_png, overlay_title, radiograph_overlay_png
from medcnn.outputs.result import (
    CHEST_XRAY_PNEUMONIA,
    InputImage,
    ModelInfo,
    OutputFiles,
    Result,
    label_for,
)
from medcnn.outputs.writing import HEATMAP, HEATMAP_PNG, OVERLAY, RESULT, write_outputs
from medcnn.reading.radiograph import Radiograph, read_radiograph
from medcnn.volume import Volume
from medcnn.xray.inference import RadiographPrediction, predict_radiographs
from medcnn.xray.network import RadiographEnsemble

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

    task = CHEST_XRAY_PNEUMONIA

    def __init__(self, bundle_dir: Path | str | None = None, trusted: bool = False) -> None:
        self.bundle_dir = (
            Path(bundle_dir).resolve() if bundle_dir else default_bundle_dir(XRAY_MODEL)
        )
        model, self.model_info = load_network(self.bundle_dir, trusted=trusted)
        if not isinstance(model, RadiographEnsemble):
            raise ModelIntegrityError(
                f"The bundle {self.bundle_dir} is not a chest X-ray model; give its own bundle."
            )
        self.model = model
        self.spec = load_radiograph_spec(self.bundle_dir)
        self.threshold = self.model_info["threshold"]

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
    ) -> Result:
        """Read a radiograph, judge it, write the outputs; returns the result as written."""
        report = progress or (lambda stage, fraction: None)
        refuse_point(point)
        total_start = time.perf_counter()
        timings: dict[str, float] = {}
        report(stages.READING.name, stages.READING.fraction)
        radiograph = self._read(image, timings)
        report(stages.NETWORK.name, stages.NETWORK.fraction)
        started = time.perf_counter()
        prediction = predict_radiographs(self.model, [radiograph], self.spec)[0]
        timings["network"] = time.perf_counter() - started
        report(stages.HEATMAP.name, stages.HEATMAP.fraction)
        analysis = self._finish(radiograph, prediction, image, chosen_because)
        report(stages.WRITING.name, stages.WRITING.fraction)
        result = self._write(analysis, Path(out_dir), timings, total_start, overlay)
        report(stages.DONE.name, stages.DONE.fraction)
        return result

    def analyze_files(self, requests: Sequence[FileRequest]) -> list[Result | Exception]:
        """Several radiographs through the network as one batch (``medcnn batch``); per
        request the same files as ``analyze_file``, or the error that stopped it."""
        outcomes: list[Result | Exception | None] = [None] * len(requests)
        ready: list[tuple[int, Radiograph, dict[str, float], float]] = []
        for index, request in enumerate(requests):
            total_start, timings = time.perf_counter(), dict[str, float]()
            try:
                refuse_point(request.point)
                ready.append((index, self._read(request.image, timings), timings, total_start))
            except Exception as error:
                outcomes[index] = error
        if ready:
            started = time.perf_counter()
            try:
                predictions = predict_radiographs(self.model, [r[1] for r in ready], self.spec)
            except Exception as error:
                predictions = [error] * len(ready)  # type: ignore[list-item]
            network = (time.perf_counter() - started) / len(ready)
            for (index, radiograph, timings, total_start), prediction in zip(
                ready, predictions, strict=True
            ):
                request = requests[index]
                try:
                    if isinstance(prediction, Exception):
                        raise prediction
                    timings["network"] = network
                    analysis = self._finish(
                        radiograph, prediction, request.image, request.chosen_because
                    )
                    outcomes[index] = self._write(
                        analysis, Path(request.out_dir), timings, total_start, request.overlay
                    )
                except Exception as error:
                    outcomes[index] = error
        return outcomes  # type: ignore[return-value]

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
            task=self.task,
            probability=round(probability, 6),
            uncertainty=round(prediction.uncertainty, 6),
            probability_interval=(round(float(members.min()), 6), round(float(members.max()), 6)),
            member_probabilities=tuple(round(float(p), 6) for p in members),
            threshold=self.threshold,
            label=label_for(self.task, probability, self.threshold),
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
    ) -> Result:
        result = analysis.result
        heat = analysis.heatmap.array[:, :, 0].T
        pictures = {}
        if result.outputs.heatmap_png:
            pictures[HEATMAP_PNG] = lambda path: heatmap_png(heat, path)
        if overlay:
            result = replace(result, outputs=replace(result.outputs, overlay=OVERLAY))
            title = overlay_title(result)
            pixels = analysis.radiograph.pixels
            pictures[OVERLAY] = lambda path: radiograph_overlay_png(pixels, heat, path, title)
        started = time.perf_counter()

        def finish_timings(result: Result) -> Result:
            timings["write"] = time.perf_counter() - started
            timings["total"] = time.perf_counter() - total_start
            return replace(result, timings_s={k: round(v, 4) for k, v in timings.items()})

        return write_outputs(
            out_dir,
            result,
            {HEATMAP: (analysis.heatmap, np.uint8)},  # 0..1 in 1/255 steps (nifti_image)
            before_result=finish_timings,
            pictures=pictures,
        )
