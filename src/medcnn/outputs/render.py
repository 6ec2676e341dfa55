"""A picture of one analysis: the axial slice through the point, with the heatmap over it and
the segmentation's outline, drawn from the written files in world coordinates, the way a
viewer overlays them (radiological convention: the patient's right on the image's left)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from medcnn.nodule.preprocessing import resample
from medcnn.volume import Volume


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
    fov_mm: float = 80.0,
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
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def _nifti_volume(path: Path) -> Volume:
    image = nib.load(str(path))
    return Volume(np.asarray(image.dataobj), image.affine)


def overlay_from_outputs(
    image: Path | str, out_dir: Path | str, series_uid: str | None = None
) -> Path:
    """``overlay.png`` in ``out_dir`` from a finished analysis of ``image``."""
    from medcnn.reading import read_scan

    out_dir = Path(out_dir)
    result = json.loads((out_dir / "result.json").read_text())
    scan = read_scan(image, series_uid=series_uid)
    title = (
        f"P(malignant) {result['probability']:.2f} +- {result['uncertainty']:.2f}, "
        f"{result['diameter_mm']:.1f} mm, {result['volume_ml']:.2f} mL"
    )
    return overlay_png(
        scan,
        _nifti_volume(out_dir / "heatmap.nii.gz"),
        _nifti_volume(out_dir / "segmentation.nii.gz"),
        np.array(result["point"]["ras"]),
        out_dir / "overlay.png",
        title,
    )
