"""DICOM series: the headers that choose the series and place its slices (pydicom), the checks
that they form one regular volume, and the pixels decoded by GDCM (SimpleITK). The rules are in
``medcnn.reading``'s documentation."""

from __future__ import annotations

import stat
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    SeriesSelectionError,
    UnreadableImageError,
)
from medcnn.reading.region import ScanRegion, slices_reached, volume_or_slab
from medcnn.reading.trust import check_grid, check_regular_file
from medcnn.reading.voxels import (
    array_from_sitk,
    check_size,
    first_line,
    scan_metadata,
    value_warnings,
)
from medcnn.volume import LPS_TO_RAS, Volume

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
_HEADER_TAG_LIST: list[BaseTag | int] = [Tag(name) for name in _HEADER_TAGS]
_LAST_HEADER_GROUP = max(Tag(tag).group for tag in _HEADER_TAG_LIST)

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
    "CT": "a CT image",
    "NM": "a nuclear medicine image",
    "MG": "a mammogram",
    "XA": "an X-ray angiogram",
}


@dataclass(frozen=True)
class SliceHeader:
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
    slices: list[SliceHeader]

    @property
    def first(self) -> SliceHeader:
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


def scan_folder(folder: Path, recursive: bool) -> _FolderScan:
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
    groups: dict[str, list[SliceHeader]] = {}
    unreadable = 0
    for file in files:
        check_regular_file(file)  # no read permission: said so, not skipped as "truncated"
        try:
            header = _read_slice_header(file)
        except UnreadableImageError:
            unreadable += 1
            continue
        if header is not None:
            groups.setdefault(header.series_key, []).append(header)
    return _FolderScan([_Series(k, v) for k, v in groups.items()], unreadable)


def _read_slice_header(path: Path) -> SliceHeader | None:
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
    sop_class = str(
        tag_value(ds, "SOPClassUID") or tag_value(meta, "MediaStorageSOPClassUID") or ""
    )
    if sop_class == MEDIA_STORAGE_DIRECTORY:
        return None
    uid = str(tag_value(ds, "SeriesInstanceUID") or "").strip() or None
    description = str(tag_value(ds, "SeriesDescription") or "").strip() or None
    modality = str(tag_value(ds, "Modality") or "").strip().upper() or None
    key = uid or f"{path.parent}|{tag_value(ds, 'SeriesNumber')}|{description}|{modality}"
    tagged_type: Any = tag_value(ds, "ImageType") or []
    image_type = [tagged_type] if isinstance(tagged_type, str) else list(tagged_type)
    spacing = tag_floats(tag_value(ds, "PixelSpacing"), 2)
    return SliceHeader(
        path=path,
        series_key=key,
        series_uid=uid,
        series_description=description,
        modality=modality,
        sop_class_uid=sop_class,
        is_localizer=any(str(t).strip().upper() == "LOCALIZER" for t in image_type),
        instance_number=int_or(tag_value(ds, "InstanceNumber"), 0),
        position=tag_floats(tag_value(ds, "ImagePositionPatient"), 3),
        orientation=tag_floats(tag_value(ds, "ImageOrientationPatient"), 6),
        pixel_spacing=None if spacing is None else (float(spacing[0]), float(spacing[1])),
        size=(int_or(tag_value(ds, "Rows"), 0), int_or(tag_value(ds, "Columns"), 0)),
        rescale=(
            float_or(tag_value(ds, "RescaleSlope"), 1.0),
            float_or(tag_value(ds, "RescaleIntercept"), 0.0),
        ),
    )


def _past_header_tags(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag.group > _LAST_HEADER_GROUP


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def tag_value(ds: object, name: str) -> object:
    """A tag's value, or None when absent or malformed (archives hold both)."""
    try:
        return None if ds is None else ds.get(name)  # type: ignore[attr-defined]
    except Exception:
        return None


def tag_floats(value: object, count: int) -> np.ndarray | None:
    try:
        numbers = np.array([float(v) for v in value], dtype=np.float64)  # type: ignore[attr-defined]
    except Exception:
        return None
    return numbers if numbers.shape == (count,) and np.all(np.isfinite(numbers)) else None


def int_or(value: object, default: int) -> int:
    try:
        return int(value)  # type: ignore[call-overload]
    except Exception:
        return default


def float_or(value: object, default: float) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except Exception:
        return default


def read_dicom_file(path: Path, series_uid: str | None, around: ScanRegion | None) -> Volume:
    """One file of a series: read the whole series it belongs to, from its folder."""
    header = _read_slice_header(path)
    if header is None:
        raise UnreadableImageError(
            f"{path} is not an image MedCNN can read; give a DICOM series, a NIfTI (.nii, "
            ".nii.gz), NRRD (.nrrd, .nhdr) or MetaImage (.mha, .mhd) file."
        )
    if header.modality != "CT":
        raise NotCTError(f"{path.name} is {what_modality(header.modality)}, not a CT; {_CT_ONLY}")
    if series_uid is not None and series_uid != header.series_uid:
        raise SeriesSelectionError(
            f"{path.name} belongs to series {header.series_uid}, not {series_uid}; pass the "
            "series' folder, or drop the series UID."
        )
    scan = scan_folder(path.parent, recursive=False)
    series = [s for s in scan.series if s.key == header.series_key]
    return read_dicom(
        path.parent,
        _FolderScan(series, scan.unreadable_files),
        None,
        path,
        given_file=True,
        around=around,
    )


_CT_ONLY = "MedCNN analyses CT scans only."


def what_modality(modality: str | None) -> str:
    if modality is None:
        return "an object without a Modality"
    return _MODALITY_NAMES.get(modality, f"a {modality} object")


def read_dicom(
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
    check_size(rows * columns * len(slices) * 2, str(path))
    as_float = _needs_float_pixels(slices)
    first, count = slices_reached(around, affine, len(slices))
    array, low, high = _read_dicom_pixels(slices[first : first + count], as_float)
    warnings += value_warnings(array, low, high, modality_known=True)
    metadata = scan_metadata(
        path,
        "dicom",
        "CT",
        warnings,
        series_uid=series.first.series_uid,
        series_description=series.first.series_description,
        series_choice=choice,
        # The whole series' files in slice order, even when only a slab is decoded: the DICOM
        # results reference and copy from them (medcnn.outputs.dicom_source).
        source_files=[str(s.path) for s in slices],
    )
    return volume_or_slab(array, affine, metadata, first, (columns, rows, len(slices)))


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
            f"Series {series.label} is {what_modality(first.modality)}, not a CT; {_CT_ONLY}"
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
    found = Counter(what_modality(s.first.modality) for s in all_series)
    listed = ", ".join(f"{what} ({n} series)" for what, n in found.items())
    return NotCTError(f"{folder} holds no CT series, only {listed}; {_CT_ONLY}")


def _slice_spacing_estimate(slices: list[SliceHeader]) -> float:
    """Median distance between distinct slice positions along the normal (inf if unknown)."""
    orientation = slices[0].orientation
    positions = [s.position for s in slices if s.position is not None]
    if orientation is None or len(positions) < len(slices):
        return float("inf")
    normal = np.cross(orientation[:3], orientation[3:])
    steps = np.diff(np.unique(np.round(np.array(positions) @ normal, 3)))
    return float(np.median(steps)) if steps.size else float("inf")


def _stack_geometry(
    slices: list[SliceHeader],
) -> tuple[list[SliceHeader], np.ndarray, list[str]]:
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
    order = np.lexsort((np.array([s.instance_number for s in slices]), distances))
    keep, warnings = _drop_duplicate_positions(distances[order])
    order = order[keep]
    ordered = [slices[n] for n in order]
    _check_no_tilt(np.array(positions)[order], distances[order], normal)
    step = _check_regular_spacing(distances[order])

    lps = plane_lps_affine(orientations[0], pixel_spacings[0], positions[order[0]], step)
    check_grid(lps, "the DICOM series", spacing=(*pixel_spacings[0], step))
    return ordered, LPS_TO_RAS @ lps, warnings


def plane_lps_affine(
    orientation: np.ndarray,
    pixel_spacing: tuple[float, float],
    position: np.ndarray,
    normal_step: float = 1.0,
) -> np.ndarray:
    """Where ITK puts an image plane, in LPS: i along a row (ImageOrientationPatient's first
    vector, column spacing apart), j down a column (its second, row spacing apart), k along their
    normal, and the first pixel at ImagePositionPatient."""
    row, column = orientation[:3], orientation[3:]
    normal = np.cross(row, column)
    row_spacing, column_spacing = pixel_spacing
    lps = np.eye(4)
    lps[:3, 0] = row * column_spacing
    lps[:3, 1] = column * row_spacing
    lps[:3, 2] = normal / np.linalg.norm(normal) * normal_step
    lps[:3, 3] = position
    return lps


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


def _needs_float_pixels(slices: list[SliceHeader]) -> bool:
    """Per-slice or fractional rescales must not be squeezed into the first slice's type."""
    rescales = {s.rescale for s in slices}
    slope, intercept = next(iter(rescales))
    return len(rescales) > 1 or not (float(slope).is_integer() and float(intercept).is_integer())


def _read_dicom_pixels(
    slices: list[SliceHeader], as_float: bool
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
            f"({first_line(err)}); a file is truncated or uses an unsupported compression: "
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
    return array_from_sitk(image)
