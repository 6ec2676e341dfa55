"""Reading around a point: the cube one click needs, the slices of a scan it reaches, and the
slab of whole slices placed where it lies in the scan."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from medcnn.volume import Volume

REGION_MARGIN_SLICES = 2


@dataclass(frozen=True)
class ScanRegion:
    """The part of a scan one analysis needs: the cube of half-width ``half_width_mm`` around
    ``center_ras`` (axes along R, A, S)."""

    center_ras: np.ndarray
    half_width_mm: float

    def corners(self) -> np.ndarray:
        """The cube's eight corners in RAS mm, (8, 3)."""
        signs = np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)])
        return np.asarray(self.center_ras, dtype=float) + self.half_width_mm * signs


def slices_reached(around: ScanRegion | None, affine: np.ndarray, n_slices: int) -> tuple[int, int]:
    """The first slice and the number of slices that the region reaches, with the margin that
    interpolation reads; all slices without a region or when the region misses the scan."""
    if around is None:
        return 0, n_slices
    k = (np.linalg.inv(affine) @ np.c_[around.corners(), np.ones(8)].T)[2]
    first = max(math.floor(k.min()) - REGION_MARGIN_SLICES, 0)
    last = min(math.ceil(k.max()) + REGION_MARGIN_SLICES, n_slices - 1)
    if last < first:
        return 0, n_slices
    return first, last - first + 1


def volume_or_slab(
    array: np.ndarray, affine: np.ndarray, metadata: dict, first: int, shape: tuple[int, ...]
) -> Volume:
    """The Volume read: the whole scan, or the slab from slice ``first`` of a scan of ``shape``,
    placed by the scan's affine moved to that slice."""
    if array.shape[2] == shape[2]:
        return Volume(array, affine, metadata)
    slab_affine = affine.copy()
    slab_affine[:3, 3] = affine[:3, :3] @ np.array([0.0, 0.0, first]) + affine[:3, 3]
    metadata["scan_shape"] = [int(n) for n in shape]
    metadata["region"] = {"first_slice": first, "slices": int(array.shape[2])}
    return Volume(array, slab_affine, metadata)
