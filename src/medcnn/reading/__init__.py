"""Read a CT scan from disk into a :class:`~medcnn.volume.Volume` in RAS millimetres and HU.

``read_scan`` is the engine's one way in. It accepts a DICOM series (a folder, searched
recursively; a DICOMDIR or the folder it indexes; or one file of the series), NIfTI (``.nii``,
``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``) and MetaImage (``.mha``, ``.mhd``). Each library does
what it does best: pydicom reads DICOM headers only, to choose the series and check its geometry;
SimpleITK (GDCM) decodes the chosen files' pixels, compressed or not, and applies
RescaleSlope/Intercept; nibabel reads NIfTI with the qform/sform it picks (already RAS);
SimpleITK reads NRRD and MHA, whose LPS geometry is converted here, once. The affine is always
``direction @ diag(spacing)`` plus the origin, so ``array[i, j, k]`` sits at
``affine @ (i, j, k, 1)``.

Series selection (DICOM). Candidates are series whose Modality is CT, whose SOP class is CT Image
Storage (so not SEG, RTSTRUCT, SR, secondary capture or enhanced multi-frame objects), that are not
localizers (ImageType without LOCALIZER) and that hold at least 3 images. With ``series_uid`` that
series is used, whatever else the folder holds. Otherwise the candidate with the most images wins;
a tie goes to the thinnest slice spacing; a tie on both is an error listing the candidates, so
the user passes the UID. Series without a SeriesInstanceUID (some anonymisers blank it) are told
apart by folder, series number and description. The choice is stated in
``metadata["series_choice"]``.

Geometry checks (DICOM), as dcm2niix and ITK make them: images at the same position are dropped
with a warning, keeping the lowest instance number; a series with the same number (more than one)
of images at every position is several phases in one series and refused; slices must share one
orientation and one size, step along their own normal (no gantry tilt or shear), have no gap
wider than 1.5 times the median spacing, and lie within max(0.1 mm, 1 % of the spacing) of a
regular grid.

Formats without a modality (NIfTI, NRRD, MHA) are accepted as CT unless their values cannot be
HU: only values in [0, 1] (a mask or probability map) or a few non-negative integers (a label
map). Voxels are int16 when the values fit exactly, else float32.

``metadata`` holds exactly: ``path``, ``format`` ("dicom", "nifti", "nrrd" or "mha"),
``modality`` ("CT" or None when the format does not say), ``series_instance_uid``,
``series_description``, ``series_choice`` (a sentence, or None), ``source_files`` (a DICOM
series' files in slice order, the whole series even when a slab is read, which ``--dicom``'s
results reference; None for other formats) and ``warnings`` (a list of sentences). Nothing else
leaves a DICOM header: no patient identifiers.

Reading around a point (``around=ScanRegion(...)``, what one click needs). A DICOM series is
still chosen and checked from the headers of all its files, exactly as above (a process keeps
the parsed headers of its last four folders while their files are unchanged), but only the
slices that a cube around the point reaches (plus two on each side, for interpolation) are
decoded; a NIfTI file of integers within the int16 range (which cannot hold NaN, infinite or
out-of-range voxels elsewhere) likewise reads only that slab of its last axis, the slowest in
the file (a compressed file is still decompressed up to the slab's end), and so does NRRD or
MetaImage of such integers: an uncompressed NRRD with its voxels after its header (what 3D
Slicer writes) is mapped straight from disk, other NRRD and MetaImage go through ITK's
streaming extraction (a compressed NRRD is still decompressed whole). The returned Volume
is the slab of whole slices, with its own affine, so every voxel sits where it sits in the
whole scan. Its ``metadata`` adds ``scan_shape`` (the whole scan's shape) and ``region``
(``{"first_slice": k0, "slices": n}`` along the last axis), and the value checks above (voxel
type, the warnings on values) see the slab's voxels. When the cube misses the scan, for files
of floats, with a scale slope or intercept (NIfTI) or not 3D (NRRD, MHA), the whole scan is
read, as without ``around``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from medcnn.errors import GeometryError, InputNotFoundError, UnreadableImageError, UsageError
from medcnn.reading.dicom import read_dicom, read_dicom_file, scan_folder
from medcnn.reading.image_files import format_of, lps_affine, read_itk_image, read_nifti
from medcnn.reading.region import ScanRegion
from medcnn.reading.trust import check_regular_file
from medcnn.reading.voxels import MAX_SCAN_BYTES_ENV, first_line
from medcnn.volume import LPS_TO_RAS, Volume

__all__ = [
    "MAX_SCAN_BYTES_ENV",
    "ScanRegion",
    "format_of",
    "read_label",
    "read_nifti_as_stored",
    "read_scan",
]


def read_scan(
    path: str | Path, series_uid: str | None = None, around: ScanRegion | None = None
) -> Volume:
    """Read a CT scan as a Volume in RAS mm and HU, refusing what the network must not see.

    With ``around``, a DICOM series is decoded only where the region reaches (see the module's
    documentation); the result is then a slab of the scan, in the scan's own world geometry.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise InputNotFoundError(f"{path} does not exist; check the path to the scan.")
    if path.is_dir():
        return read_dicom(path, scan_folder(path, recursive=True), series_uid, path, around=around)
    check_regular_file(path)  # a pipe or device would block the reader forever
    if path.name.upper() == "DICOMDIR":  # a CD or export's index: read the media it indexes
        return read_dicom(
            path.parent, scan_folder(path.parent, recursive=True), series_uid, path, around=around
        )
    image_format = format_of(path)
    if image_format is not None and series_uid is not None:
        raise UsageError(
            f"A series UID only selects among DICOM series, and {path.name} is a single "
            f"{image_format} image; leave the series UID out."
        )
    if image_format == "nifti":
        return read_nifti(path, around)
    if image_format in ("nrrd", "mha"):
        return read_itk_image(path, image_format, around)
    return read_dicom_file(path, series_uid, around)


def read_nifti_as_stored(path: str | Path) -> Volume:
    """A NIfTI file's array and affine exactly as stored, without the scan checks: for masks,
    and for the training set's own volumes, whose HU the dataset vouches for."""
    image: Any = nib.load(str(path))  # a NIfTI image; nibabel types it as any file
    return Volume(np.asarray(image.dataobj), image.affine.astype(float))


def read_label(path: str | Path) -> Volume:
    """A mask or label map on a scan's grid (NIfTI, NRRD or MetaImage) in RAS mm, its values
    as stored: no HU checks, since it is not a CT."""
    path = Path(path).expanduser()
    kind = format_of(path)
    if kind == "nifti":
        return read_nifti_as_stored(path)
    if kind not in ("nrrd", "mha"):
        raise UsageError(
            f"{path.name} is not a mask format MedCNN reads; give masks as NIfTI, NRRD or "
            "MetaImage files on the scan's grid."
        )
    try:
        image = sitk.ReadImage(str(path))
    except Exception as err:
        raise UnreadableImageError(
            f"{path} cannot be read as a mask ({first_line(err)}); the file is probably "
            "truncated or corrupt: copy or convert it again."
        ) from err
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise GeometryError(f"{path.name} is not a single 3D mask; MedCNN needs one value a voxel.")
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    return Volume(array, LPS_TO_RAS @ lps_affine(image))
