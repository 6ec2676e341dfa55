"""The module's logic: from a volume in the MRML scene (a CT with points on nodules, or a
radiograph, which needs no point) to results in the scene, speaking only MRML.

No Qt here, so the same logic runs inside 3D Slicer, against ``slicer-core`` in the tests and
behind a web viewer. ``MedCNNLogic`` is a small façade over the library's roles, one file each:

- ``TaskLogic``: what a request needs (a point or not, by the model chosen and the volume),
  inputs checked, the volume exported, points (or the whole image) submitted to the runner one
  after another (``AnalysisTask``, advanced by ``poll``);
- ``ResultImport``: each answer into the scene as MRML nodes, all or nothing;
- ``DicomResults``: for results saved as DICOM, the volume's original series sent instead of an
  export, and the DICOM objects written into Slicer's DICOM database;
- ``Display``: how results look (heat colours, threshold, segment display, slice views);
- ``Runner``: the background process, which also tells the engine's stage titles, exit codes
  and installed models (its hello).
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from pathlib import Path
from typing import NamedTuple

import slicer

from .DicomResults import DicomDatabase, dicomSeriesOf, saveToDatabase, slicerDicomDatabase
from .Display import ResultDisplay
from .Parameters import AUTOMATIC, AUTOMATIC_TITLE, Parameters
from .ResultImport import ROLE_HEATMAP, ResultImporter
from .Runner import InferenceRunner, WorkerRunner
from .TaskLogic import (
    AnalysisError,
    AnalysisTask,
    PointOutcome,
    PointSpec,
    VolumeExport,
    checkedInputs,
    needsPoint,
    pointFromRAS,
    pointsFromMarkups,
)

__all__ = [
    "AUTOMATIC",
    "AnalysisError",
    "AnalysisTask",
    "MedCNNLogic",
    "ModelChoice",
    "PointOutcome",
    "PointSpec",
    "pointFromRAS",
    "pointsFromMarkups",
]


def temporaryFolder() -> str | None:
    """Slicer's temporary folder (Application Settings, General), which Slicer and the user
    know to clean; None outside the application (bare MRML): the system's."""
    app = getattr(slicer, "app", None)
    folder = getattr(app, "temporaryPath", None) if app is not None else None
    if not folder:
        return None
    Path(folder).mkdir(parents=True, exist_ok=True)
    return str(folder)


class ModelChoice(NamedTuple):
    """One entry of the model selector: the id sent (``AUTOMATIC``: none), its title and what
    it takes."""

    id: str
    title: str
    description: str = ""


class MedCNNLogic:
    """The module's logic. ``scene`` is Slicer's scene by default; ``runner`` the persistent
    worker by default (tests and other front ends may pass their own). Its files live in
    ``workDir``, by default a new folder in Slicer's temporary folder (``temporaryFolder``):
    the volume written for an analysis is removed when the analysis ends, the engine's output
    files once imported, unless ``keepOutputs`` (then each outcome has its ``outputDir``).
    ``dicomDatabase`` receives results saved as DICOM: Slicer's by default."""

    def __init__(
        self,
        scene: slicer.vtkMRMLScene | None = None,
        runner: InferenceRunner | None = None,
        workDir: str | Path | None = None,
        parameters: Parameters | None = None,
        keepOutputs: bool = False,
        dicomDatabase: DicomDatabase | None = None,
    ) -> None:
        self.keepOutputs = keepOutputs
        self._dicomDatabase = dicomDatabase
        self.scene = scene if scene is not None else slicer.mrmlScene
        self.runner = runner if runner is not None else WorkerRunner()
        self.display = ResultDisplay(self.scene, parameters or Parameters())
        self.results = ResultImporter(self.scene, self.display)
        self._ownsWorkDir = workDir is None
        self.workDir = Path(workDir or tempfile.mkdtemp(prefix="MedCNN-", dir=temporaryFolder()))
        self._resultNumbers = itertools.count(1)
        self._export = VolumeExport(self.workDir / "input")

    @property
    def parameters(self) -> Parameters:
        """The user's model choice and display settings (the widget loads and saves them)."""
        return self.display.parameters

    @parameters.setter
    def parameters(self, parameters: Parameters) -> None:
        self.display.parameters = parameters

    def cleanup(self) -> None:
        """Stop the worker and remove the temporary files (the scene keeps the results)."""
        self.runner.shutdown()
        if self._ownsWorkDir:
            shutil.rmtree(self.workDir, ignore_errors=True)
        self._export.clear()

    # -- the models (the engine's hello) -------------------------------------------------------

    def startEngine(self) -> None:
        """Start the analysis process ahead of the first click: its first line lists the
        installed models (``modelChoices`` after ``updateEngine``), then it loads them."""
        self.runner.start()

    def updateEngine(self) -> bool:
        """Take what the analysis process said; True once it has listed its models."""
        self.runner.update()
        return self.runner.hello.protocol is not None

    def modelChoices(self) -> list[ModelChoice]:
        """What the model selector offers: the automatic choice, then each installed model."""
        return [
            ModelChoice(
                AUTOMATIC,
                AUTOMATIC_TITLE,
                "The input decides, as on the command line: points in a CT go to the model "
                "that judges a point, a radiograph (one slice) to the one that judges it whole.",
            )
        ] + [ModelChoice(model.id, model.title, model.input) for model in self.runner.hello.models]

    def chosenModel(self) -> str:
        """The model of the parameters, or ``AUTOMATIC`` while the engine has not listed it
        (it may be uninstalled, or the engine not started yet)."""
        model = self.parameters.model
        if model != AUTOMATIC and self.runner.hello.modelById(model) is None:
            return AUTOMATIC
        return model

    def pointNeeded(
        self, volumeNode: slicer.vtkMRMLVolumeNode | None, model: str | None = None
    ) -> bool:
        """Whether analysing ``volumeNode`` takes points (``model``: the chosen one by
        default): not for a model that judges a whole radiograph, nor, choosing automatically,
        for a 2D volume."""
        model = self.chosenModel() if model is None else model
        return needsPoint(volumeNode, model, self.runner.hello.models)

    def inputHint(self, volumeNode: slicer.vtkMRMLVolumeNode | None) -> str:
        """One sentence for the panel: what the selected volume needs before Analyze."""
        if volumeNode is None:
            return "Select a chest CT or a chest radiograph."
        if self.pointNeeded(volumeNode):
            return "Place a point on each nodule, then press Analyze."
        return "The whole image is judged: no point is needed; press Analyze."

    # -- results as DICOM (DicomResults) ------------------------------------------------------

    @property
    def dicomDatabase(self) -> DicomDatabase | None:
        """Where results saved as DICOM go: the one given, else Slicer's (None if not open)."""
        if self._dicomDatabase is not None:
            return self._dicomDatabase
        return slicerDicomDatabase()

    def dicomResultsProblem(self, volumeNode: slicer.vtkMRMLVolumeNode | None) -> str | None:
        """Why the selected volume's results cannot be saved as DICOM, in one sentence for the
        panel; None when they can (or nothing is selected)."""
        if volumeNode is None:
            return None
        try:
            dicomSeriesOf(volumeNode, self.dicomDatabase)
        except AnalysisError as error:
            return str(error)
        return None

    def saveDicomResults(self, outDir: Path, result: dict) -> list[Path]:
        """An answer's DICOM objects into the DICOM database; their paths as written."""
        return saveToDatabase(self.dicomDatabase, outDir, result)

    # -- running (TaskLogic) -------------------------------------------------------------------

    def startAnalysis(
        self,
        volumeNode: slicer.vtkMRMLScalarVolumeNode | None,
        points: list[PointSpec] | slicer.vtkMRMLMarkupsNode | None,
        model: str | None = None,
        saveDicom: bool | None = None,
    ) -> AnalysisTask:
        """Check the inputs and start; the returned task is advanced by ``poll``. ``model`` is
        the chosen one by default; a radiograph (or a model that takes no point) is analysed
        whole and ``points`` are not sent. ``saveDicom`` (the parameters' by default) also saves
        the results as DICOM into the DICOM database, from the volume's original series: a
        volume without one is refused before anything runs."""
        model = self.chosenModel() if model is None else model
        saveDicom = self.parameters.saveDicom if saveDicom is None else saveDicom
        targets = checkedInputs(volumeNode, points, self.pointNeeded(volumeNode, model))
        series = dicomSeriesOf(volumeNode, self.dicomDatabase) if saveDicom else None
        return AnalysisTask(self, volumeNode, targets, model, series)

    def analyze(
        self,
        volumeNode: slicer.vtkMRMLScalarVolumeNode | None,
        points: list[PointSpec] | slicer.vtkMRMLMarkupsNode | None,
        timeout: float | None = None,
        model: str | None = None,
        saveDicom: bool | None = None,
    ) -> AnalysisTask:
        """Start and wait: for scripts, tests and the self-test."""
        return self.startAnalysis(volumeNode, points, model, saveDicom).wait(timeout)

    def newResultDir(self) -> Path:
        return self.workDir / "results" / str(next(self._resultNumbers))

    def exportVolume(self, volumeNode: slicer.vtkMRMLScalarVolumeNode) -> Path:
        return self._export.export(volumeNode)

    def removeExport(self, path: Path) -> None:
        self._export.remove(path)

    # -- results into the scene (ResultImport, then Display) ----------------------------------

    def importResult(
        self, volumeNodeID: str, point: PointSpec, outDir: Path, result: dict
    ) -> dict[str, str]:
        """One answer into the scene, shown in the slice views; returns the nodes' IDs by role."""
        volumeNode = self.scene.GetNodeByID(volumeNodeID)
        if volumeNode is None:
            raise AnalysisError("The volume was removed from the scene during the analysis.")
        nodeIDs = self.results.importResult(volumeNode, point, outDir, result)
        heatmap = self.scene.GetNodeByID(nodeIDs[ROLE_HEATMAP])
        self.display.showResult(volumeNode, heatmap, point.ras)
        return nodeIDs

    def resultNodes(self, key: str | None = None, role: str | None = None) -> list:
        """Result nodes in the scene, of one analysis (``key``: volume, point, model) and/or
        one role."""
        return self.results.resultNodes(key, role)

    # -- display (Display) ---------------------------------------------------------------------

    def heatColorNode(self) -> slicer.vtkMRMLColorTableNode:
        return self.display.heatColorNode()

    def setHeatmapOpacity(self, opacity: float) -> None:
        self.display.setHeatmapOpacity(opacity, self.resultNodes(role=ROLE_HEATMAP))

    def setHeatmapThreshold(self, threshold: float) -> None:
        """Heat below ``threshold`` is transparent in the slice views."""
        self.display.setHeatmapThreshold(threshold, self.resultNodes(role=ROLE_HEATMAP))
