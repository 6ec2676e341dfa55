"""A voxel array that never travels without its place in the patient.

World coordinates are RAS millimetres (the convention of NIfTI and 3D Slicer). The affine maps
voxel indices (i, j, k), in the array's own axis order, to RAS. Readers of LPS formats (DICOM,
NRRD, MHA through ITK) convert once, at the edge, so nothing downstream has to care.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class Volume:
    """A 3D scalar image: ``array[i, j, k]`` sits at ``affine @ (i, j, k, 1)`` in RAS mm."""

    array: np.ndarray
    affine: np.ndarray
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"a Volume is 3D, got an array of shape {self.array.shape}")
        if self.affine.shape != (4, 4):
            raise ValueError("a Volume's affine is 4x4")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size along i, j, k in millimetres."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    def world_to_index(self, points_ras: np.ndarray) -> np.ndarray:
        """Continuous voxel indices of RAS points (N, 3)."""
        return apply_affine(np.linalg.inv(self.affine), points_ras)

    def index_to_world(self, indices: np.ndarray) -> np.ndarray:
        return apply_affine(self.affine, indices)

    def block_slices(self, block: Volume) -> tuple[slice, slice, slice]:
        """The slices of this array that ``block``, a block of the same grid (as
        ``preprocessing.scan_subgrid`` makes), covers."""
        origin = np.round(self.world_to_index(block.affine[None, :3, 3])[0]).astype(int)
        return tuple(slice(o, o + n) for o, n in zip(origin, block.shape, strict=True))  # type: ignore[return-value]

    def contains(self, point_ras: np.ndarray, margin_voxels: float = 0.5) -> bool:
        """Whether a RAS point lies within the scan's voxel grid (voxel centres +- half a voxel)."""
        index = self.world_to_index(np.asarray(point_ras, dtype=float)[None])[0]
        upper = np.asarray(self.shape) - 1 + margin_voxels
        return bool(np.all(index >= -margin_voxels) and np.all(index <= upper))


def apply_affine(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 affine to points of shape (..., 3)."""
    points = np.asarray(points, dtype=float)
    return points @ affine[:3, :3].T + affine[:3, 3]


# The farthest a point or an image's origin may lie from the scanner's centre, in mm: far beyond
# any scanner's field (100 m), yet small enough that no arithmetic on it overflows.
MAX_COORDINATE_MM = 100_000.0


def ras_point(point: np.ndarray | list[float], lps: bool = False) -> np.ndarray:
    """A user's point as RAS; ``lps=True`` when it was given in DICOM/ITK's LPS convention."""
    p = np.asarray(point, dtype=float).reshape(3)
    return p * np.array([-1.0, -1.0, 1.0]) if lps else p
