"""From a CT volume and points in the MRML scene to results in the scene, speaking only MRML.

No Qt here, so the same logic runs inside 3D Slicer, against ``slicer-core`` in the tests and
behind a web viewer. The flow is one way: the selected volume is written to a temporary file by
an MRML storage node, the runner analyses each point in the background, and each answer comes
back as MRML nodes (heatmap volume, segmentation, a row of the results table), all made before
any is added for good, so a failure leaves the scene as it was.

The heatmap and segmentation files lie on a sub-grid of the exported scan's own grid, so read
back through MRML's storage nodes they overlay the CT voxel for voxel.
"""

from __future__ import annotations

import datetime
import itertools
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import slicer
import vtk

from .Parameters import Parameters
from .Runner import (
    CANCELLED_EXIT_CODE,
    AnalysisRequest,
    InferenceJob,
    InferenceRunner,
    RunnerBusyError,
    RunnerEvent,
    WorkerRunner,
)

log = logging.getLogger("MedCNN.Logic")

ATTRIBUTE = "MedCNN."
ROLE_HEATMAP, ROLE_SEGMENTATION, ROLE_TABLE = "heatmap", "segmentation", "table"
HEAT_COLOR_SINGLETON_TAG = "MedCNNHeat"
NODULE_SEGMENT_NAME = "Nodule"
NODULE_COLOR = (0.12, 0.85, 0.45)
# DICOM category / type / anatomic region codes (SNOMED CT): morphologically altered structure,
# nodule, lung; in the serialised form Slicer's terminology module reads.
NODULE_TERMINOLOGY = (
    "Segmentation category and type - DICOM master list"
    "~SCT^49755003^Morphologically Altered Structure"
    "~SCT^27925004^Nodule"
    "~^^"
    "~Anatomic codes - DICOM master list"
    "~SCT^39607008^Lung"
    "~^^"
)
DISCLAIMER = "Research use only; not for clinical use."
STAGE_TITLES = {
    "starting": "Starting the analysis engine (first use loads the model)",
    "reading": "Reading the scan",
    "preprocessing": "Preprocessing",
    "network": "Running the network",
    "heatmap": "Computing the heatmap",
    "writing": "Writing the results",
    "done": "Loading the results",
}
# (name, kind, unit, description): one row a point
TABLE_COLUMNS = (
    ("Point", "string", "", "Label of the analysed point"),
    ("Probability", "double", "", "Malignancy probability (mean of the ensemble members)"),
    ("Label", "string", "", "malignant or benign at the model's threshold"),
    ("Uncertainty", "double", "", "Standard deviation of the ensemble members' probabilities"),
    ("Probability low", "double", "", "Lowest probability among the ensemble members"),
    ("Probability high", "double", "", "Highest probability among the ensemble members"),
    ("Diameter", "double", "mm", "Longest axial diameter of the segmented nodule"),
    ("Volume", "double", "mL", "Volume of the segmented nodule"),
    ("Calcified", "double", "", "Share of the segmented voxels above 200 HU (calcium)"),
    ("R", "double", "mm", "Point, right (RAS)"),
    ("A", "double", "mm", "Point, anterior (RAS)"),
    ("S", "double", "mm", "Point, superior (RAS)"),
    ("Analyzed", "string", "", "When the analysis ran (UTC)"),
)


class AnalysisError(Exception):
    """A problem the user can act on: ``str(error)`` is one sentence for the panel."""

    def __init__(self, message: str, exitCode: int = 1) -> None:
        super().__init__(message)
        self.exitCode = exitCode


@dataclass(frozen=True)
class PointSpec:
    """A point to analyse: ``key`` identifies it across re-runs, ``ras`` is in world mm."""

    key: str
    label: str
    ras: tuple[float, float, float]


def pointsFromMarkups(markupsNode: slicer.vtkMRMLMarkupsNode) -> list[PointSpec]:
    """Every control point of a point list, keyed by list and point id, in world coordinates."""
    points = []
    position = [0.0, 0.0, 0.0]
    for index in range(markupsNode.GetNumberOfControlPoints()):
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


@dataclass
class PointOutcome:
    point: PointSpec
    result: dict | None = None
    error: str | None = None
    exitCode: int = 0
    nodeIDs: dict[str, str] = field(default_factory=dict)
    outputDir: Path | None = None  # kept only when the logic keeps outputs

    def summary(self) -> str:
        if self.error is not None:
            return f"{self.point.label}: {self.error}"
        result = self.result or {}
        return (
            f"{self.point.label}: {result.get('label')}, probability "
            f"{result.get('probability', 0.0):.2f} \u00b1 {result.get('uncertainty', 0.0):.2f}, "
            f"diameter {result.get('diameter_mm', 0.0):.1f} mm, "
            f"volume {result.get('volume_ml', 0.0):.2f} mL."
        )


class AnalysisTask:
    """The analysis of a list of points on one volume, advanced by ``poll`` from the caller's
    (main) thread: it submits the points one after another and imports each answer."""

    def __init__(
        self,
        logic: MedCNNLogic,
        volumeNode: slicer.vtkMRMLScalarVolumeNode,
        points: list[PointSpec],
    ) -> None:
        self.logic = logic
        self.volumeNodeID = volumeNode.GetID()
        self.points = list(points)
        self.outcomes: list[PointOutcome] = []
        self.progress = 0.0
        self.stage = "starting"
        self.cancelled = False
        self._image = logic.exportVolume(volumeNode)
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
        title = STAGE_TITLES.get(self.stage, self.stage.capitalize())
        if len(self.points) > 1:
            point = self.points[len(self.outcomes)]
            return f"{point.label} ({len(self.outcomes) + 1}/{len(self.points)}): {title}"
        return title

    @property
    def message(self) -> str:
        """The outcome, one line a point, for the panel."""
        lines = [o.summary() for o in self.outcomes if o.exitCode != CANCELLED_EXIT_CODE]
        if self.cancelled:
            lines.append("The analysis was cancelled.")
        return "\n".join(lines)

    def poll(self) -> bool:
        """Advance without blocking; returns True once every point has an outcome."""
        while not self.done:
            if self._job is None:
                self._submitNext()
            for event in self._job.poll():
                self._handle(event)
            if self._job is not None and not self._job.done:
                break
            self._job = None
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
        while not self.done:
            point = self.points[len(self.outcomes)]
            self.outcomes.append(
                PointOutcome(point, error="Cancelled.", exitCode=CANCELLED_EXIT_CODE)
            )

    def _submitNext(self) -> None:
        point = self.points[len(self.outcomes)]
        self._outDir = self.logic.newResultDir()
        local = self._toLocal.TransformPoint(point.ras)
        request = AnalysisRequest(str(self._image), tuple(local), str(self._outDir))
        self.stage = "starting"
        try:
            self._job = self.logic.runner.submit(request)
        except RunnerBusyError as error:
            self._job = FinishedJob(RunnerEvent("error", message=str(error), exitCode=1))

    def _handle(self, event: RunnerEvent) -> None:
        point = self.points[len(self.outcomes)]
        if event.kind == "progress":
            self.stage = event.stage
            fraction = min(max(event.fraction, 0.0), 1.0)
            self.progress = (len(self.outcomes) + fraction) / len(self.points)
            return
        if event.kind == "result":
            try:
                nodeIDs = self.logic.importResult(
                    self.volumeNodeID, point, self._outDir, event.result or {}
                )
            except AnalysisError as error:
                outcome = PointOutcome(point, error=str(error), exitCode=error.exitCode)
            else:
                outcome = PointOutcome(point, result=event.result, nodeIDs=nodeIDs)
                if self.logic.keepOutputs:
                    outcome.outputDir = self._outDir
        else:
            if event.exitCode == CANCELLED_EXIT_CODE:
                self.cancelled = True
            outcome = PointOutcome(point, error=event.message, exitCode=event.exitCode)
        self._removeOutDir()
        self.outcomes.append(outcome)
        self.progress = len(self.outcomes) / len(self.points)

    def _removeOutDir(self) -> None:
        if self._outDir is not None and not self.logic.keepOutputs:
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


def iterateCollection(collection: vtk.vtkCollection) -> Iterator[vtk.vtkObject]:
    for index in range(collection.GetNumberOfItems()):
        yield collection.GetItemAsObject(index)


class MedCNNLogic:
    """The module's logic. ``scene`` is Slicer's scene by default; ``runner`` the persistent
    worker by default (tests and other front ends may pass their own). The engine's output files
    are deleted once imported, unless ``keepOutputs`` (then each outcome has its ``outputDir``)."""

    def __init__(
        self,
        scene: slicer.vtkMRMLScene | None = None,
        runner: InferenceRunner | None = None,
        workDir: str | Path | None = None,
        parameters: Parameters | None = None,
        keepOutputs: bool = False,
    ) -> None:
        self.keepOutputs = keepOutputs
        self.scene = scene if scene is not None else slicer.mrmlScene
        self.runner = runner if runner is not None else WorkerRunner()
        self.parameters = parameters or Parameters()
        self._ownsWorkDir = workDir is None
        self.workDir = Path(workDir or tempfile.mkdtemp(prefix="MedCNN-"))
        self._resultNumbers = itertools.count(1)
        self._exports: dict[str, tuple[tuple, Path]] = {}
        ensureSegmentationConverterRules()

    def cleanup(self) -> None:
        """Stop the worker and remove the temporary files (the scene keeps the results)."""
        self.runner.shutdown()
        if self._ownsWorkDir:
            shutil.rmtree(self.workDir, ignore_errors=True)
        self._exports.clear()

    # -- running ------------------------------------------------------------------------

    def startAnalysis(
        self,
        volumeNode: slicer.vtkMRMLScalarVolumeNode | None,
        points: list[PointSpec] | slicer.vtkMRMLMarkupsNode | None,
    ) -> AnalysisTask:
        """Check the inputs and start; the returned task is advanced by ``poll``."""
        if volumeNode is None:
            raise AnalysisError("Select a CT volume first.", 2)
        if not volumeNode.IsA("vtkMRMLScalarVolumeNode") or volumeNode.IsA(
            "vtkMRMLLabelMapVolumeNode"
        ):
            raise AnalysisError(
                f"'{volumeNode.GetName()}' is not a scalar volume; select the CT scan.", 6
            )
        imageData = volumeNode.GetImageData()
        if imageData is None or imageData.GetNumberOfPoints() == 0:
            raise AnalysisError(f"'{volumeNode.GetName()}' holds no image data.", 4)
        if imageData.GetNumberOfScalarComponents() != 1:
            raise AnalysisError(
                f"'{volumeNode.GetName()}' is a colour or vector image, not a CT; "
                "select the CT scan.",
                6,
            )
        if points is not None and not isinstance(points, list):
            points = pointsFromMarkups(points)
        if not points:
            raise AnalysisError("Place a point on the nodule first (the point list is empty).", 2)
        return AnalysisTask(self, volumeNode, points)

    def analyze(
        self,
        volumeNode: slicer.vtkMRMLScalarVolumeNode | None,
        points: list[PointSpec] | slicer.vtkMRMLMarkupsNode | None,
        timeout: float | None = None,
    ) -> AnalysisTask:
        """Start and wait: for scripts, tests and the self-test."""
        return self.startAnalysis(volumeNode, points).wait(timeout)

    def newResultDir(self) -> Path:
        return self.workDir / "results" / str(next(self._resultNumbers))

    def exportVolume(self, volumeNode: slicer.vtkMRMLScalarVolumeNode) -> Path:
        """Write the volume (its own coordinates) through an MRML storage node, reusing the
        file while the voxels and geometry are unchanged."""
        matrix = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(matrix)
        signature = (
            volumeNode.GetImageData().GetMTime(),
            tuple(matrix.GetElement(i, j) for i in range(4) for j in range(4)),
        )
        cached = self._exports.get(volumeNode.GetID())
        if cached is not None and cached[0] == signature and cached[1].exists():
            return cached[1]
        if cached is not None:
            cached[1].unlink(missing_ok=True)
        folder = self.workDir / "input"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"volume-{len(self._exports) + 1}-{int(time.time() * 1000)}.nrrd"
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(path))
        storage.SetUseCompression(0)
        if not storage.WriteData(volumeNode) or not path.exists():
            raise AnalysisError(
                f"'{volumeNode.GetName()}' could not be written to the temporary folder "
                f"{folder}; check the free disk space.",
                1,
            )
        self._exports[volumeNode.GetID()] = (signature, path)
        return path

    # -- results into the scene -------------------------------------------------------------

    def importResult(
        self, volumeNodeID: str, point: PointSpec, outDir: Path, result: dict
    ) -> dict[str, str]:
        """Add the heatmap, the segmentation and the table row of one answer; all or nothing.
        Earlier results for the same point are replaced. Returns the new nodes' IDs by role."""
        volumeNode = self.scene.GetNodeByID(volumeNodeID)
        if volumeNode is None:
            raise AnalysisError("The volume was removed from the scene during the analysis.", 1)
        key = f"{volumeNodeID}|{point.key}"
        when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        outputs = result.get("outputs", {})
        created: list = []
        try:
            heatmap = self._addHeatmap(
                volumeNode, point, Path(outDir) / outputs.get("heatmap", "heatmap.nii.gz"), created
            )
            segmentation = self._addSegmentation(
                volumeNode,
                point,
                Path(outDir) / outputs.get("segmentation", "segmentation.nii.gz"),
                created,
            )
            table = self._resultsTable(volumeNode, created)
            for node, role in ((heatmap, ROLE_HEATMAP), (segmentation, ROLE_SEGMENTATION)):
                setProvenance(node, result, volumeNode, point, role, key, when)
            self._setTableRow(table, key, point, result, when)
            setProvenance(table, result, volumeNode, point, ROLE_TABLE, "", when)
        except Exception as error:
            for node in reversed(created):
                removeNodeWithDependents(self.scene, node)
            if isinstance(error, AnalysisError):
                raise
            log.exception("importing the results failed")
            raise AnalysisError(
                f"The results could not be loaded into the scene ({error}).", 1
            ) from error
        newIDs = {ROLE_HEATMAP: heatmap.GetID(), ROLE_SEGMENTATION: segmentation.GetID()}
        for node in self.resultNodes(key):
            if node.GetID() not in newIDs.values():
                removeNodeWithDependents(self.scene, node)
        newIDs[ROLE_TABLE] = table.GetID()
        self.showResult(volumeNode, heatmap, point.ras)
        return newIDs

    def resultNodes(self, key: str | None = None, role: str | None = None) -> list:
        """Result nodes in the scene, of one point (``key``) and/or one role."""
        nodes = []
        for index in range(self.scene.GetNumberOfNodes()):
            node = self.scene.GetNthNode(index)
            nodeRole = node.GetAttribute(ATTRIBUTE + "Role")
            if nodeRole is None:
                continue
            if key is not None and node.GetAttribute(ATTRIBUTE + "Key") != key:
                continue
            if role is not None and nodeRole != role:
                continue
            nodes.append(node)
        return nodes

    def _readVolume(self, path: Path, node: slicer.vtkMRMLVolumeNode) -> None:
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(path))
        storage.SetSingleFile(1)
        if not path.exists() or not storage.ReadData(node):
            raise AnalysisError(f"The analysis output {path.name} could not be read.", 4)

    def _addHeatmap(
        self, volumeNode: slicer.vtkMRMLVolumeNode, point: PointSpec, path: Path, created: list
    ) -> slicer.vtkMRMLScalarVolumeNode:
        heatmap = slicer.vtkMRMLScalarVolumeNode()
        self._readVolume(path, heatmap)
        heatmap.SetName(f"{volumeNode.GetName()} {point.label} MedCNN heatmap")
        self.scene.AddNode(heatmap)
        created.append(heatmap)
        display = slicer.vtkMRMLScalarVolumeDisplayNode()
        self.scene.AddNode(display)
        created.append(display)
        display.SetAndObserveColorNodeID(self.heatColorNode().GetID())
        display.SetAutoWindowLevel(0)
        display.SetWindowLevelMinMax(0.0, 1.0)
        display.SetAutoThreshold(0)
        display.SetThreshold(self.parameters.heatmapThreshold, 2.0)
        display.SetApplyThreshold(1)
        heatmap.SetAndObserveDisplayNodeID(display.GetID())
        heatmap.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
        return heatmap

    def _addSegmentation(
        self, volumeNode: slicer.vtkMRMLVolumeNode, point: PointSpec, path: Path, created: list
    ) -> slicer.vtkMRMLSegmentationNode:
        label = slicer.vtkMRMLLabelMapVolumeNode()
        self._readVolume(path, label)
        labelmap = slicer.vtkOrientedImageData()
        labelmap.ShallowCopy(label.GetImageData())
        matrix = vtk.vtkMatrix4x4()
        label.GetIJKToRASMatrix(matrix)
        labelmap.SetImageToWorldMatrix(matrix)

        segmentation = slicer.vtkMRMLSegmentationNode()
        segmentation.SetName(f"{volumeNode.GetName()} {point.label} MedCNN nodule")
        self.scene.AddNode(segmentation)
        created.append(segmentation)
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        segmentation.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
        segmentId = segmentation.AddSegmentFromBinaryLabelmapRepresentation(
            labelmap, NODULE_SEGMENT_NAME, list(NODULE_COLOR)
        )
        if not segmentId:
            raise AnalysisError("The nodule segmentation could not be added to the scene.", 1)
        segment = segmentation.GetSegmentation().GetSegment(segmentId)
        if hasattr(segment, "SetTerminology"):
            segment.SetTerminology(NODULE_TERMINOLOGY)
        else:  # older Slicer versions keep the terminology only as a tag
            segment.SetTag(segment.GetTerminologyEntryTagName(), NODULE_TERMINOLOGY)
        segment.SetNameAutoGenerated(False)
        segment.SetColorAutoGenerated(False)
        if self.parameters.showSegmentation3D:
            segmentation.CreateClosedSurfaceRepresentation()
        display = segmentation.GetDisplayNode()
        display.SetVisibility(1)
        display.SetVisibility2DFill(1)
        display.SetVisibility2DOutline(1)
        display.SetOpacity2DFill(0.25)
        display.SetVisibility3D(1 if self.parameters.showSegmentation3D else 0)
        display.SetPreferredDisplayRepresentationName3D(
            slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName()
        )
        return segmentation

    def heatColorNode(self) -> slicer.vtkMRMLColorTableNode:
        """The heat colour map (black, red, yellow, white), shared by all heatmaps."""
        node = self.scene.GetSingletonNode(HEAT_COLOR_SINGLETON_TAG, "vtkMRMLColorTableNode")
        if node is not None:
            return node
        node = slicer.vtkMRMLColorTableNode()
        node.SetName("MedCNN heat")
        node.SetSingletonTag(HEAT_COLOR_SINGLETON_TAG)
        node.SetTypeToUser()
        node.SetNumberOfColors(256)
        for index in range(256):
            value = index / 255.0
            red = min(1.0, 3.0 * value)
            green = min(1.0, max(0.0, 3.0 * value - 1.0))
            blue = min(1.0, max(0.0, 3.0 * value - 2.0))
            node.SetColor(index, f"{value:.2f}", red, green, blue, 1.0)
        node.SetAttribute(ATTRIBUTE + "Colormap", "heat")
        self.scene.AddNode(node)
        return node

    def _resultsTable(
        self, volumeNode: slicer.vtkMRMLVolumeNode, created: list
    ) -> slicer.vtkMRMLTableNode:
        for node in self.resultNodes(role=ROLE_TABLE):
            if node.GetAttribute(ATTRIBUTE + "InputVolumeID") == volumeNode.GetID():
                return node
        table = slicer.vtkMRMLTableNode()
        table.SetName(f"{volumeNode.GetName()} MedCNN results")
        for name, kind, unit, description in TABLE_COLUMNS:
            array = vtk.vtkStringArray() if kind == "string" else vtk.vtkDoubleArray()
            array.SetName(name)
            table.AddColumn(array)
            table.SetColumnDescription(name, description)
            if unit:
                table.SetColumnUnitLabel(name, unit)
        table.SetAttribute(ATTRIBUTE + "RowKeys", "[]")
        table.SetAttribute(ATTRIBUTE + "Role", ROLE_TABLE)
        table.SetAttribute(ATTRIBUTE + "InputVolumeID", volumeNode.GetID())
        self.scene.AddNode(table)
        created.append(table)
        return table

    def _setTableRow(
        self, table: slicer.vtkMRMLTableNode, key: str, point: PointSpec, result: dict, when: str
    ) -> None:
        keys = json.loads(table.GetAttribute(ATTRIBUTE + "RowKeys") or "[]")
        if key in keys:
            row = keys.index(key)
        else:
            row = table.AddEmptyRow()
            keys.append(key)
        ras = result.get("point", {}).get("ras", list(point.ras))
        interval = result.get("probability_interval", [None, None])
        values = {
            "Point": point.label,
            "Probability": result["probability"],
            "Label": result["label"],
            "Uncertainty": result["uncertainty"],
            "Probability low": interval[0],
            "Probability high": interval[1],
            "Diameter": result["diameter_mm"],
            "Volume": result["volume_ml"],
            "Calcified": result.get("calcified_share"),
            "R": ras[0],
            "A": ras[1],
            "S": ras[2],
            "Analyzed": when,
        }
        data = table.GetTable()
        for name, kind, _, _ in TABLE_COLUMNS:
            value = values[name]
            if kind == "string":
                data.GetColumnByName(name).SetValue(row, str(value))
            else:
                data.GetColumnByName(name).SetValue(row, float("nan") if value is None else value)
        table.SetAttribute(ATTRIBUTE + "RowKeys", json.dumps(keys))
        table.Modified()

    # -- display -----------------------------------------------------------------------------

    def showResult(
        self,
        volumeNode: slicer.vtkMRMLVolumeNode,
        heatmapNode: slicer.vtkMRMLVolumeNode,
        pointWorld: tuple[float, float, float],
    ) -> None:
        """CT in the background, heatmap in the foreground of every slice view, centred."""
        for composite in iterateCollection(self.scene.GetNodesByClass("vtkMRMLSliceCompositeNode")):
            composite.SetBackgroundVolumeID(volumeNode.GetID())
            composite.SetForegroundVolumeID(heatmapNode.GetID())
            composite.SetForegroundOpacity(self.parameters.heatmapOpacity)
        if self.parameters.centerViewsOnNodule:
            slicer.vtkMRMLSliceNode.JumpAllSlices(
                self.scene, *pointWorld, slicer.vtkMRMLSliceNode.CenteredJumpSlice
            )

    def setHeatmapOpacity(self, opacity: float) -> None:
        self.parameters.heatmapOpacity = min(max(float(opacity), 0.0), 1.0)
        heatmapIDs = {node.GetID() for node in self.resultNodes(role=ROLE_HEATMAP)}
        for composite in iterateCollection(self.scene.GetNodesByClass("vtkMRMLSliceCompositeNode")):
            if composite.GetForegroundVolumeID() in heatmapIDs:
                composite.SetForegroundOpacity(self.parameters.heatmapOpacity)

    def setHeatmapThreshold(self, threshold: float) -> None:
        """Heat below ``threshold`` is transparent in the slice views."""
        self.parameters.heatmapThreshold = min(max(float(threshold), 0.0), 1.0)
        for node in self.resultNodes(role=ROLE_HEATMAP):
            display = node.GetDisplayNode()
            if display is not None:
                display.SetThreshold(self.parameters.heatmapThreshold, 2.0)
                display.SetApplyThreshold(1)


def setProvenance(
    node: slicer.vtkMRMLNode,
    result: dict,
    volumeNode: slicer.vtkMRMLVolumeNode,
    point: PointSpec,
    role: str,
    key: str,
    when: str,
) -> None:
    """Where a result node came from, as node attributes (saved with the scene)."""
    model = result.get("model", {})
    software = result.get("software", {})
    ras = result.get("point", {}).get("ras", list(point.ras))
    attributes = {
        "Role": role,
        "ModelName": model.get("name", ""),
        "ModelVersion": model.get("version", ""),
        "WeightsSHA256": model.get("weights_sha256", ""),
        "EngineVersion": software.get("medcnn", ""),
        "InputVolume": volumeNode.GetName() or "",
        "InputVolumeID": volumeNode.GetID(),
        "Point": point.label,
        "PointRAS": ",".join(f"{float(v):.4f}" for v in ras),
        "Time": when,
        "Disclaimer": DISCLAIMER,
    }
    if key:
        attributes["Key"] = key
        attributes["Result"] = json.dumps(result, sort_keys=True)
    for name, value in attributes.items():
        node.SetAttribute(ATTRIBUTE + name, str(value))


def removeNodeWithDependents(scene: slicer.vtkMRMLScene, node: slicer.vtkMRMLNode | None) -> None:
    """Remove a node and the display and storage nodes that exist only for it."""
    if node is None or scene.GetNodeByID(node.GetID() or "") is None:
        return
    dependents = []
    if node.IsA("vtkMRMLDisplayableNode"):
        dependents += [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    if node.IsA("vtkMRMLStorableNode"):
        dependents += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
    scene.RemoveNode(node)
    for dependent in dependents:
        if dependent is not None and scene.GetNodeByID(dependent.GetID() or "") is not None:
            scene.RemoveNode(dependent)


def ensureSegmentationConverterRules() -> None:
    """Slicer's Segmentations module registers these; bare MRML (slicer-core) does not."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    present = {rule.GetClassName() for rule in factory.GetConverterRules()}
    for ruleClass in (
        slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule,
        slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule,
    ):
        if ruleClass.__name__ not in present:
            factory.RegisterConverterRule(ruleClass())
