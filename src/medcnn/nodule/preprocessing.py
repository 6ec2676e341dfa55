"""The one definition of what the network sees, shared by training and inference.

The network looks at a cube of ``PatchSpec.size`` voxels of ``PatchSpec.spacing_mm`` around a
world point, with axes along R, A, S. The cube is sampled straight from the scan's own grid with
trilinear interpolation, touching only the few voxels around the point, so a 600-slice CT costs
no more than a cut-out. The same ``resample`` maps the network's outputs back onto the scan's grid.

The training volumes of interest end a few millimetres beyond each nodule, while a full scan goes
on. So the network sees only a "context box" around the nodule (a second input channel marks it):
in training the box is cut from the nodule's mask, in use from the network's own segmentation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from medcnn.tensors import to_array, to_tensor
from medcnn.volume import Volume, apply_affine

HU_AIR = -1000.0


@dataclass(frozen=True)
class PatchSpec:
    """Geometry and intensity window of the network's input.

    Channel 0 maps ``hu_min``..``hu_max`` to 0..1, the window the CNN sees (it clamps at 1), but
    keeps values up to ``measured_hu_max`` above 1: the nodule's measurements read calcium's
    real density from the same input, where the window alone would saturate it at 400 HU.

    No defaults: the numbers are the bundle's (``inference.json``'s ``preprocessing``, read by
    ``medcnn.bundle.load_patch_spec``), so that training, the network's measurements and a
    click cannot each keep a copy of their own.
    """

    size: int
    spacing_mm: float
    hu_min: float
    hu_max: float
    measured_hu_max: float
    box_margin_mm: float
    box_min_inplane_mm: float
    box_margin_z_mm: float

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.size, self.size, self.size)

    @property
    def hu_window(self) -> tuple[float, float]:
        """The HU that channel 0 maps to 0 and 1, which the network's measurements undo."""
        return (float(self.hu_min), float(self.hu_max))


@dataclass(frozen=True)
class Patch:
    """HU values sampled around a point, where the scan has them, and the patch's own geometry."""

    hu: np.ndarray
    coverage: np.ndarray
    affine: np.ndarray


def patch_affine(
    center_ras: np.ndarray, spec: PatchSpec, rotation: np.ndarray | None = None
) -> np.ndarray:
    """Patch index -> RAS: axes along ``rotation`` (default R, A, S), centred on the point."""
    rot = np.eye(3) if rotation is None else np.asarray(rotation, dtype=float)
    linear = rot * spec.spacing_mm
    half = (spec.size - 1) / 2.0
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = np.asarray(center_ras, dtype=float) - linear @ np.full(3, half)
    return affine


def resample(
    array: np.ndarray,
    affine: np.ndarray,
    out_shape: tuple[int, int, int],
    out_affine: np.ndarray,
    mode: str = "bilinear",
    fill: float = 0.0,
) -> np.ndarray:
    """Values of ``array`` (placed by ``affine``) at the voxel centres of another grid.

    Only the block of ``array`` that the output grid overlaps is read and converted, which is
    what keeps a click on a large scan as cheap as on a small one. Outside ``array`` the value is
    ``fill``; in the last half voxel at its border, linear interpolation blends towards it.
    """
    corners = np.array(
        [
            [a, b, c]
            for a in (0, out_shape[0] - 1)
            for b in (0, out_shape[1] - 1)
            for c in (0, out_shape[2] - 1)
        ],
        dtype=float,
    )
    to_source = np.linalg.inv(affine) @ out_affine
    corner_src = apply_affine(to_source, corners)
    lo = np.maximum(np.floor(corner_src.min(0)).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(corner_src.max(0)).astype(int) + 2, np.asarray(array.shape))
    if np.any(hi <= lo):
        return np.full(out_shape, fill, dtype=np.float32)
    block = np.asarray(array[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]], dtype=np.float32)
    # One voxel of ``fill`` around the block makes every axis at least 3 long and makes the
    # outside of the scan behave as ``fill`` for both interpolation modes.
    block = np.pad(block - fill, 1)
    values = F.grid_sample(
        to_tensor(block)[None, None],
        _sampling_grid(to_source, lo - 1, block.shape, out_shape),
        mode=mode,
        padding_mode="zeros",
        align_corners=True,
    )
    return to_array(values[0, 0]) + np.float32(fill)


def _sampling_grid(
    to_source: np.ndarray,
    origin: np.ndarray,
    source_shape: tuple[int, ...],
    out_shape: tuple[int, int, int],
) -> torch.Tensor:
    """``grid_sample``'s grid (1, *out_shape, 3): where each output voxel lies in the source
    block whose first voxel is ``origin``, in its [-1, 1] coordinates, last axis first.

    Built axis by axis from the affine's rows rather than from a table of every output index:
    the same numbers, seven times faster; a click resamples four times.
    """
    scale = 2.0 / (np.asarray(source_shape, dtype=float) - 1.0)
    linear = to_source[:3, :3] * scale[:, None]
    offset = (to_source[:3, 3] - origin) * scale - 1.0
    i, j, k = (np.arange(n, dtype=float) for n in out_shape)
    grid = np.empty((*out_shape, 3), dtype=np.float32)
    for axis in range(3):
        grid[..., 2 - axis] = (
            (linear[axis, 0] * i)[:, None, None]
            + (linear[axis, 1] * j)[None, :, None]
            + (linear[axis, 2] * k + offset[axis])[None, None, :]
        )
    return to_tensor(grid)[None]


def sample_patch(
    volume: Volume, center_ras: np.ndarray, spec: PatchSpec, rotation: np.ndarray | None = None
) -> Patch:
    """Cut the network's cube around a world point; ``coverage`` is 1 where the scan has data."""
    affine = patch_affine(center_ras, spec, rotation)
    hu = resample(volume.array, volume.affine, spec.shape, affine, fill=HU_AIR)
    ones = np.ones(volume.shape, dtype=np.float32) if volume.array.size < 4_000_000 else None
    if ones is None:
        coverage = _coverage_without_copy(volume, spec.shape, affine)
    else:
        coverage = resample(ones, volume.affine, spec.shape, affine, fill=0.0)
    return Patch(hu=hu, coverage=(coverage > 0.5).astype(np.float32), affine=affine)


def _coverage_without_copy(
    volume: Volume, shape: tuple[int, int, int], affine: np.ndarray
) -> np.ndarray:
    """Coverage for a large scan, computed from indices instead of a full-size array of ones."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    src = apply_affine(np.linalg.inv(volume.affine) @ affine, index)
    inside = np.all((src >= -0.5) & (src <= np.asarray(volume.shape) - 0.5), axis=1)
    return inside.reshape(shape).astype(np.float32)


def normalize_hu(hu: np.ndarray, spec: PatchSpec) -> np.ndarray:
    """HU window -> [0, 1] (above 1 up to ``measured_hu_max``); air is 0, so padding and masked
    context read as air."""
    clipped = np.clip(np.nan_to_num(hu, nan=spec.hu_min), spec.hu_min, spec.measured_hu_max)
    return ((clipped - spec.hu_min) / (spec.hu_max - spec.hu_min)).astype(np.float32)


def box_mask(shape: tuple[int, int, int], lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """1 inside the half-open index box [lo, hi), 0 elsewhere."""
    mask = np.zeros(shape, dtype=np.float32)
    lo = np.clip(np.floor(lo).astype(int), 0, np.asarray(shape))
    hi = np.clip(np.ceil(hi).astype(int), 0, np.asarray(shape))
    mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = 1.0
    return mask


def context_box(
    segmentation: np.ndarray | None, spec: PatchSpec, margin_mm: float | None = None
) -> np.ndarray:
    """The box around a nodule that the network may look at, in patch voxels.

    The nodule's bounding box plus a margin, and at least ``box_min_inplane_mm`` wide in the
    axial plane, as the training volumes of interest were cut. With no segmentation yet, the
    whole patch: the first pass finds the nodule's extent in full context.
    """
    margin = spec.box_margin_mm if margin_mm is None else margin_mm
    if segmentation is None or not np.any(segmentation > 0.5):
        return np.ones(spec.shape, dtype=np.float32)
    index = np.argwhere(segmentation > 0.5)
    lo, hi = index.min(0).astype(float), index.max(0).astype(float)
    pad = np.array([margin, margin, spec.box_margin_z_mm]) / spec.spacing_mm
    lo, hi = lo - pad, hi + 1 + pad
    half_min = spec.box_min_inplane_mm / spec.spacing_mm / 2.0
    mid = (lo + hi) / 2.0
    for axis in (0, 1):
        lo[axis] = min(lo[axis], mid[axis] - half_min)
        hi[axis] = max(hi[axis], mid[axis] + half_min)
    return box_mask(spec.shape, lo, hi)


def network_input(patch: Patch, valid: np.ndarray, spec: PatchSpec) -> np.ndarray:
    """The network's two channels: windowed HU inside the valid region, and that region."""
    valid = valid * patch.coverage
    return np.stack([normalize_hu(patch.hu, spec) * valid, valid]).astype(np.float32)


def scan_subgrid(
    volume: Volume, patch_affine_: np.ndarray, spec: PatchSpec
) -> tuple[tuple[int, int, int], np.ndarray]:
    """The block of the scan's own grid that the patch covers: its shape and affine.

    Results are written on this block, so each output voxel is one of the scan's voxels:
    they overlay exactly in any viewer, and files stay small for a large scan.
    """
    n = spec.size - 1
    corners = np.array([[a, b, c] for a in (0, n) for b in (0, n) for c in (0, n)], dtype=float)
    index = apply_affine(np.linalg.inv(volume.affine) @ patch_affine_, corners)
    lo = np.clip(np.floor(index.min(0)).astype(int), 0, np.asarray(volume.shape) - 1)
    hi = np.clip(np.ceil(index.max(0)).astype(int) + 1, 1, np.asarray(volume.shape))
    affine = volume.affine.copy()
    affine[:3, 3] = apply_affine(volume.affine, lo[None].astype(float))[0]
    return tuple(int(v) for v in hi - lo), affine  # type: ignore[return-value]


def patch_to_scan(
    values: np.ndarray, patch: Patch, volume: Volume, spec: PatchSpec, mode: str = "bilinear"
) -> Volume:
    """Map a patch-space map back onto the scan's own grid (the inverse of ``sample_patch``)."""
    shape, affine = scan_subgrid(volume, patch.affine, spec)
    return Volume(resample(values, patch.affine, shape, affine, mode=mode, fill=0.0), affine)
