"""What every reader checks before it trusts a file: that it is a regular file it may read, and
that the grid its header describes is one a scan can have.

A named pipe, a device or ``/dev/stdin`` given as an image would block a reader forever (and
swallow a worker's next request), so only regular files are opened. A header may lie about its
geometry: a spacing of zero, a negative, infinite or absurd one, an origin of 1e300 mm, a
direction of zeros or a sheared grid would make the voxel-to-world mapping singular or wrong
far from the click. ``check_grid`` refuses every such affine in one sentence (exit code 7),
whatever format it came from; the readers call it on the affine they built, before using it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medcnn.errors import GeometryError, UnreadableImageError
from medcnn.volume import MAX_COORDINATE_MM

# Voxel spacings a scan or radiograph can have, in mm: a micro-CT's 10 um to a 100 mm slab.
MIN_SPACING_MM, MAX_SPACING_MM = 0.01, 100.0
# How far from perpendicular the grid's axes may be (the cosine of their angle), as the DICOM
# reader has always allowed for orientations written with few decimals.
ORTHOGONALITY_TOLERANCE = 1e-3


def check_regular_file(path: Path) -> None:
    """Refuse anything but a regular file we may read: a pipe, a device, a socket, or a file
    without read permission (said as such, not as a truncated file)."""
    try:
        status = path.stat()
    except OSError as error:
        raise UnreadableImageError(
            f"{path} cannot be read ({error.strerror}); check the path and its permissions."
        ) from error
    if not stat.S_ISREG(status.st_mode):
        raise UnreadableImageError(
            f"{path} is not a regular file (a pipe, device or socket); save the image to a file "
            "and give that file."
        )
    if not os.access(path, os.R_OK):
        raise UnreadableImageError(
            f"{path} cannot be read (permission denied); give yourself read permission on it "
            "or copy it somewhere you can read."
        )


def check_grid(
    affine: np.ndarray, name: str, axes: int = 3, spacing: Sequence[float] | None = None
) -> None:
    """Refuse an affine (voxel index to world mm) whose first ``axes`` columns are not a usable
    grid: non-finite, a spacing outside [MIN_SPACING_MM, MAX_SPACING_MM], axes that are not
    perpendicular, or an origin beyond ``MAX_COORDINATE_MM``. ``spacing``, the header's own
    numbers where it has them, must be in that range too (a negative one would mirror the
    image silently)."""
    if spacing is not None:
        check_spacing(spacing, name)
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise GeometryError(
            f"The geometry of {name} has missing or infinite numbers in its header, so its "
            "place in the patient is unknown; export or convert the image again."
        )
    columns = affine[:3, :axes]
    lengths = np.hypot.reduce(columns, axis=0)  # no overflow for a spacing of 1e300
    check_spacing(lengths, name)
    directions = columns / lengths
    cosines = np.abs(directions.T @ directions - np.eye(axes))
    if cosines.max() > ORTHOGONALITY_TOLERANCE:
        angle = float(np.degrees(np.arcsin(min(1.0, float(cosines.max())))))
        raise GeometryError(
            f"The voxel axes of {name} are not perpendicular (sheared by about {angle:.2g} "
            "degrees), so it is not a regular grid MedCNN can place; resample it to a regular "
            "grid (for example with dcm2niix or 3D Slicer) and give that file."
        )
    if np.abs(affine[:3, 3]).max() > MAX_COORDINATE_MM:
        raise GeometryError(
            f"The origin of {name} lies {np.abs(affine[:3, 3]).max():.3g} mm from the scanner's "
            f"centre, beyond {MAX_COORDINATE_MM:g} mm, so its geometry is corrupt; export or "
            "convert the image again."
        )


def check_spacing(spacing: Sequence[float] | np.ndarray, name: str) -> None:
    """Refuse voxel spacings outside [MIN_SPACING_MM, MAX_SPACING_MM] (NaN and negatives too)."""
    given = np.asarray(spacing, dtype=float)
    if not np.all((given >= MIN_SPACING_MM) & (given <= MAX_SPACING_MM)):
        shown = ", ".join(f"{s:.4g}" for s in given)
        raise GeometryError(
            f"The voxel spacings of {name} are {shown} mm; a spacing must lie between "
            f"{MIN_SPACING_MM:g} and {MAX_SPACING_MM:g} mm, so its geometry is corrupt: export "
            "or convert the image again with its true spacing."
        )


def check_stored_bytes(path: Path, promised: int, held: int) -> None:
    """Refuse a file that holds fewer bytes than its header promises: a click reads only the
    slab around its point, so a file cut after that slab would otherwise pass."""
    if held < promised:
        raise UnreadableImageError(
            f"{path} is truncated: its header promises {promised} bytes, the file holds "
            f"{held}; copy or convert it again."
        )
