"""How MedCNN's results look in the scene: the heat colour map, the heatmap's window and
threshold, the nodule segment's 2D and 3D display, and the slice views showing the CT (or the
radiograph) under the heatmap, centred on the point (or on the radiograph). Speaks only MRML;
the user's choices are ``Parameters``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import slicer
import vtk

from .Parameters import Parameters

ATTRIBUTE = "MedCNN."  # the namespace of the node attributes MedCNN sets
HEAT_COLOR_SINGLETON_TAG = "MedCNNHeat"


def iterateCollection(collection: vtk.vtkCollection) -> Iterator[vtk.vtkObject]:
    for index in range(collection.GetNumberOfItems()):
        yield collection.GetItemAsObject(index)


def volumeCentre(volumeNode: slicer.vtkMRMLVolumeNode) -> tuple[float, float, float]:
    """The centre of a volume in world coordinates (its transform applied)."""
    bounds = [0.0] * 6
    volumeNode.GetRASBounds(bounds)
    return tuple((bounds[2 * axis] + bounds[2 * axis + 1]) / 2.0 for axis in range(3))


class ResultDisplay:
    """The display of result nodes in ``scene``, following ``parameters``."""

    def __init__(self, scene: slicer.vtkMRMLScene, parameters: Parameters) -> None:
        self.scene = scene
        self.parameters = parameters

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

    def addHeatmapDisplay(
        self, heatmap: slicer.vtkMRMLScalarVolumeNode
    ) -> slicer.vtkMRMLScalarVolumeDisplayNode:
        """A display node for a heatmap already in the scene: heat colours over 0..1, heat below
        the threshold transparent. Returned so that a failed import can remove it."""
        display = slicer.vtkMRMLScalarVolumeDisplayNode()
        self.scene.AddNode(display)
        heatmap.SetAndObserveDisplayNodeID(display.GetID())  # removed with the heatmap
        display.SetAndObserveColorNodeID(self.heatColorNode().GetID())
        display.SetAutoWindowLevel(0)
        display.SetWindowLevelMinMax(0.0, 1.0)
        display.SetAutoThreshold(0)
        display.SetThreshold(self.parameters.heatmapThreshold, 2.0)
        display.SetApplyThreshold(1)
        return display

    def styleSegmentation(self, segmentation: slicer.vtkMRMLSegmentationNode) -> None:
        """Filled and outlined in 2D, a closed surface in 3D when the user wants it."""
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

    def showResult(
        self,
        volumeNode: slicer.vtkMRMLVolumeNode,
        heatmapNode: slicer.vtkMRMLVolumeNode,
        pointWorld: tuple[float, float, float] | None,
    ) -> None:
        """The volume in the background, heatmap in the foreground of every slice view,
        centred on the point, or on the volume's centre for a whole radiograph (so the slice
        view in its plane cuts through its one slice)."""
        for composite in iterateCollection(self.scene.GetNodesByClass("vtkMRMLSliceCompositeNode")):
            composite.SetBackgroundVolumeID(volumeNode.GetID())
            composite.SetForegroundVolumeID(heatmapNode.GetID())
            composite.SetForegroundOpacity(self.parameters.heatmapOpacity)
        if self.parameters.centerViewsOnNodule:
            centre = pointWorld if pointWorld is not None else volumeCentre(volumeNode)
            slicer.vtkMRMLSliceNode.JumpAllSlices(
                self.scene, *centre, slicer.vtkMRMLSliceNode.CenteredJumpSlice
            )

    def setHeatmapOpacity(
        self, opacity: float, heatmaps: Iterable[slicer.vtkMRMLVolumeNode]
    ) -> None:
        """The opacity of ``heatmaps`` where slice views show them in the foreground."""
        self.parameters.heatmapOpacity = min(max(float(opacity), 0.0), 1.0)
        heatmapIDs = {node.GetID() for node in heatmaps}
        for composite in iterateCollection(self.scene.GetNodesByClass("vtkMRMLSliceCompositeNode")):
            if composite.GetForegroundVolumeID() in heatmapIDs:
                composite.SetForegroundOpacity(self.parameters.heatmapOpacity)

    def setHeatmapThreshold(
        self, threshold: float, heatmaps: Iterable[slicer.vtkMRMLVolumeNode]
    ) -> None:
        """Heat below ``threshold`` is transparent in the slice views."""
        self.parameters.heatmapThreshold = min(max(float(threshold), 0.0), 1.0)
        for node in heatmaps:
            display = node.GetDisplayNode()
            if display is not None:
                display.SetThreshold(self.parameters.heatmapThreshold, 2.0)
                display.SetApplyThreshold(1)
