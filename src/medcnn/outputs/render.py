"""A picture of one analysis: the axial slice through the point, with the heatmap over it and
the segmentation's outline, drawn from the analysis's volumes in world coordinates, the way a
viewer overlays them (radiological convention: the patient's right on the image's left).

The analysis hands over the scan it read and the volumes it made, in memory; the picture is
drawn beside the other files as they are written (``outputs.writing``), so nothing is read
back from disk and a picture that fails leaves no files."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medcnn.nodule.preprocessing import resample
from medcnn.outputs.result import Result
from medcnn.volume import Volume

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# The picture's field of view around the point. It shows what the analysis read (whole axial
# slices of an axial scan); a part of the plane outside that slab is drawn as air.
OVERLAY_FOV_MM = 80.0


def axial_plane(
    volume: Volume,
    point_ras: np.ndarray,
    fov_mm: float,
    pixel_mm: float,
    mode: str = "bilinear",
    fill: float = 0.0,
) -> np.ndarray:
    """The axial plane through a point, rows toward posterior, columns toward the left."""
    n = int(round(fov_mm / pixel_mm))
    affine = np.eye(4)
    affine[:3, 0] = [0.0, -pixel_mm, 0.0]
    affine[:3, 1] = [-pixel_mm, 0.0, 0.0]
    affine[:3, 2] = [0.0, 0.0, 1.0]
    half = (n - 1) / 2 * pixel_mm
    affine[:3, 3] = np.asarray(point_ras) + np.array([half, half, 0.0])
    return resample(volume.array, volume.affine, (n, n, 1), affine, mode=mode, fill=fill)[:, :, 0]


def overlay_png(
    scan: Volume,
    heatmap: Volume,
    segmentation: Volume,
    point_ras: np.ndarray,
    path: Path,
    title: str = "",
    fov_mm: float = OVERLAY_FOV_MM,
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pixel = 0.25
    ct = axial_plane(scan, point_ras, fov_mm, pixel, fill=-1000.0)
    heat = axial_plane(heatmap, point_ras, fov_mm, pixel)
    seg = axial_plane(
        Volume(segmentation.array.astype(np.float32), segmentation.affine), point_ras, fov_mm, pixel
    )
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.3), dpi=110)
    extent = (-fov_mm / 2, fov_mm / 2, fov_mm / 2, -fov_mm / 2)
    for ax in axes:
        ax.imshow(ct, cmap="gray", vmin=-1000, vmax=400, extent=extent)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].set_title("CT (axial, lung window)", fontsize=9)
    axes[1].imshow(
        np.ma.masked_less(heat, 0.05), cmap="inferno", vmin=0, vmax=1, alpha=0.55, extent=extent
    )
    if seg.max() > 0.5:
        axes[1].contour(
            seg, levels=[0.5], colors=["cyan"], linewidths=1.2, extent=extent, origin="upper"
        )
    axes[1].set_title("heatmap (malignant class) and segmentation", fontsize=9)
    for ax in axes:
        ax.plot(0, 0, "+", color="lime", markersize=8)
        ax.text(-fov_mm / 2 + 2, fov_mm / 2 - 3, "R", color="white", fontsize=8)
        ax.text(fov_mm / 2 - 6, fov_mm / 2 - 3, "L", color="white", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def radiograph_overlay_png(pixels: np.ndarray, heatmap: np.ndarray, path: Path, title: str) -> Path:
    """A radiograph (rows, columns) beside itself with its heatmap over it, as displayed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, columns = pixels.shape
    low, high = np.percentile(pixels, [0.5, 99.5])
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.4 * rows / columns + 0.4), dpi=110)
    for ax in axes:
        ax.imshow(pixels, cmap="gray", vmin=low, vmax=max(high, low + 1e-6))
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].set_title("radiograph", fontsize=9)
    axes[1].imshow(np.ma.masked_less(heatmap, 0.05), cmap="inferno", vmin=0, vmax=1, alpha=0.5)
    axes[1].set_title("heatmap (pneumonia class)", fontsize=9)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def heatmap_png(heatmap: np.ndarray, path: Path) -> Path:
    """The heatmap (rows, columns), 0..1, as a grey 8-bit picture of the same size: for a PNG
    or JPEG input, a file any image tool lays over it pixel for pixel."""
    from PIL import Image

    grey = np.round(np.clip(heatmap, 0.0, 1.0) * 255).astype(np.uint8)
    Image.fromarray(grey).save(path, compress_level=1)
    return Path(path)


def overlay_title(result: Result) -> str:
    """The picture's title: the answer and, for a nodule, its measurements."""
    if result.findings is None:
        return f"P({result.label_positive}) {result.probability:.2f} +- {result.uncertainty:.2f}"
    nodule = result.nodule
    return (
        f"P(malignant) {result.probability:.2f} +- {result.uncertainty:.2f}, "
        f"{nodule.diameter_mm:.1f} mm, {nodule.volume_ml:.2f} mL"
    )


def save_figure(fig: Figure, path: Path) -> Path:
    """Lay the figure out, save it and free it, even when saving fails (a full disk)."""
    import matplotlib.pyplot as plt

    try:
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return Path(path)
