"""MedCNN for 3D Slicer: click on a lung nodule, press Analyze, see its segmentation, a heatmap
and the malignancy probability with its uncertainty; or select a chest radiograph (no point) and
see the probability of pneumonia with a heatmap over it. Thin on purpose: the description, a
widget that builds ``MedCNNLib.Widget``, and the self-test; the work is done in ``MedCNNLib``."""

from __future__ import annotations

import importlib
import time
from typing import TYPE_CHECKING

import numpy as np
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

if TYPE_CHECKING:
    import qt
    from MedCNNLib.AnalysisLogic import AnalysisTask, MedCNNLogic, PointSpec

LIB_MODULES = (
    "Parameters",
    "Runner",
    "InstallLogic",
    "TaskLogic",
    "Display",
    "ResultImport",
    "AnalysisLogic",
    "Widget",
)


class MedCNN(ScriptedLoadableModule):
    def __init__(self, parent: qt.QWidget) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedCNN")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
        self.parent.dependencies = []
        self.parent.contributors = ["MedCNN contributors"]
        self.parent.helpText = _(
            "Judges a lung nodule at a point you place on a chest CT: a trained 3D CNN ensemble "
            "gives the probability that the nodule is malignant with its uncertainty, segments "
            "the nodule (diameter and volume) and shows a class-activation heatmap over the "
            "slices. Select the CT, place one point on each nodule, press Analyze. A frontal "
            "chest radiograph (a volume of one slice) needs no point: select it and press "
            "Analyze for the probability of pneumonia and a heatmap over the radiograph. The "
            "Model selector lists the installed models; Automatic lets the image decide. The "
            "analysis runs in a background process on this computer; no image leaves it."
            "<br><br>"
            "<b>Research use only. Not a medical device and not for clinical use or "
            "diagnosis.</b><br><br>"
            'See the <a href="https://github.com/medcnn/medcnn#for-radiologists-3d-slicer">documentation</a>.'
        )
        self.parent.acknowledgementText = _(
            "The lung nodule model was trained on nodules of the LIDC-IDRI collection: Armato "
            "III SG et al., The Lung Image Database Consortium (LIDC) and Image Database Resource "
            "Initiative (IDRI), Medical Physics 38(2), 2011; data from The Cancer Imaging "
            "Archive, doi:10.7937/K9/TCIA.2015.LO9QL9SX, licence CC BY 3.0. The chest X-ray "
            "model was trained on Kermany DS et al.'s pediatric radiographs (Cell 172(5), 2018; "
            "Mendeley Data, CC BY 4.0) and NIH Clinical Center ChestX-ray14 (Wang X et al., CVPR "
            "2017). Built with MONAI and PyTorch; the PyTorch extension (SlicerPyTorch) installs "
            "PyTorch."
        )


class MedCNNWidget(ScriptedLoadableModuleWidget):
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        from MedCNNLib.Widget import Widget

        self.widget = Widget()
        self.logic = self.widget.logic
        self.layout.addWidget(self.widget)

    def cleanup(self) -> None:
        widget = getattr(self, "widget", None)
        if widget is not None:
            widget.cleanup()

    def onReload(self) -> None:
        """Reload the library too, in dependency order, so edits take effect (Slicer's reload
        then cleans up this widget and builds a new one)."""
        for name in LIB_MODULES:
            module = importlib.import_module(f"MedCNNLib.{name}")
            importlib.reload(module)
        importlib.reload(importlib.import_module("MedCNNLib"))
        ScriptedLoadableModuleWidget.onReload(self)


class MedCNNTest(ScriptedLoadableModuleTest):
    """End to end inside Slicer, on a synthetic chest CT the test generates (no download)."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_AnalyzeSyntheticNodule()

    def test_AnalyzeSyntheticNodule(self) -> None:
        from MedCNNLib.AnalysisLogic import MedCNNLogic, pointFromRAS
        from MedCNNLib.InstallLogic import InstallLogic

        plan = InstallLogic.forSlicer(confirm=lambda question: False).plan()
        if not plan.empty:
            self.delayDisplay(f"Skipped: install {plan.describe()} first (press Analyze once).")
            return

        self.delayDisplay("Generating a synthetic chest CT with one nodule")
        volume, noduleRAS = self.syntheticChestCT()
        logic = MedCNNLogic(slicer.mrmlScene)
        try:
            self.delayDisplay("Analysing (the first run starts the analysis process)")
            task = self.runAndPump(logic, volume, [pointFromRAS(noduleRAS, "Synthetic")])
            self.assertEqual(task.failed, [], task.message)
            nodeIDs = task.succeeded[0].nodeIDs
            heatmap = slicer.mrmlScene.GetNodeByID(nodeIDs["heatmap"])
            segmentation = slicer.mrmlScene.GetNodeByID(nodeIDs["segmentation"])
            table = slicer.mrmlScene.GetNodeByID(nodeIDs["table"])
            self.assertEqual(
                heatmap.GetDisplayNode().GetColorNodeID(), logic.heatColorNode().GetID()
            )
            self.assertOnSourceGrid(volume, heatmap)
            self.assertEqual(segmentation.GetSegmentation().GetNumberOfSegments(), 1)
            self.assertEqual(table.GetNumberOfRows(), 1)
            self.assertTrue(heatmap.GetAttribute("MedCNN.WeightsSHA256"))

            nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
            self.runAndPump(logic, volume, [pointFromRAS(noduleRAS, "Synthetic")])
            self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)  # replaced

            outside = pointFromRAS((noduleRAS[0] + 5000.0, noduleRAS[1], noduleRAS[2]))
            task = self.runAndPump(logic, volume, [outside])
            self.assertEqual(len(task.failed), 1)
            self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)  # nothing half-made
            self.delayDisplay("Test passed")
        finally:
            logic.cleanup()

    @staticmethod
    def runAndPump(
        logic: MedCNNLogic,
        volume: slicer.vtkMRMLScalarVolumeNode,
        points: list[PointSpec],
        timeout: float = 900.0,
    ) -> AnalysisTask:
        """Poll as the widget's timer does, keeping Slicer responsive."""
        task = logic.startAnalysis(volume, points)
        deadline = time.monotonic() + timeout
        while not task.poll():
            slicer.app.processEvents()
            if time.monotonic() > deadline:
                task.cancel()
                raise AssertionError("the analysis took too long")
            time.sleep(0.05)
        return task

    @staticmethod
    def syntheticChestCT() -> tuple[slicer.vtkMRMLScalarVolumeNode, tuple[float, float, float]]:
        """A body of soft tissue, two lungs of air with noise, and a 12 mm solid nodule."""
        shape = (72, 192, 192)  # k, j, i
        spacing = np.array([0.8, 0.8, 1.5])
        rng = np.random.default_rng(7)
        k, j, i = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
        x, y, z = (i - 96) * spacing[0], (j - 96) * spacing[1], (k - 36) * spacing[2]
        ct = np.full(shape, -1000.0)
        ct[(x / 72.0) ** 2 + (y / 60.0) ** 2 <= 1.0] = 40.0
        for side in (-1.0, 1.0):
            ct[((x - side * 34.0) / 26.0) ** 2 + (y / 40.0) ** 2 + (z / 60.0) ** 2 <= 1.0] = -850.0
        nodule = np.array([-34.0 + 4.0, 6.0, 3.0])
        ct[(x - nodule[0]) ** 2 + (y - nodule[1]) ** 2 + (z - nodule[2]) ** 2 <= 6.0**2] = 30.0
        ct += rng.normal(0.0, 20.0, shape)
        ijkToRAS = np.diag([spacing[0], spacing[1], spacing[2], 1.0])
        ijkToRAS[:3, 3] = [-96 * spacing[0], -96 * spacing[1], -36 * spacing[2]]
        volume = slicer.util.addVolumeFromArray(
            ct.astype(np.int16), ijkToRAS=ijkToRAS, name="MedCNN synthetic chest CT"
        )
        return volume, tuple(float(v) for v in nodule)

    def assertOnSourceGrid(
        self, source: slicer.vtkMRMLVolumeNode, overlay: slicer.vtkMRMLVolumeNode
    ) -> None:
        """Every overlay voxel centre is a source voxel centre: same axes, integer offset."""
        sourceMatrix = slicer.util.arrayFromVTKMatrix(self.ijkToRAS(source))
        overlayMatrix = slicer.util.arrayFromVTKMatrix(self.ijkToRAS(overlay))
        np.testing.assert_allclose(overlayMatrix[:3, :3], sourceMatrix[:3, :3], atol=1e-4)
        offset = np.linalg.solve(sourceMatrix, overlayMatrix[:, 3])[:3]
        np.testing.assert_allclose(offset, np.round(offset), atol=1e-3)

    @staticmethod
    def ijkToRAS(volume: slicer.vtkMRMLVolumeNode) -> vtk.vtkMatrix4x4:
        matrix = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(matrix)
        return matrix
