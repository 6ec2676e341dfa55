"""The module's logic: from a CT volume and points in the MRML scene to results in the scene,
speaking only MRML.

No Qt here, so the same logic runs inside 3D Slicer, against ``slicer-core`` in the tests and
behind a web viewer. ``MedCNNLogic`` is a small façade over the library's roles, one file each:

- ``TaskLogic``: inputs checked, the volume exported, points submitted to the runner one after
  another (``AnalysisTask``, advanced by ``poll``);
- ``ResultImport``: each answer into the scene as MRML nodes, all or nothing;
- ``Display``: how results look (heat colours, threshold, segment display, slice views);
- ``Runner``: the background process, which also tells the engine's stage titles and exit codes.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from pathlib import Path

import slicer

from .Display import ResultDisplay
from .Parameters import Parameters
from .ResultImport import ROLE_HEATMAP, ResultImporter
from .Runner import InferenceRunner, WorkerRunner
from .TaskLogic import (
    AnalysisError,
    AnalysisTask,
    PointOutcome,
    PointSpec,
    VolumeExport,
    checkedInputs,
    pointFromRAS,
    pointsFromMarkups,
)

__all__ = [
    "AnalysisError",
    "AnalysisTask",
    "MedCNNLogic",
    "PointOutcome",
    "PointSpec",
    "pointFromRAS",
    "pointsFromMarkups",
]


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
        self.display = ResultDisplay(self.scene, parameters or Parameters())
        self.results = ResultImporter(self.scene, self.display)
        self._ownsWorkDir = workDir is None
        self.workDir = Path(workDir or tempfile.mkdtemp(prefix="MedCNN-"))
        self._resultNumbers = itertools.count(1)
        self._export = VolumeExport(self.workDir / "input")

    @property
    def parameters(self) -> Parameters:
        """The user's display settings (the widget loads and saves them)."""
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

    # -- running (TaskLogic) -------------------------------------------------------------------

    def startAnalysis(
        self,
        volumeNode: slicer.vtkMRMLScalarVolumeNode | None,
        points: list[PointSpec] | slicer.vtkMRMLMarkupsNode | None,
    ) -> AnalysisTask:
        """Check the inputs and start; the returned task is advanced by ``poll``."""
        return AnalysisTask(self, volumeNode, checkedInputs(volumeNode, points))

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
        return self._export.export(volumeNode)

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
        """Result nodes in the scene, of one point (``key``) and/or one role."""
        return self.results.resultNodes(key, role)

    # -- display (Display) ---------------------------------------------------------------------

    def heatColorNode(self) -> slicer.vtkMRMLColorTableNode:
        return self.display.heatColorNode()

    def setHeatmapOpacity(self, opacity: float) -> None:
        self.display.setHeatmapOpacity(opacity, self.resultNodes(role=ROLE_HEATMAP))

    def setHeatmapThreshold(self, threshold: float) -> None:
        """Heat below ``threshold`` is transparent in the slice views."""
        self.display.setHeatmapThreshold(threshold, self.resultNodes(role=ROLE_HEATMAP))
