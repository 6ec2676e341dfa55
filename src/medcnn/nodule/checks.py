"""Whether a scan and a point can be analysed at all, checked before the network runs.

The reader (``medcnn.reading``) refuses what is not a CT volume; these rules refuse what would
give a confident but meaningless answer at one point. Each is cheap (the voxels' range and a
few voxels around the point) and each failure is one sentence with its exit code.

In order:

1. The point is three finite numbers (``UsageError``, 2).
2. The voxels are Hounsfield units. NaN or infinite values mean a corrupt scan
   (``UnreadableImageError``, 4). Values outside -32768..32767, the range every CT stores HU in,
   are not HU (``NotCTError``, 6). A chest CT always holds air or lung, so a scan whose lowest
   value is above -500 HU is not in HU: a missing rescale slope/intercept, raw detector values,
   an MR or a normalised image (``NotCTError``, 6; the reader only warns, since for a file
   without a modality it cannot know the scan is meant to be a chest CT).
3. The point lies inside the scan: within half a voxel of its voxel grid
   (``PointOutsideScanError``, 8).
4. The scan is at least 1.5 mm thick along each of its axes (``GeometryError``, 7). The
   thinnest training volumes are two 1.25 mm slices (2.5 mm); the limit sits below that so that
   a volume of interest of two 1 mm slices, which a test set may hold, is still judged, while
   slivers thinner than a small nodule's half-width are refused. One slice is already refused
   by the reader as a 2D image.
5. The point is not at the very edge of the scan: at least a third of the 6 mm cube around it
   (the smallest nodule LIDC-IDRI counts is 3 mm across) lies inside the scan
   (``PointOutsideScanError``, 8). A point on a face of the scan keeps about half of that cube
   and is analysed: the network marks what lies outside the scan as "no data", as it did for
   its training volumes, which end a few millimetres beyond each nodule (the thinnest keep
   40 %). A point in a corner keeps an eighth to a fifth and is refused, since a nodule there is
   mostly cut off.
6. There is tissue at the point: the densest voxel within 5 mm is at least -800 HU
   (``NoTissueAtPointError``, 12). Air outside the body, the trachea or a point mirrored by an
   LPS/RAS mix-up is refused; every nodule of the training set passes, including a 22 mm
   cavitating one whose centre is air (-921 HU within 3 mm, -537 HU within 5 mm); the faintest
   training nodule's densest voxel is -599 HU, so -800 HU leaves room for fainter ground glass.
   A point in lung with a vessel nearby passes, and the analysis then warns if no nodule is
   segmented.
"""

from __future__ import annotations

import numpy as np

from medcnn.errors import (
    GeometryError,
    NotCTError,
    NoTissueAtPointError,
    PointOutsideScanError,
    UnreadableImageError,
    UsageError,
)
from medcnn.volume import Volume

HU_STORAGE_RANGE = (-32768.0, 32767.0)
AIR_OR_LUNG_HU = -500.0
MIN_THICKNESS_MM = 1.5
CORE_HALF_MM = 3.0
CORE_STEP_MM = 0.25
MIN_CORE_INSIDE = 1.0 / 3.0
TISSUE_RADIUS_MM = 5.0
TISSUE_HU = -800.0


def check_scan_at_point(scan: Volume, point_ras: np.ndarray) -> None:
    """Raise the documented error if the scan or the point cannot give a meaningful answer."""
    point = np.asarray(point_ras, dtype=float).reshape(-1)
    if point.size != 3 or not np.all(np.isfinite(point)):
        raise UsageError(
            "The point must be three finite numbers in millimetres, e.g. --point 21.9 120.5 -611.5."
        )
    check_hounsfield_values(scan)
    where = f"The point {np.round(point, 1).tolist()} (RAS mm)"
    if not scan.contains(point):
        raise PointOutsideScanError(
            f"{where} lies outside the scan; place it on a nodule inside the image (use --lps if "
            "it is in LPS)."
        )
    check_thickness(scan)
    inside = core_inside_fraction(scan, point)
    if inside < MIN_CORE_INSIDE:
        raise PointOutsideScanError(
            f"{where} is at the very edge of the scan, where only {inside:.0%} of the "
            f"{2 * CORE_HALF_MM:g} mm around it lies inside, so a nodule there is cut off; place "
            "it on a nodule inside the scan, or give a scan that covers the whole nodule."
        )
    densest = densest_hu_near(scan, point, TISSUE_RADIUS_MM)
    if densest < TISSUE_HU:
        raise NoTissueAtPointError(
            f"{where} is in air or lung, not on a nodule: the densest voxel within "
            f"{TISSUE_RADIUS_MM:g} mm of it is {densest:.0f} HU, below {TISSUE_HU:g} HU; place it "
            "on the nodule (use --lps if it is in LPS)."
        )


def check_hounsfield_values(scan: Volume) -> None:
    """The voxels must be finite, within the HU storage range, and include air or lung."""
    low, high = float(np.min(scan.array)), float(np.max(scan.array))
    if not (np.isfinite(low) and np.isfinite(high)):
        raise UnreadableImageError(
            "The scan contains NaN or infinite voxels, so it is corrupt; export the scan again."
        )
    if low < HU_STORAGE_RANGE[0] or high > HU_STORAGE_RANGE[1]:
        raise NotCTError(
            f"The scan's values run from {low:g} to {high:g}, beyond the -32768 to 32767 that CT "
            "scanners store Hounsfield units in, so they are not HU; give the CT scan in "
            "Hounsfield units."
        )
    if low > AIR_OR_LUNG_HU:
        raise NotCTError(
            f"The scan's lowest value is {low:g}, but a chest CT in Hounsfield units always holds "
            f"air or lung below {AIR_OR_LUNG_HU:g} HU, so its values are not HU (a missing "
            "rescale slope and intercept, or not a CT); give the CT scan in Hounsfield units."
        )


def check_thickness(scan: Volume) -> None:
    """Refuse a slab thinner than the thinnest training volume along any of its axes."""
    extents = np.asarray(scan.shape) * scan.spacing
    axis = int(np.argmin(extents))
    if extents[axis] < MIN_THICKNESS_MM - 1e-3:
        n = scan.shape[axis]
        raise GeometryError(
            f"The scan is only {extents[axis]:.1f} mm thick ({n} slices of "
            f"{scan.spacing[axis]:.2f} mm), thinner than the {MIN_THICKNESS_MM:g} mm the network "
            "needs around a nodule; give the whole CT series."
        )


def core_inside_fraction(scan: Volume, point_ras: np.ndarray) -> float:
    """The share of the cube of +-``CORE_HALF_MM`` around the point that lies inside the scan."""
    steps = np.arange(-CORE_HALF_MM, CORE_HALF_MM + CORE_STEP_MM / 2, CORE_STEP_MM)
    offsets = np.stack(np.meshgrid(steps, steps, steps, indexing="ij"), -1).reshape(-1, 3)
    index = scan.world_to_index(np.asarray(point_ras, dtype=float) + offsets)
    upper = np.asarray(scan.shape) - 0.5
    return float(np.all((index >= -0.5) & (index <= upper), axis=1).mean())


def densest_hu_near(scan: Volume, point_ras: np.ndarray, radius_mm: float) -> float:
    """The highest value among the scan's voxels within ``radius_mm`` of a point inside it.

    The voxel nearest to the point always counts, so slices thicker than the radius still give
    an answer.
    """
    point = np.asarray(point_ras, dtype=float)
    centre = scan.world_to_index(point[None])[0]
    reach = radius_mm * np.linalg.norm(np.linalg.inv(scan.affine[:3, :3]), axis=1)
    shape = np.asarray(scan.shape)
    lo = np.clip(np.floor(centre - reach).astype(int), 0, shape - 1)
    hi = np.clip(np.ceil(centre + reach).astype(int) + 1, 1, shape)
    block = np.asarray(scan.array[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]], dtype=np.float32)
    index = np.stack(
        np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij"), -1
    )
    distance = np.linalg.norm(scan.index_to_world(index.reshape(-1, 3)) - point, axis=1)
    near = distance.reshape(block.shape) <= radius_mm
    nearest = tuple(np.clip(np.rint(centre).astype(int), lo, hi - 1) - lo)
    near[nearest] = True
    return float(block[near].max())
