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
``series_description``, ``series_choice`` (a sentence, or None) and ``warnings`` (a list of
sentences). Nothing else leaves a DICOM header: no patient identifiers.

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

import math
import os
import stat
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial
from pydicom.tag import BaseTag, Tag

from medcnn.errors import (
    GeometryError,
    InputNotFoundError,
    MedCNNError,
    NotCTError,
    ResourceLimitError,
    SeriesSelectionError,
    UnreadableImageError,
    UsageError,
)
from medcnn.volume import LPS_TO_RAS, Volume

MAX_SCAN_BYTES_ENV = "MEDCNN_MAX_SCAN_BYTES"
DEFAULT_MAX_SCAN_BYTES = 3 * 1024**3

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_STORAGE = {"1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2"}
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
MIN_SERIES_SLICES = 3

SAME_POSITION_MM = 0.01
GAP_FACTOR = 1.5
GRID_TOLERANCE_MM = 0.1
GRID_TOLERANCE_FRACTION = 0.01
TILT_TOLERANCE_MM = 0.1
ORIENTATION_TOLERANCE = 1e-4
SPACING_TIE_MM = 1e-3

_SUFFIX_FORMATS = {
    ".nii": "nifti",
    ".nii.gz": "nifti",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
    ".mha": "mha",
    ".mhd": "mha",
}
_HEADER_TAGS = [
    "SOPClassUID",
    "Modality",
    "SeriesInstanceUID",
    "SeriesNumber",
    "SeriesDescription",
    "ImageType",
    "InstanceNumber",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
    "RescaleSlope",
    "RescaleIntercept",
]
# Every tag above is in a group up to 0x0028; parsing stops there, before the large private
# groups some scanners write between the image tags and the pixels.
_HEADER_TAG_LIST = [Tag(name) for name in _HEADER_TAGS]
_LAST_HEADER_GROUP = max(tag.group for tag in _HEADER_TAG_LIST)
REGION_MARGIN_SLICES = 2
_SLAB_DTYPES = {np.dtype(t) for t in ("int8", "uint8", "<i2", ">i2")}
_SLAB_PIXEL_IDS = {sitk.sitkInt8, sitk.sitkUInt8, sitk.sitkInt16}
_NRRD_PIXEL_DTYPES = {sitk.sitkInt8: "i1", sitk.sitkUInt8: "u1", sitk.sitkInt16: "i2"}
_NRRD_HEADER_LIMIT = 1 << 16
# Fields that put the voxels elsewhere than right after the header.
_NRRD_DETACHED_OR_SKIPPED = {
    "data file",
    "datafile",
    "line skip",
    "lineskip",
    "byte skip",
    "byteskip",
}
_MODALITY_NAMES = {
    "MR": "an MR image",
    "PT": "a PET image",
    "SEG": "a segmentation (SEG)",
    "RTSTRUCT": "a radiotherapy structure set (RTSTRUCT)",
    "SR": "a structured report (SR)",
    "OT": "an 'other' (OT) object",
    "CR": "a radiograph",
    "DX": "a radiograph",
    "US": "an ultrasound image",
}


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
        return _read_dicom(
            path, _scan_folder(path, recursive=True), series_uid, path, around=around
        )
    if path.name.upper() == "DICOMDIR":  # a CD or export's index: read the media it indexes
        return _read_dicom(
            path.parent, _scan_folder(path.parent, recursive=True), series_uid, path, around=around
        )
    image_format = format_of(path)
    if image_format is not None and series_uid is not None:
        raise UsageError(
            f"A series UID only selects among DICOM series, and {path.name} is a single "
            f"{image_format} image; leave the series UID out."
        )
    if image_format == "nifti":
        return _read_nifti(path, around)
    if image_format in ("nrrd", "mha"):
        return _read_itk_image(path, image_format, around)
    return _read_dicom_file(path, series_uid, around)


def read_nifti_as_stored(path: str | Path) -> Volume:
    """A NIfTI file's array and affine exactly as stored, without the scan checks: for masks,
    and for the training set's own volumes, whose HU the dataset vouches for."""
    image = nib.load(str(path))
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
            f"{path} cannot be read as a mask ({_first_line(err)}); the file is probably "
            "truncated or corrupt: copy or convert it again."
        ) from err
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise GeometryError(f"{path.name} is not a single 3D mask; MedCNN needs one value a voxel.")
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    return Volume(array, LPS_TO_RAS @ _lps_affine(image))


# --- DICOM: headers, series choice, geometry -------------------------------------------------


@dataclass(frozen=True)
class _SliceHeader:
    """The few tags of one DICOM file that choose a series and place its slice."""

    path: Path
    series_key: str
    series_uid: str | None
    series_description: str | None
    modality: str | None
    sop_class_uid: str
    is_localizer: bool
    instance_number: int
    position: np.ndarray | None
    orientation: np.ndarray | None
    pixel_spacing: tuple[float, float] | None
    size: tuple[int, int]
    rescale: tuple[float, float]


@dataclass(frozen=True)
class _Series:
    key: str
    slices: list[_SliceHeader]

    @property
    def first(self) -> _SliceHeader:
        return self.slices[0]

    @property
    def label(self) -> str:
        """How the series is named to the user: its UID, description and size."""
        uid = self.first.series_uid or "(no SeriesInstanceUID)"
        description = self.first.series_description or "no description"
        spacing = _slice_spacing_estimate(self.slices)
        apart = f", {spacing:.2f} mm apart" if np.isfinite(spacing) else ""
        return f"{uid} ('{description}', {_count(len(self.slices), 'image')}{apart})"


@dataclass(frozen=True)
class _FolderScan:
    series: list[_Series]
    unreadable_files: int


# A worker answers many clicks on one series (a radiologist's several nodules, an archive's rows
# of one patient): the headers of a folder whose files are unchanged (the same paths, inodes,
# sizes, modification and change times) are parsed once. Any difference reads them all again.
# A folder with a file changed in the last seconds is not kept: file times are only as fine as
# the kernel's clock tick, so a file rewritten at once could look unchanged (git's "racy" case).
_FOLDER_SCANS: OrderedDict[tuple[Path, bool], tuple[tuple, _FolderScan]] = OrderedDict()
FOLDER_SCANS_KEPT = 4
SETTLED_AFTER_S = 2.0


def _scan_folder(folder: Path, recursive: bool) -> _FolderScan:
    """The headers of every DICOM file in a folder, grouped by series (parsed once while the
    folder's files are unchanged)."""
    files, fingerprint = [], []
    for path in sorted(folder.rglob("*") if recursive else folder.iterdir()):
        try:
            status = path.stat()
        except OSError:  # a broken link, or a file removed meanwhile
            continue
        if stat.S_ISREG(status.st_mode) and path.name.upper() != "DICOMDIR":
            files.append(path)
            times = (status.st_mtime_ns, status.st_ctime_ns)
            fingerprint.append((path, status.st_ino, status.st_size, *times))
    key = (folder.resolve(), recursive)
    known = _FOLDER_SCANS.get(key)
    if known is not None and known[0] == tuple(fingerprint):
        _FOLDER_SCANS.move_to_end(key)
        return known[1]
    scan = _read_slice_headers(files)
    newest = max((max(f[3], f[4]) for f in fingerprint), default=0)
    if newest < time.time_ns() - SETTLED_AFTER_S * 1e9:
        _FOLDER_SCANS[key] = (tuple(fingerprint), scan)
        _FOLDER_SCANS.move_to_end(key)
        while len(_FOLDER_SCANS) > FOLDER_SCANS_KEPT:
            _FOLDER_SCANS.popitem(last=False)
    return scan


def _read_slice_headers(files: list[Path]) -> _FolderScan:
    groups: dict[str, list[_SliceHeader]] = {}
    unreadable = 0
    for file in files:
        try:
            header = _read_slice_header(file)
        except UnreadableImageError:
            unreadable += 1
            continue
        if header is not None:
            groups.setdefault(header.series_key, []).append(header)
    return _FolderScan([_Series(k, v) for k, v in groups.items()], unreadable)


def _read_slice_header(path: Path) -> _SliceHeader | None:
    """The slice's header, or None when the file is not DICOM at all."""
    try:
        with open(path, "rb") as handle:
            ds = read_partial(handle, stop_when=_past_header_tags, specific_tags=_HEADER_TAG_LIST)
    except InvalidDicomError:
        return None
    except Exception as err:
        raise UnreadableImageError(
            f"{path} looks like DICOM but its header cannot be read ({err}); the file is "
            "probably truncated or corrupt: copy it again from the archive."
        ) from err
    meta = getattr(ds, "file_meta", None)
    sop_class = str(_tag(ds, "SOPClassUID") or _tag(meta, "MediaStorageSOPClassUID") or "")
    if sop_class == MEDIA_STORAGE_DIRECTORY:
        return None
    uid = str(_tag(ds, "SeriesInstanceUID") or "").strip() or None
    description = str(_tag(ds, "SeriesDescription") or "").strip() or None
    modality = str(_tag(ds, "Modality") or "").strip().upper() or None
    key = uid or f"{path.parent}|{_tag(ds, 'SeriesNumber')}|{description}|{modality}"
    image_type = _tag(ds, "ImageType") or []
    image_type = [image_type] if isinstance(image_type, str) else list(image_type)
    spacing = _floats(_tag(ds, "PixelSpacing"), 2)
    return _SliceHeader(
        path=path,
        series_key=key,
        series_uid=uid,
        series_description=description,
        modality=modality,
        sop_class_uid=sop_class,
        is_localizer=any(str(t).strip().upper() == "LOCALIZER" for t in image_type),
        instance_number=_int_or(_tag(ds, "InstanceNumber"), 0),
        position=_floats(_tag(ds, "ImagePositionPatient"), 3),
        orientation=_floats(_tag(ds, "ImageOrientationPatient"), 6),
        pixel_spacing=None if spacing is None else (float(spacing[0]), float(spacing[1])),
        size=(_int_or(_tag(ds, "Rows"), 0), _int_or(_tag(ds, "Columns"), 0)),
        rescale=(
            _float_or(_tag(ds, "RescaleSlope"), 1.0),
            _float_or(_tag(ds, "RescaleIntercept"), 0.0),
        ),
    )


def _past_header_tags(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag.group > _LAST_HEADER_GROUP


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _tag(ds: object, name: str) -> object:
    """A tag's value, or None when absent or malformed (archives hold both)."""
    try:
        return None if ds is None else ds.get(name)  # type: ignore[attr-defined]
    except Exception:
        return None


def _floats(value: object, count: int) -> np.ndarray | None:
    try:
        numbers = np.array([float(v) for v in value], dtype=float)  # type: ignore[attr-defined]
    except Exception:
        return None
    return numbers if numbers.shape == (count,) and np.all(np.isfinite(numbers)) else None


def _int_or(value: object, default: int) -> int:
    try:
        return int(value)  # type: ignore[call-overload]
    except Exception:
        return default


def _float_or(value: object, default: float) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except Exception:
        return default


def _read_dicom_file(path: Path, series_uid: str | None, around: ScanRegion | None) -> Volume:
    """One file of a series: read the whole series it belongs to, from its folder."""
    header = _read_slice_header(path)
    if header is None:
        raise UnreadableImageError(
            f"{path} is not an image MedCNN can read; give a DICOM series, a NIfTI (.nii, "
            ".nii.gz), NRRD (.nrrd, .nhdr) or MetaImage (.mha, .mhd) file."
        )
    if header.modality != "CT":
        raise NotCTError(f"{path.name} is {_what_modality(header.modality)}, not a CT; {_CT_ONLY}")
    if series_uid is not None and series_uid != header.series_uid:
        raise SeriesSelectionError(
            f"{path.name} belongs to series {header.series_uid}, not {series_uid}; pass the "
            "series' folder, or drop the series UID."
        )
    scan = _scan_folder(path.parent, recursive=False)
    series = [s for s in scan.series if s.key == header.series_key]
    return _read_dicom(
        path.parent,
        _FolderScan(series, scan.unreadable_files),
        None,
        path,
        given_file=True,
        around=around,
    )


_CT_ONLY = "MedCNN analyses CT scans only."


def _what_modality(modality: str | None) -> str:
    if modality is None:
        return "an object without a Modality"
    return _MODALITY_NAMES.get(modality, f"a {modality} object")


def _read_dicom(
    folder: Path,
    scan: _FolderScan,
    series_uid: str | None,
    path: Path,
    given_file: bool = False,
    around: ScanRegion | None = None,
) -> Volume:
    series, choice = _choose_series(folder, scan.series, series_uid)
    if given_file:
        choice = f"Series {series.label} is the series of the file given, read from its folder."
    warnings = []
    if scan.unreadable_files:
        warnings.append(
            f"{_count(scan.unreadable_files, 'file')} in {folder} looked like DICOM but could not "
            "be read and were skipped."
        )
    if series.first.series_uid is None:
        warnings.append(
            "The series has no SeriesInstanceUID (it was probably anonymised); it was grouped "
            "by folder, series number and description."
        )
    slices, affine, geometry_warnings = _stack_geometry(series.slices)
    warnings += geometry_warnings
    rows, columns = slices[0].size
    _check_size(rows * columns * len(slices) * 2, str(path))
    as_float = _needs_float_pixels(slices)
    first, count = _slices_reached(around, affine, len(slices))
    array, low, high = _read_dicom_pixels(slices[first : first + count], as_float)
    warnings += _value_warnings(array, low, high, modality_known=True)
    metadata = _metadata(path, "dicom", "CT", series.first, choice, warnings)
    return _volume_or_slab(array, affine, metadata, first, (columns, rows, len(slices)))


def _slices_reached(
    around: ScanRegion | None, affine: np.ndarray, n_slices: int
) -> tuple[int, int]:
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


def _choose_series(
    folder: Path, all_series: list[_Series], series_uid: str | None
) -> tuple[_Series, str]:
    """Apply the documented rule; return the series and the sentence that explains the choice."""
    if not all_series:
        raise InputNotFoundError(
            f"{folder} holds no DICOM files; give a folder with a DICOM series, or the path of "
            "a NIfTI, NRRD or MHA file itself."
        )
    if series_uid is not None:
        chosen = [s for s in all_series if s.first.series_uid == series_uid]
        if not chosen:
            available = "; ".join(s.label for s in all_series)
            raise SeriesSelectionError(
                f"No series with UID {series_uid} in {folder}; the series there are: {available}."
            )
        rejection = _rejection(chosen[0])
        if rejection is not None:
            raise rejection
        return chosen[0], f"Series {chosen[0].label} was chosen by its series UID."

    candidates = [s for s in all_series if _rejection(s) is None]
    if not candidates:
        raise _no_candidate_error(folder, all_series)
    skipped = len(all_series) - len(candidates)
    if len(candidates) == 1:
        others = (
            f"; {skipped} other series (not CT images, localizers or too few images) were skipped"
            if skipped
            else ""
        )
        return candidates[0], f"Series {candidates[0].label} is the only CT series found{others}."

    def rank(s: _Series) -> tuple[int, float]:
        return (-len(s.slices), _slice_spacing_estimate(s.slices))

    candidates.sort(key=rank)
    best = rank(candidates[0])
    tied = [s for s in candidates if _same_rank(rank(s), best)]
    if len(tied) > 1:
        listed = "; ".join(s.label for s in tied)
        raise SeriesSelectionError(
            f"{folder} holds {len(tied)} CT series with the same number of images and slice "
            f"spacing ({listed}); pass the UID of the series to analyse."
        )
    runner_up = candidates[1]
    reason = (
        "it has the most images"
        if len(candidates[0].slices) > len(runner_up.slices)
        else "it ties on the number of images but has the thinnest slice spacing"
    )
    return candidates[0], (
        f"Series {candidates[0].label} was chosen among {len(candidates)} CT series because "
        f"{reason}."
    )


def _same_rank(a: tuple[int, float], b: tuple[int, float]) -> bool:
    if a[0] != b[0]:
        return False
    if not (np.isfinite(a[1]) and np.isfinite(b[1])):
        return a[1] == b[1]
    return abs(a[1] - b[1]) <= SPACING_TIE_MM


def _rejection(series: _Series) -> MedCNNError | None:
    """Why a series cannot be the CT volume, as the error the user should see; None if it can."""
    first = series.first
    if first.modality != "CT":
        return NotCTError(
            f"Series {series.label} is {_what_modality(first.modality)}, not a CT; {_CT_ONLY}"
        )
    if first.sop_class_uid in ENHANCED_CT_STORAGE:
        return UnreadableImageError(
            f"Series {series.label} is an enhanced multi-frame CT object, which MedCNN does not "
            "read yet; export the series as classic single-frame CT images, or convert it to "
            "NIfTI (for example with dcm2niix)."
        )
    if first.sop_class_uid != CT_IMAGE_STORAGE:
        return NotCTError(
            f"Series {series.label} has Modality CT but is not CT image data (SOP class "
            f"{first.sop_class_uid or 'missing'}: a screenshot, report or derived object); "
            "choose the CT image series itself."
        )
    if any(s.is_localizer for s in series.slices):
        return GeometryError(
            f"Series {series.label} is a localizer (scout) image, not a CT volume; choose the "
            "axial CT series."
        )
    if len(series.slices) < MIN_SERIES_SLICES:
        return GeometryError(
            f"Series {series.label} is a 2D image rather than a 3D volume; MedCNN needs a series "
            f"of at least {MIN_SERIES_SLICES} slices."
        )
    return None


def _no_candidate_error(folder: Path, all_series: list[_Series]) -> MedCNNError:
    """The most useful error when nothing qualifies: a CT series' own problem before 'not CT'."""
    rejections = [_rejection(s) for s in all_series]
    for series, rejection in zip(all_series, rejections, strict=True):
        if series.first.modality == "CT" and rejection is not None:
            return rejection
    if len(all_series) == 1 and rejections[0] is not None:
        return rejections[0]
    found = Counter(_what_modality(s.first.modality) for s in all_series)
    listed = ", ".join(f"{what} ({n} series)" for what, n in found.items())
    return NotCTError(f"{folder} holds no CT series, only {listed}; {_CT_ONLY}")


def _slice_spacing_estimate(slices: list[_SliceHeader]) -> float:
    """Median distance between distinct slice positions along the normal (inf if unknown)."""
    orientation = slices[0].orientation
    positions = [s.position for s in slices if s.position is not None]
    if orientation is None or len(positions) < len(slices):
        return float("inf")
    normal = np.cross(orientation[:3], orientation[3:])
    steps = np.diff(np.unique(np.round(np.array(positions) @ normal, 3)))
    return float(np.median(steps)) if steps.size else float("inf")


def _stack_geometry(
    slices: list[_SliceHeader],
) -> tuple[list[_SliceHeader], np.ndarray, list[str]]:
    """Order the slices along their normal, check they form a regular grid, build the affine."""
    positions = [s.position for s in slices if s.position is not None]
    orientations = [s.orientation for s in slices if s.orientation is not None]
    pixel_spacings = [s.pixel_spacing for s in slices if s.pixel_spacing is not None]
    if not len(positions) == len(orientations) == len(pixel_spacings) == len(slices):
        raise GeometryError(
            "Some images of the series lack ImagePositionPatient, ImageOrientationPatient or "
            "PixelSpacing, so their place in the patient is unknown; export the series with its "
            "geometry tags."
        )
    if len({s.size for s in slices}) > 1 or np.ptp(np.array(pixel_spacings), axis=0).max() > 1e-4:
        raise GeometryError(
            "The series mixes images of different sizes or pixel spacings, so they do not stack "
            "into one volume; choose a single reconstruction."
        )
    if np.ptp(np.array(orientations), axis=0).max() > ORIENTATION_TOLERANCE:
        raise GeometryError(
            "The series mixes slices of different orientations (for example axial and sagittal "
            "images in one series); choose a series with a single orientation."
        )
    row, column = orientations[0][:3], orientations[0][3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(column) - 1) > 1e-3:
        raise GeometryError(
            "The series' ImageOrientationPatient is not made of unit vectors, so its geometry is "
            "corrupt; export the series again."
        )
    if abs(row @ column) > 1e-3:
        raise GeometryError(
            "The series' row and column directions are not perpendicular, so its geometry is "
            "corrupt; export the series again."
        )
    normal = np.cross(row, column)
    normal /= np.linalg.norm(normal)

    # Along the normal, and within one position by instance number (duplicates keep the lowest).
    distances = np.array(positions) @ normal
    order = np.lexsort(([s.instance_number for s in slices], distances))
    keep, warnings = _drop_duplicate_positions(distances[order])
    order = order[keep]
    ordered = [slices[n] for n in order]
    _check_no_tilt(np.array(positions)[order], distances[order], normal)
    step = _check_regular_spacing(distances[order])

    lps = np.eye(4)
    row_spacing, column_spacing = pixel_spacings[0]
    lps[:3, 0] = row * column_spacing
    lps[:3, 1] = column * row_spacing
    lps[:3, 2] = normal * step
    lps[:3, 3] = positions[order[0]]
    return ordered, LPS_TO_RAS @ lps, warnings


def _drop_duplicate_positions(sorted_distances: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Which sorted slices to keep (the first at each position), refusing stacks of repeats."""
    first_at_position = np.concatenate([[True], np.diff(sorted_distances) > SAME_POSITION_MM])
    if first_at_position.all():
        return first_at_position, []
    n_images = sorted_distances.size
    counts = np.diff(np.flatnonzero(np.concatenate([first_at_position, [True]])))
    if counts.size == 1:
        raise GeometryError(
            f"The series' {n_images} images all lie at the same position, so they do not "
            "form a 3D volume; choose a series of consecutive slices."
        )
    if counts.min() > 1 and counts.min() == counts.max():
        raise GeometryError(
            f"The series holds {counts[0]} images at each of its {counts.size} positions "
            "(several phases, echoes or reconstructions in one series); export one of them as "
            "its own series."
        )
    if counts.size < MIN_SERIES_SLICES:
        raise GeometryError(
            f"The series' {n_images} images lie at only {counts.size} distinct positions, not "
            "enough for a 3D volume; choose a series of consecutive slices."
        )
    dropped = n_images - counts.size
    return first_at_position, [
        f"{_count(dropped, 'duplicate image')} at an already present slice position were "
        "dropped (the lowest instance number was kept)."
    ]


def _check_no_tilt(positions: np.ndarray, distances: np.ndarray, normal: np.ndarray) -> None:
    """Slices must step along their own normal: gantry tilt shears the grid."""
    offsets = positions - positions[0]
    lateral = offsets - np.outer(distances - distances[0], normal)
    drift = float(np.linalg.norm(lateral, axis=1).max())
    if drift > TILT_TOLERANCE_MM:
        extent = float(distances[-1] - distances[0])
        angle = float(np.degrees(np.arctan2(drift, extent)))
        raise GeometryError(
            f"The series' slices are shifted sideways as they advance (about {angle:.1f} degrees "
            "of gantry tilt or a sheared grid), so they do not form a regular volume; convert it "
            "with a tool that corrects gantry tilt (for example dcm2niix) and pass the NIfTI file."
        )


def _check_regular_spacing(distances: np.ndarray) -> float:
    """The slice spacing, after checking for missing slices and uneven steps."""
    steps = np.diff(distances)
    median = float(np.median(steps))
    widest = int(np.argmax(steps))
    if steps[widest] > GAP_FACTOR * median:
        raise GeometryError(
            f"The series has missing slices: a {steps[widest]:.2f} mm gap after slice "
            f"{widest + 1} of {distances.size}, where slices are {median:.2f} mm apart; export "
            "the complete series again."
        )
    step = float(distances[-1] - distances[0]) / (distances.size - 1)
    grid = distances[0] + step * np.arange(distances.size)
    deviation = float(np.abs(distances - grid).max())
    if deviation > max(GRID_TOLERANCE_MM, GRID_TOLERANCE_FRACTION * step):
        raise GeometryError(
            f"The series' slices are unevenly spaced (one lies {deviation:.2f} mm off a regular "
            f"{step:.3f} mm grid), so they do not form a regular volume; export the series with "
            "uniform spacing or resample it to one (for example with dcm2niix)."
        )
    return step


def _needs_float_pixels(slices: list[_SliceHeader]) -> bool:
    """Per-slice or fractional rescales must not be squeezed into the first slice's type."""
    rescales = {s.rescale for s in slices}
    slope, intercept = next(iter(rescales))
    return len(rescales) > 1 or not (float(slope).is_integer() and float(intercept).is_integer())


def _read_dicom_pixels(
    slices: list[_SliceHeader], as_float: bool
) -> tuple[np.ndarray, float, float]:
    """Decode the ordered files with GDCM; rescale slope/intercept are applied, so values are HU."""
    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileNames([str(s.path) for s in slices])
    if as_float:
        reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        image = reader.Execute()
    except Exception as err:
        raise UnreadableImageError(
            f"The pixels of the DICOM series in {slices[0].path.parent} cannot be decoded "
            f"({_first_line(err)}); a file is truncated or uses an unsupported compression: "
            "copy the series again from the archive."
        ) from err
    rows, columns = slices[0].size
    if (
        image.GetSize() != (columns, rows, len(slices))
        or image.GetNumberOfComponentsPerPixel() != 1
    ):
        raise UnreadableImageError(
            f"The DICOM series in {slices[0].path.parent} decoded to an unexpected size "
            f"{image.GetSize()} (colour or multi-frame images?); export it as a grey-level "
            "single-frame CT series."
        )
    return _array_from_sitk(image)


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


# --- NIfTI, NRRD, MHA -------------------------------------------------------------------------


def format_of(path: Path) -> str | None:
    """ "nifti", "nrrd" or "mha" from a file's name; None for DICOM or anything else."""
    name = path.name.lower()
    for suffix, image_format in _SUFFIX_FORMATS.items():
        if name.endswith(suffix):
            return image_format
    return None


def _read_nifti(path: Path, around: ScanRegion | None = None) -> Volume:
    try:
        image = nib.load(path)
        shape = tuple(int(n) for n in image.shape)
        header_dtype = np.dtype(image.get_data_dtype())
    except Exception as err:
        raise UnreadableImageError(
            f"{path} cannot be read as NIfTI ({_first_line(err)}); the file is probably "
            "truncated or not NIfTI: copy or convert it again."
        ) from err
    shape3 = _three_dimensions(shape, path)
    _check_size(int(np.prod(shape3)) * max(2, header_dtype.itemsize), str(path))
    slope, intercept = image.dataobj.slope, image.dataobj.inter  # type: ignore[attr-defined]
    affine = np.asarray(image.affine, dtype=float)
    unscaled = slope == 1 and intercept == 0
    # A region reads only its slab of the last (slowest) axis, when no voxel elsewhere can be
    # NaN or beyond the HU range (integer files within int16, unscaled); others are read whole.
    partial = unscaled and header_dtype in _SLAB_DTYPES
    first, count = _slices_reached(around if partial else None, affine, shape3[2])
    try:
        if count < shape3[2]:
            array = np.asanyarray(image.dataobj[:, :, first : first + count])
        elif unscaled:
            array = np.asanyarray(image.dataobj)
        else:
            array = image.get_fdata(dtype=np.float32)
    except Exception as err:
        raise UnreadableImageError(
            f"The voxels of {path} cannot be read ({_first_line(err)}); the file is probably "
            "truncated: copy or convert it again."
        ) from err
    array, low, high = _hounsfield_array(array.reshape(*shape3[:2], count), copy=False)
    warnings = []
    if int(image.header["sform_code"]) == 0 and int(image.header["qform_code"]) == 0:
        warnings.append(
            f"{path.name} has no orientation (its qform and sform codes are 0), so world "
            "positions assume an arbitrary axis-aligned grid."
        )
    warnings += _value_warnings(array, low, high, modality_known=False)
    metadata = _metadata(path, "nifti", None, None, None, warnings)
    return _volume_or_slab(array, affine, metadata, first, shape3)


def _volume_or_slab(
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


def _read_itk_image(path: Path, image_format: str, around: ScanRegion | None = None) -> Volume:
    """NRRD or MetaImage through ITK, whose LPS geometry becomes RAS here.

    A region is read as the slab of the last axis it reaches, for 3D files of integers within
    int16 (as for NIfTI): uncompressed NRRD, what 3D Slicer hands to MedCNN, straight from disk
    (``_raw_nrrd_slab``); MetaImage and other NRRD through ITK's streaming extraction, which
    reads an uncompressed MetaImage only there and still decompresses a compressed file whole.
    """
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except Exception as err:
        raise UnreadableImageError(
            f"{path} cannot be read as {image_format.upper()} ({_first_line(err)}); the file "
            "is probably truncated or corrupt: copy or convert it again."
        ) from err
    size = tuple(int(n) for n in reader.GetSize())
    if reader.GetNumberOfComponents() != 1:
        raise GeometryError(
            f"{path.name} holds {reader.GetNumberOfComponents()} values per voxel (a 4D, vector "
            "or colour image); MedCNN needs a single grey-level 3D CT volume."
        )
    shape3 = _three_dimensions(size, path)
    voxel_bytes = sitk.GetArrayFromImage(sitk.Image([1, 1, 1], reader.GetPixelID())).itemsize
    _check_size(int(np.prod(shape3)) * max(2, voxel_bytes), str(path))
    first, count = 0, shape3[2]
    if len(size) == 3 and reader.GetPixelID() in _SLAB_PIXEL_IDS:
        affine = LPS_TO_RAS @ _lps_affine(reader)
        first, count = _slices_reached(around, affine, shape3[2])
    raw = _raw_nrrd_slab(path, reader, first, count) if image_format == "nrrd" else None
    if raw is not None:
        array, low, high = _hounsfield_array(raw, copy=False)
    else:
        if count < shape3[2]:
            reader.SetExtractIndex([0, 0, first])
            reader.SetExtractSize([shape3[0], shape3[1], count])
        try:
            image = reader.Execute()
        except Exception as err:
            raise UnreadableImageError(
                f"The voxels of {path} cannot be read ({_first_line(err)}); the file is "
                "probably truncated or corrupt: copy or convert it again."
            ) from err
        if image.GetDimension() == 4:
            image = image[:, :, :, 0]
        array, low, high = _array_from_sitk(image)
    warnings = _value_warnings(array, low, high, modality_known=False)
    metadata = _metadata(path, image_format, None, None, None, warnings)
    if count < shape3[2]:
        return _volume_or_slab(array, affine, metadata, first, shape3)
    return Volume(array, LPS_TO_RAS @ _lps_affine(image), metadata)


def _raw_nrrd_slab(
    path: Path, reader: sitk.ImageFileReader, first: int, count: int
) -> np.ndarray | None:
    """Slices ``first .. first + count`` of an uncompressed NRRD, straight from the file.

    ITK's NRRD reader reads a file whole even to extract a region, and 3D Slicer hands MedCNN
    exactly such files, one per click. When the header (parsed here only to find the voxels;
    the geometry is ITK's) says raw voxels follow it in the same file, and the file's size
    agrees to the byte, the slab is mapped from disk. Anything else returns None, for ITK.
    """
    size = tuple(int(n) for n in reader.GetSize())
    if count >= size[2]:
        return None
    with open(path, "rb") as handle:
        head = handle.read(_NRRD_HEADER_LIMIT)
    end = head.find(b"\n\n")
    if not head.startswith(b"NRRD") or end < 0:
        return None
    fields = {}
    for line in head[:end].decode("latin-1").split("\n")[1:]:
        key, colon, value = line.partition(": ")
        if colon and not line.startswith("#"):
            fields[key.strip().lower()] = value.strip().lower()
    if fields.get("encoding") != "raw" or _NRRD_DETACHED_OR_SKIPPED & set(fields):
        return None
    dtype = np.dtype(_NRRD_PIXEL_DTYPES[reader.GetPixelID()])
    dtype = dtype.newbyteorder("<" if fields.get("endian", "little") == "little" else ">")
    offset = end + 2
    if path.stat().st_size != offset + int(np.prod(size)) * dtype.itemsize:
        return None
    voxels = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=size[::-1])
    slab = np.array(voxels[first : first + count], dtype=dtype.newbyteorder("="))
    del voxels
    return slab.transpose(2, 1, 0)


def _lps_affine(source: sitk.Image | sitk.ImageFileReader) -> np.ndarray:
    """ITK's geometry (a 3D image or file) as an LPS affine: direction @ diag(spacing), origin."""
    lps = np.eye(4)
    direction = np.array(source.GetDirection(), dtype=float).reshape(3, 3)
    lps[:3, :3] = direction * np.array(source.GetSpacing(), dtype=float)
    lps[:3, 3] = source.GetOrigin()
    return lps


def _three_dimensions(shape: tuple[int, ...], path: Path) -> tuple[int, int, int]:
    """The image's 3D shape; trailing axes of length 1 are dropped, 2D and 4D are refused."""
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) > 3:
        raise GeometryError(
            f"{path.name} is a {len(shape)}D image of shape {shape} (a time series or several "
            "volumes); MedCNN needs one 3D CT volume: extract the volume to analyse."
        )
    if len(shape) < 3 or min(shape) < 2:
        raise GeometryError(
            f"{path.name} is a 2D image of shape {shape}, not a 3D volume; MedCNN needs the "
            "whole CT series."
        )
    return shape[0], shape[1], shape[2]


# --- Shared: pixels, HU, limits, metadata -----------------------------------------------------


def _array_from_sitk(image: sitk.Image) -> tuple[np.ndarray, float, float]:
    """HU voxels as ``[i, j, k]`` with one copy only (ITK's buffer is ``[k, j, i]``)."""
    if image.GetPixelID() == sitk.sitkInt16:
        array, low, high = _hounsfield_array(sitk.GetArrayFromImage(image), copy=False)
    else:
        view = sitk.GetArrayViewFromImage(image)  # valid while `image` lives: copied right here
        array, low, high = _hounsfield_array(view, copy=True)
        del view
    return array.transpose(2, 1, 0), low, high


def _hounsfield_array(array: np.ndarray, copy: bool) -> tuple[np.ndarray, float, float]:
    """The voxels as int16 when every value is an int16 integer, else float32, with min and max.

    HU need no more than that, and int16 halves the memory of float32. NaN or infinite voxels
    mean a corrupt file: refused rather than silently replaced.
    """
    if array.dtype == bool:
        raise NotCTError(
            "The image holds only true/false values, so it is a mask, not a CT; give the CT "
            "scan itself."
        )
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise UnreadableImageError(
            f"The image's voxels are of type {array.dtype}, not grey levels; MedCNN needs a "
            "grey-level CT in Hounsfield units."
        )
    low, high = float(array.min()), float(array.max())
    if not (np.isfinite(low) and np.isfinite(high)):
        raise UnreadableImageError(
            "The image contains NaN or infinite voxels, so it is corrupt or not a CT; export "
            "the scan again."
        )
    if array.dtype == np.int16:
        return (array.copy() if copy else array), low, high
    if low >= -32768 and high <= 32767 and _all_integers(array):
        return array.astype(np.int16), low, high
    return array.astype(np.float32, copy=copy), low, high


def _all_integers(array: np.ndarray) -> bool:
    if np.issubdtype(array.dtype, np.integer):
        return True
    slabs = np.moveaxis(array, -1, 0) if array.flags.f_contiguous else array
    return all(np.array_equal(slab, np.rint(slab)) for slab in slabs)  # no full-size temporary


def _value_warnings(array: np.ndarray, low: float, high: float, modality_known: bool) -> list[str]:
    """Refuse what cannot be HU when the format does not say it is CT; warn when it may not be."""
    if not modality_known:
        if low >= 0 and high <= 1:
            raise NotCTError(
                f"The image's values lie between {low:g} and {high:g}, so it looks like a mask "
                "or probability map, not a CT in Hounsfield units; give the CT scan itself."
            )
        if low >= 0 and high <= 255 and array.dtype == np.int16 and _few_values(array):
            raise NotCTError(
                f"The image holds only a few integer values between {low:g} and {high:g}, so "
                "it looks like a label map (segmentation), not a CT in Hounsfield units; give "
                "the CT scan itself."
            )
    if low >= 0:
        return [
            f"No voxel is below 0 HU (the lowest is {low:g}): if the scan contains air, its "
            "values are not Hounsfield units and the analysis will be wrong."
        ]
    return []


def _few_values(array: np.ndarray, limit: int = 16, sample: int = 1_000_000) -> bool:
    """Whether a label map's handful of values: judged on a strided sample, cheaply."""
    stride = max(1, round((array.size / sample) ** (1 / 3)))
    return np.unique(array[::stride, ::stride, ::stride]).size <= limit


def _check_size(estimated_bytes: int, where: str) -> None:
    """Refuse, before decoding, a scan whose voxels alone exceed the memory limit."""
    raw = os.environ.get(MAX_SCAN_BYTES_ENV)
    try:
        limit = int(raw) if raw else DEFAULT_MAX_SCAN_BYTES
    except ValueError as err:
        raise UsageError(
            f"{MAX_SCAN_BYTES_ENV}={raw!r} is not a whole number of bytes; set it to one, or "
            "unset it for the default of 3 GiB."
        ) from err
    if estimated_bytes > limit:
        raise ResourceLimitError(
            f"{where} needs about {estimated_bytes / 2**30:.2f} GiB for its voxels, more than "
            f"the limit of {limit / 2**30:.2f} GiB; crop or downsample the scan, or raise "
            f"{MAX_SCAN_BYTES_ENV} if the machine has the memory."
        )


def _metadata(
    path: Path,
    image_format: str,
    modality: str | None,
    header: _SliceHeader | None,
    series_choice: str | None,
    warnings: list[str],
) -> dict:
    return {
        "path": str(path),
        "format": image_format,
        "modality": modality,
        "series_instance_uid": header.series_uid if header else None,
        "series_description": header.series_description if header else None,
        "series_choice": series_choice,
        "warnings": warnings,
    }
