"""Render the extension's screenshot from a real analysis in a real MRML scene.

3D Slicer cannot run on the build machines, but its MRML core can (``slicer-core``). This script
does what the module does on Analyze (lung1 loaded through a storage node, the point analysed by
the persistent worker, results imported as MRML nodes), then draws the three slice views from
those nodes with the display settings the module sets: the heat colour node above its
threshold at the module's opacity, the segment's colour as an outline, and the results table.
The picture says it is rendered from the scene, not captured from Slicer. Run from the
repository root::

    python MedCNNExtension/tools/render_screenshot.py ../shared/data/ct/lung1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
OUTPUT = REPO / "MedCNNExtension" / "Screenshots" / "MedCNN_overlay.png"
LUNG1_NODULE_RAS = (21.86, 120.54, -611.50)
FIELD_OF_VIEW_MM = 90.0

sys.path.insert(0, str(REPO / "MedCNNExtension" / "MedCNN"))
sys.path.insert(0, str(REPO / "tests" / "slicer"))


def colour_table(node) -> np.ndarray:  # noqa: ANN001 - an MRML colour node
    rgba = [0.0] * 4
    table = []
    for index in range(node.GetNumberOfColors()):
        node.GetColor(index, rgba)
        table.append(list(rgba))
    return np.array(table)


def on_ct_grid(node, volume, values: np.ndarray, fill: float) -> np.ndarray:  # noqa: ANN001
    """An overlay's voxels placed into an array the shape of the CT (same grid, offset)."""
    from slicer_scene_support import grid_indices, ijk_to_ras, world_points

    shape = volume.GetImageData().GetDimensions()
    full = np.full(shape, fill, dtype=float)
    origin = world_points(np.zeros((1, 3)), ijk_to_ras(node))
    offset = np.round(grid_indices(origin, volume)[0]).astype(int)
    low = np.maximum(offset, 0)
    high = np.minimum(offset + np.array(values.shape), shape)
    full[low[0] : high[0], low[1] : high[1], low[2] : high[2]] = values[
        low[0] - offset[0] : high[0] - offset[0],
        low[1] - offset[1] : high[1] - offset[1],
        low[2] - offset[2] : high[2] - offset[2],
    ]
    return full


def render(data: Path, output: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import slicer
    import vtk
    from MedCNNLib.AnalysisLogic import MedCNNLogic, pointFromRAS
    from slicer_scene_support import grid_indices, ijk_to_ras, load_volume, new_scene, voxel_array

    scene = new_scene()
    volume = load_volume(scene, data / "lung1_image.nrrd", "lung1")
    with tempfile.TemporaryDirectory() as work:
        logic = MedCNNLogic(scene, workDir=work)
        try:
            task = logic.analyze(volume, [pointFromRAS(LUNG1_NODULE_RAS, "N-1")], timeout=1800)
        finally:
            logic.cleanup()
    if task.failed:
        raise SystemExit(task.message)
    ids = task.outcomes[0].nodeIDs
    heatmap = scene.GetNodeByID(ids["heatmap"])
    segmentation = scene.GetNodeByID(ids["segmentation"])
    table = scene.GetNodeByID(ids["table"])
    display = heatmap.GetDisplayNode()
    lut = colour_table(scene.GetNodeByID(display.GetColorNodeID()))
    threshold, opacity = display.GetLowerThreshold(), logic.parameters.heatmapOpacity
    segment_id = segmentation.GetSegmentation().GetNthSegmentID(0)
    segment = segmentation.GetSegmentation().GetSegment(segment_id)
    labelmap = slicer.vtkOrientedImageData()
    segmentation.GetBinaryLabelmapRepresentation(segment_id, labelmap)
    label_node = slicer.vtkMRMLLabelMapVolumeNode()
    matrix = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(matrix)
    label_node.SetIJKToRASMatrix(matrix)  # the labelmap's own extent starts at its origin
    extent = labelmap.GetExtent()
    origin = world_points_of(matrix, [extent[0], extent[2], extent[4]])
    label_node.SetOrigin(*origin)

    ct = voxel_array(volume.GetImageData()).astype(float)
    heat = on_ct_grid(heatmap, volume, voxel_array(heatmap.GetImageData()), np.nan)
    seg = on_ct_grid(label_node, volume, voxel_array(labelmap), 0.0)
    centre = np.round(grid_indices(np.array([LUNG1_NODULE_RAS]), volume)[0]).astype(int)
    spacing = np.abs(np.diag(ijk_to_ras(volume))[:3])

    # radiological convention: patient right on the left, anterior and superior up
    views = (
        ("Axial", lambda a: a[:, :, centre[2]].T, (spacing[0], spacing[1])),
        ("Coronal", lambda a: a[:, centre[1], ::-1].T, (spacing[0], spacing[2])),
        ("Sagittal", lambda a: a[centre[0], :, ::-1].T, (spacing[1], spacing[2])),
    )
    figure = plt.figure(figsize=(11, 5.6), dpi=110, facecolor="#202020")
    for column, (name, cut, (dx, dy)) in enumerate(views):
        axis = figure.add_axes([0.01 + column * 0.33, 0.27, 0.31, 0.6])
        image, h, s = cut(ct), cut(heat), cut(seg)
        rows, cols = image.shape
        extent = (0, cols * dx, rows * dy, 0)
        axis.imshow(image, cmap="gray", vmin=-1350, vmax=150, extent=extent)
        visible = np.nan_to_num(h, nan=-1.0) >= threshold
        colours = lut[np.clip((np.nan_to_num(h) * 255).round().astype(int), 0, 255)]
        colours[..., 3] = np.where(visible, opacity, 0.0)
        axis.imshow(colours, extent=extent)
        if s.max() > 0:  # pixel centres as imshow places them
            x, y = (np.arange(cols) + 0.5) * dx, (np.arange(rows) + 0.5) * dy
            axis.contour(x, y, s, levels=[0.5], colors=[segment.GetColor()], linewidths=1.5)
        c = {"Axial": (centre[0] + 0.5, centre[1] + 0.5),
             "Coronal": (centre[0] + 0.5, rows - 0.5 - centre[2]),
             "Sagittal": (centre[1] + 0.5, rows - 0.5 - centre[2])}[name]  # fmt: skip
        c = (c[0] * dx, c[1] * dy)
        half = FIELD_OF_VIEW_MM / 2
        axis.set_xlim(c[0] - half, c[0] + half)
        axis.set_ylim(c[1] + half, c[1] - half)
        axis.set_xticks([])
        axis.set_yticks([])
        axis.set_title(name, color="white", fontsize=10)
    data_table = table.GetTable()

    def cell(column: str) -> str:
        value = data_table.GetColumnByName(column).GetValue(0)
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    header = ["Point", "Probability", "Label", "Uncertainty", "Diameter", "Volume"]
    units = {"Diameter": " mm", "Volume": " mL"}
    text_axis = figure.add_axes([0.03, 0.03, 0.94, 0.2])
    text_axis.axis("off")
    rendered = text_axis.table(
        cellText=[[cell(name) + units.get(name, "") for name in header]],
        colLabels=header,
        loc="center",
        cellLoc="center",
    )
    rendered.scale(1, 1.6)
    figure.text(
        0.5,
        0.95,
        "MedCNN results as MRML nodes: heatmap (heat colour map) over the CT, nodule segment "
        "outline, results table. Rendered from the scene; research use only.",
        ha="center",
        color="white",
        fontsize=9,
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, facecolor=figure.get_facecolor())
    plt.close(figure)
    return output


def world_points_of(matrix, ijk: list[int]) -> list[float]:  # noqa: ANN001 - vtkMatrix4x4
    point = matrix.MultiplyPoint([*map(float, ijk), 1.0])
    return list(point[:3])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lung1", type=Path, help="folder with lung1_image.nrrd")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    arguments = parser.parse_args()
    print(f"wrote {render(arguments.lung1, arguments.output)}")
