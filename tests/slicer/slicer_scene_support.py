"""Building real MRML scenes for the tests, as Slicer builds them (needs slicer-core)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import slicer
import vtk

SLICE_VIEWS = (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal"))


def new_scene() -> slicer.vtkMRMLScene:
    """A scene with the three slice views' nodes that Slicer's default layout creates."""
    scene = slicer.vtkMRMLScene()
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    for layout, orientation in SLICE_VIEWS:
        slice_node = scene.CreateNodeByClass("vtkMRMLSliceNode")  # with the default presets
        slice_node.SetLayoutName(layout)
        slice_node.SetName(layout)
        scene.AddNode(slice_node)
        slice_node.SetOrientation(orientation)
        slice_node.SetDimensions(256, 256, 1)
        slice_node.SetFieldOfView(250.0, 250.0, 1.0)
        composite = slicer.vtkMRMLSliceCompositeNode()
        composite.SetLayoutName(layout)
        scene.AddNode(composite)
    return scene


def load_volume(
    scene: slicer.vtkMRMLScene, files: Path | list[Path], name: str
) -> slicer.vtkMRMLScalarVolumeNode:
    """Read a scan through an archetype storage node: one file (NRRD, NIfTI), or the files of a
    DICOM series, which is the reader Slicer's DICOM scalar-volume plugin hands the sorted
    series to (slicer-core has MRML, not the DICOM database and its Qt browser)."""
    files = [files] if isinstance(files, Path) else sorted(files)
    volume = slicer.vtkMRMLScalarVolumeNode()
    volume.SetName(name)
    scene.AddNode(volume)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(files[0]))
    if len(files) > 1:
        storage.ResetFileNameList()
        for path in files:
            storage.AddFileName(str(path))
        storage.SetSingleFile(0)
    volume.SetAndObserveStorageNodeID(storage.GetID())
    assert storage.ReadData(volume), f"MRML could not read {files[0]}"
    display = slicer.vtkMRMLScalarVolumeDisplayNode()
    scene.AddNode(display)
    volume.SetAndObserveDisplayNodeID(display.GetID())
    return volume


def add_volume(
    scene: slicer.vtkMRMLScene, voxels: np.ndarray, matrix: np.ndarray, name: str
) -> slicer.vtkMRMLScalarVolumeNode:
    """A scalar volume of an (i, j, k) array placed by an IJK-to-RAS ``matrix``, with its display
    node, as Slicer holds a loaded one."""
    from vtk.util.numpy_support import numpy_to_vtk

    image = vtk.vtkImageData()
    image.SetDimensions(*voxels.shape)
    image.GetPointData().SetScalars(numpy_to_vtk(voxels.ravel(order="F"), deep=True))
    volume = slicer.vtkMRMLScalarVolumeNode()
    volume.SetName(name)
    ijk_to_ras_matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for column in range(4):
            ijk_to_ras_matrix.SetElement(row, column, float(matrix[row, column]))
    volume.SetIJKToRASMatrix(ijk_to_ras_matrix)
    volume.SetAndObserveImageData(image)
    scene.AddNode(volume)
    display = slicer.vtkMRMLScalarVolumeDisplayNode()
    scene.AddNode(display)
    volume.SetAndObserveDisplayNodeID(display.GetID())
    return volume


def load_labelmap(path: Path) -> slicer.vtkMRMLLabelMapVolumeNode:
    node = slicer.vtkMRMLLabelMapVolumeNode()
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    return node


def ijk_to_ras(node: slicer.vtkMRMLVolumeNode) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(i, j) for j in range(4)] for i in range(4)])


def voxel_array(image: vtk.vtkImageData) -> np.ndarray:
    """The voxels as an (i, j, k) array."""
    from vtk.util.numpy_support import vtk_to_numpy

    dims = image.GetDimensions()
    values = vtk_to_numpy(image.GetPointData().GetScalars())
    return values.reshape(dims[2], dims[1], dims[0]).transpose(2, 1, 0)


def world_points(ijk: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """World (RAS) positions of voxel indices ``(n, 3)`` under an IJK-to-RAS ``matrix``."""
    return (matrix @ np.c_[ijk, np.ones(len(ijk))].T).T[:, :3]


def segment_world_points(
    segmentation: slicer.vtkMRMLSegmentationNode, segment_id: str
) -> np.ndarray:
    """World positions of a segment's voxels, from its binary labelmap and that labelmap's own
    image-to-world matrix."""
    labelmap = slicer.vtkOrientedImageData()
    segmentation.GetBinaryLabelmapRepresentation(segment_id, labelmap)
    matrix = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(matrix)
    matrix = np.array([[matrix.GetElement(i, j) for j in range(4)] for i in range(4)])
    extent = labelmap.GetExtent()
    values = voxel_array(labelmap)
    ijk = np.argwhere(values > 0) + np.array(extent[0::2])
    return world_points(ijk, matrix)


def grid_indices(points: np.ndarray, node: slicer.vtkMRMLVolumeNode) -> np.ndarray:
    """Continuous voxel indices of world points in ``node``'s grid."""
    inverse = np.linalg.inv(ijk_to_ras(node))
    return (inverse @ np.c_[points, np.ones(len(points))].T).T[:, :3]
