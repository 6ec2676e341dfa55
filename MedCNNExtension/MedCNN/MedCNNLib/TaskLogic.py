"""The analysis of a volume as a task: its inputs checked, the volume exported (or, for results
saved as DICOM, its original DICOM series found: ``DicomResults``), the points submitted one
after another to the runner (or, for a model that judges a whole radiograph, the image once,
without a point), each answer handed to the scene side (and its DICOM objects to Slicer's DICOM
database).

What a request needs is decided here from the model chosen and the volume, as the engine decides
(``medcnn.app.engine``): a model that takes no point, or the automatic choice on a 2D volume
(one slice along some axis), gets no point; otherwise each defined control point is a request.

``AnalysisTask`` is a small state machine advanced by ``poll`` from the caller's (main) thread,
so Slicer never waits for the engine. It speaks MRML only to read its inputs (the volume, a
point list); what an answer becomes in the scene is ``ResultImport``'s job, reached through the
``TaskHost`` that started the task (``MedCNNLogic``). Stage titles and exit codes are the
engine's, as its worker's hello stated them (``runner.hello``).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import slicer
import vtk

from .Parameters import AUTOMATIC
from .Runner import (
    STARTING_STAGE,
    AnalysisRequest,
    EngineModel,
    InferenceJob,
    InferenceRunner,
    RunnerBusyError,
    RunnerEvent,
)

if TYPE_CHECKING:
    from .DicomResults import DicomSeries

WHOLE_IMAGE_KEY = "whole-image"


class AnalysisError(Exception):
    """A problem the user can act on: ``str(error)`` is one sentence for the panel; ``reason`` is
    the engine's name of that kind of failure (a key of ``runner.hello.exitCodes``)."""

    def __init__(self, message: str, reason: str = "internal_error") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class PointSpec:
    """What one request analyses: ``key`` identifies it across re-runs; ``ras`` is the point in
    world mm, or None for the whole image (a radiograph, judged without a point)."""

    key: str
    label: str
    ras: tuple[float, float, float] | None

    @property
    def wholeImage(self) -> bool:
        return self.ras is None


def wholeImage(volumeNode: slicer.vtkMRMLVolumeNode) -> PointSpec:
    """The whole volume as the one thing to analyse, labelled with its name."""
    return PointSpec(WHOLE_IMAGE_KEY, volumeNode.GetName() or "Image", None)


def pointsFromMarkups(markupsNode: slicer.vtkMRMLMarkupsNode) -> list[PointSpec]:
    """Every placed control point of a point list, keyed by list and point id, in world
    coordinates. Points not placed (being placed, skipped or missing) are left out: their
    coordinates mean nothing."""
    points = []
    position = [0.0, 0.0, 0.0]
    for index in range(markupsNode.GetNumberOfControlPoints()):
        if markupsNode.GetNthControlPointPositionStatus(index) != markupsNode.PositionDefined:
            continue
        markupsNode.GetNthControlPointPositionWorld(index, position)
        key = f"{markupsNode.GetID()}/{markupsNode.GetNthControlPointID(index)}"
        label = markupsNode.GetNthControlPointLabel(index) or f"Point {index + 1}"
        points.append(PointSpec(key, label, (position[0], position[1], position[2])))
    return points


def pointFromRAS(ras: Iterable[float], label: str | None = None) -> PointSpec:
    """A point given by its coordinates: re-running at the same place replaces its results."""
    r, a, s = (float(v) for v in ras)
    return PointSpec(
        f"RAS:{r:.1f},{a:.1f},{s:.1f}", label or f"({r:.1f}, {a:.1f}, {s:.1f})", (r, a, s)
    )


def isTwoDimensional(volumeNode: slicer.vtkMRMLVolumeNode | None) -> bool:
    """True for a volume of one slice along some axis (a radiograph), as the engine tells a 2D
    input from a 3D scan."""
    imageData = volumeNode.GetImageData() if volumeNode is not None else None
    if imageData is None or imageData.GetNumberOfPoints() == 0:
        return False
    return 1 in imageData.GetDimensions()


def needsPoint(
    volumeNode: slicer.vtkMRMLVolumeNode | None, model: str, models: Iterable[EngineModel]
) -> bool:
    """Whether analysing ``volumeNode`` with ``model`` takes a point: the model says (its
    hello's ``needs_point``); the automatic choice, or a model the engine did not list, goes by
    the image, a 2D volume (a radiograph) without a point and a 3D scan with one."""
    if model != AUTOMATIC:
        chosen = next((known for known in models if known.id == model), None)
        if chosen is not None:
            return chosen.needsPoint
    return not isTwoDimensional(volumeNode)


def checkedVolume(volumeNode: slicer.vtkMRMLScalarVolumeNode | None) -> None:
    """Raise an ``AnalysisError`` that says what to do unless the volume is a single-component
    scalar volume with voxels."""
    if volumeNode is None:
        raise AnalysisError("Select a volume first: a chest CT or a chest radiograph.", "usage")
    if not volumeNode.IsA("vtkMRMLScalarVolumeNode") or volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
        raise AnalysisError(
            f"'{volumeNode.GetName()}' is not a scalar volume; select the CT scan or the "
            "radiograph.",
            "not_ct",
        )
    imageData = volumeNode.GetImageData()
    if imageData is None or imageData.GetNumberOfPoints() == 0:
        raise AnalysisError(f"'{volumeNode.GetName()}' holds no image data.", "unreadable_image")
    if imageData.GetNumberOfScalarComponents() != 1:
        raise AnalysisError(
            f"'{volumeNode.GetName()}' is a colour or vector image; select a grey CT scan or "
            "radiograph (the Vector to Scalar Volume module converts a colour one).",
            "not_ct",
        )


def checkedInputs(
    volumeNode: slicer.vtkMRMLScalarVolumeNode | None,
    points: list[PointSpec] | slicer.vtkMRMLMarkupsNode | None,
    pointNeeded: bool = True,
) -> list[PointSpec]:
    """What to analyse, once the volume is a single-component scalar volume with voxels: the
    points (at least one) when ``pointNeeded``, else the whole image once (any points are not
    sent: a model that judges the whole image refuses them); otherwise an ``AnalysisError``
    that says what to do."""
    checkedVolume(volumeNode)
    if not pointNeeded:
        return [wholeImage(volumeNode)]
    if points is not None and not isinstance(points, list):
        points = pointsFromMarkups(points)
    if not points:
        raise AnalysisError(
            "Place a point on the nodule first (the point list has no placed point).", "usage"
        )
    return points


class VolumeExport:
    """Volumes written for the engine, one file an analysis, each removed when its analysis
    ends (``remove``); ``clear`` removes any left (the module closing)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._paths: set[Path] = set()
        self._count = 0

    def export(self, volumeNode: slicer.vtkMRMLScalarVolumeNode) -> Path:
        """Write the volume (its own coordinates) through an MRML storage node, uncompressed
        (fastest to write and to read; the file lives only as long as its analysis)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._count += 1
        path = self.folder / f"volume-{self._count}-{int(time.time() * 1000)}.nrrd"
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(path))
        storage.SetUseCompression(0)
        if not storage.WriteData(volumeNode) or not path.exists():
            path.unlink(missing_ok=True)
            raise AnalysisError(
                f"'{volumeNode.GetName()}' could not be written to the temporary folder "
                f"{self.folder}; check the free disk space.",
                "output",
            )
        self._paths.add(path)
        return path

    def remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        self._paths.discard(path)

    def clear(self) -> None:
        for path in list(self._paths):
            self.remove(path)


@dataclass
class PointOutcome:
    point: PointSpec
    result: dict | None = None
    error: str | None = None
    exitCode: int = 0
    nodeIDs: dict[str, str] = field(default_factory=dict)
    outputDir: Path | None = None  # kept only when the logic keeps outputs
    cancelled: bool = False
    dicomFiles: list[Path] = field(default_factory=list)  # as written; copied into the database

    def summary(self) -> str:
        if self.error is not None:
            return f"{self.point.label}: {self.error}"
        result = self.result or {}
        parts = [
            f"{result.get('label')}",
            f"probability {result.get('probability', 0.0):.2f} "
            f"\u00b1 {result.get('uncertainty', 0.0):.2f}",
        ]
        if result.get("diameter_mm") is not None:
            parts.append(f"diameter {result['diameter_mm']:.1f} mm")
        if result.get("volume_ml") is not None:
            parts.append(f"volume {result['volume_ml']:.2f} mL")
        if self.dicomFiles:
            parts.append(f"{len(self.dicomFiles)} DICOM objects saved to the DICOM database")
        return f"{self.point.label}: {', '.join(parts)}."


class TaskHost(Protocol):
    """What a task needs from the logic that starts it."""

    scene: slicer.vtkMRMLScene
    runner: InferenceRunner
    keepOutputs: bool

    def exportVolume(self, volumeNode: slicer.vtkMRMLScalarVolumeNode) -> Path: ...

    def removeExport(self, path: Path) -> None: ...

    def newResultDir(self) -> Path: ...

    def importResult(
        self, volumeNodeID: str, point: PointSpec, outDir: Path, result: dict
    ) -> dict[str, str]: ...

    def saveDicomResults(self, outDir: Path, result: dict) -> list[Path]: ...


class AnalysisTask:
    """The analysis of a list of points (or of the whole image, ``wholeImage``) on one volume
    by one model (``AUTOMATIC``: the engine chooses by the input), advanced by ``poll`` from the
    caller's (main) thread: its first poll writes the volume for the engine (until then
    ``statusText`` says so: a large scan takes seconds), then it submits the points one after
    another and imports each answer. The written volume is removed when the task ends.

    With ``dicomSeries`` (results saved as DICOM) nothing is written: the worker reads the
    volume's original series, writes the DICOM objects too, and each answer's objects are saved
    into Slicer's DICOM database after its nodes enter the scene."""

    def __init__(
        self,
        host: TaskHost,
        volumeNode: slicer.vtkMRMLScalarVolumeNode,
        points: list[PointSpec],
        model: str = AUTOMATIC,
        dicomSeries: DicomSeries | None = None,
    ) -> None:
        self.host = host
        self.volumeNodeID = volumeNode.GetID()
        self.volumeName = volumeNode.GetName() or "the volume"
        self.points = list(points)
        self.model = model
        self.dicomSeries = dicomSeries
        self.outcomes: list[PointOutcome] = []
        self.progress = 0.0
        self.stage = STARTING_STAGE
        self.cancelled = False
        self._image: Path | None = None
        self._toLocal = worldToVolumeTransform(volumeNode)
        self._job: InferenceJob | None = None
        self._outDir: Path | None = None

    @property
    def done(self) -> bool:
        return len(self.outcomes) == len(self.points)

    @property
    def succeeded(self) -> list[PointOutcome]:
        return [outcome for outcome in self.outcomes if outcome.error is None]

    @property
    def failed(self) -> list[PointOutcome]:
        return [outcome for outcome in self.outcomes if outcome.error is not None]

    @property
    def statusText(self) -> str:
        """What is happening now, for the progress bar."""
        if self.done:
            return "Cancelled." if self.cancelled else "Done."
        if self._image is None and self.dicomSeries is not None:
            return f"Sending the DICOM series of '{self.volumeName}' to the analysis"
        if self._image is None:
            return (
                f"Writing '{self.volumeName}' to the temporary folder for the analysis (a "
                "large scan takes a few seconds)"
            )
        title = self.host.runner.hello.stageTitle(self.stage)
        if len(self.points) > 1:
            point = self.points[len(self.outcomes)]
            return f"{point.label} ({len(self.outcomes) + 1}/{len(self.points)}): {title}"
        return title

    @property
    def message(self) -> str:
        """The outcome, one line a point, for the panel."""
        lines = [o.summary() for o in self.outcomes if not o.cancelled]
        if self.cancelled:
            lines.append("The analysis was cancelled.")
        return "\n".join(lines)

    def poll(self) -> bool:
        """Advance without blocking (but for writing the volume, on the first poll); returns
        True once every point has an outcome."""
        if not self.done and self._image is None and not self._export():
            return True
        while not self.done:
            if self._job is None:
                self._submitNext()
            for event in self._job.poll():
                self._handle(event)
            if self._job is not None and not self._job.done:
                break
            self._job = None
        if self.done:
            self._removeExport()
        return self.done

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> AnalysisTask:
        """Poll until done (for scripts, tests and the self-test)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.poll():
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise TimeoutError(f"the analysis did not finish within {timeout} s")
            time.sleep(interval)
        return self

    def cancel(self) -> None:
        """Stop now: the running point is killed, the remaining ones are not started."""
        if self.done:
            return
        self.cancelled = True
        if self._job is not None:
            self._job.cancel()
            self._job = None
        self._removeOutDir()
        self._removeExport()
        code = self.host.runner.hello.exitCode("cancelled")
        while not self.done:
            point = self.points[len(self.outcomes)]
            self.outcomes.append(
                PointOutcome(point, error="Cancelled.", exitCode=code, cancelled=True)
            )

    def _export(self) -> bool:
        """Write the volume for the engine; when that fails every point fails with the
        reason, and False is returned."""
        volumeNode = self.host.scene.GetNodeByID(self.volumeNodeID)
        try:
            if volumeNode is None:
                raise AnalysisError(
                    "The volume was removed from the scene before the analysis started."
                )
            if self.dicomSeries is not None:  # the original series: nothing to write
                self._image = Path(self.dicomSeries.image)
                return True
            self._image = self.host.exportVolume(volumeNode)
        except AnalysisError as error:
            code = self.host.runner.hello.exitCode(error.reason)
            while not self.done:
                point = self.points[len(self.outcomes)]
                self.outcomes.append(PointOutcome(point, error=str(error), exitCode=code))
            return False
        return True

    def _removeExport(self) -> None:
        if self._image is not None and self.dicomSeries is None:
            self.host.removeExport(self._image)

    def _submitNext(self) -> None:
        point = self.points[len(self.outcomes)]
        self._outDir = self.host.newResultDir()
        local = None if point.ras is None else tuple(self._toLocal.TransformPoint(point.ras))
        series = self.dicomSeries
        request = AnalysisRequest(
            str(self._image),
            local,
            str(self._outDir),
            model=self.model or None,
            seriesUid=series.seriesUid if series is not None else None,
            dicom=series is not None,
        )
        self.stage = STARTING_STAGE
        try:
            self._job = self.host.runner.submit(request)
        except RunnerBusyError as error:
            code = self.host.runner.hello.exitCode("internal_error")
            self._job = FinishedJob(RunnerEvent("error", message=str(error), exitCode=code))

    def _handle(self, event: RunnerEvent) -> None:
        point = self.points[len(self.outcomes)]
        hello = self.host.runner.hello
        if event.kind == "progress":
            self.stage = event.stage
            fraction = min(max(event.fraction, 0.0), 1.0)
            self.progress = (len(self.outcomes) + fraction) / len(self.points)
            return
        if event.kind == "result":
            try:
                nodeIDs = self.host.importResult(
                    self.volumeNodeID, point, self._outDir, event.result or {}
                )
            except AnalysisError as error:
                outcome = PointOutcome(
                    point, error=str(error), exitCode=hello.exitCode(error.reason)
                )
            else:
                outcome = PointOutcome(point, result=event.result, nodeIDs=nodeIDs)
                if self.dicomSeries is not None:
                    self._saveDicom(outcome, event.result or {})
                if self.host.keepOutputs:
                    outcome.outputDir = self._outDir
        else:
            cancelled = event.exitCode == hello.exitCode("cancelled")
            self.cancelled = self.cancelled or cancelled
            outcome = PointOutcome(
                point, error=event.message, exitCode=event.exitCode, cancelled=cancelled
            )
        self._removeOutDir()
        self.outcomes.append(outcome)
        self.progress = len(self.outcomes) / len(self.points)

    def _saveDicom(self, outcome: PointOutcome, result: dict) -> None:
        """The answer's DICOM objects into Slicer's DICOM database; a failure is the outcome's
        error (its nodes stay in the scene)."""
        try:
            outcome.dicomFiles = self.host.saveDicomResults(self._outDir, result)
        except AnalysisError as error:
            outcome.error = str(error)
            outcome.exitCode = self.host.runner.hello.exitCode(error.reason)

    def _removeOutDir(self) -> None:
        if self._outDir is not None and not self.host.keepOutputs:
            shutil.rmtree(self._outDir, ignore_errors=True)
        self._outDir = None


class FinishedJob:
    """A job that ended before it started (the runner refused it)."""

    def __init__(self, event: RunnerEvent) -> None:
        self._events = [event]

    @property
    def done(self) -> bool:
        return True

    def poll(self) -> list[RunnerEvent]:
        events, self._events = self._events, []
        return events

    def cancel(self) -> None:
        self._events = []


def worldToVolumeTransform(volumeNode: slicer.vtkMRMLVolumeNode) -> vtk.vtkAbstractTransform:
    """World (where points are placed) to the volume's own coordinates (what is exported)."""
    transform = vtk.vtkGeneralTransform()
    parent = volumeNode.GetParentTransformNode()
    if parent is not None:
        parent.GetTransformFromWorld(transform)
    return transform
