"""The DICOM series an analysis answered, as the DICOM results need it: its study to attach to,
the slices the results lie on, and the refusals of a source that cannot carry them.

Kept apart from ``dicom_results`` (which builds the objects with highdicom) so that the checks
run before any work without loading highdicom.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.filereader import read_partial
from pydicom.tag import BaseTag

from medcnn.errors import NotDicomSourceError
from medcnn.reading.dimensions import PICTURE_SUFFIXES
from medcnn.reading.image_files import format_of
from medcnn.volume import LPS_TO_RAS, Volume

# What the objects copy or reference from each source slice, and cannot do without (type 1 in
# the modules highdicom fills from the source: patient and study identity, geometry).
REQUIRED_ATTRIBUTES = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "Modality",
    "FrameOfReferenceUID",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
)
# A projection radiograph has no place in the patient's coordinates: only the identities (and
# a pixel spacing, below, for the Parametric Map's pixel measures).
RADIOGRAPH_REQUIRED = REQUIRED_ATTRIBUTES[:5] + ("Rows", "Columns")
RADIOGRAPH_SPACINGS = ("PixelSpacing", "ImagerPixelSpacing")
# Patient and study attributes that DICOM requires present but lets be empty (type 2): copied
# as the source has them, and a source without one of them is refused rather than filled in.
TYPE2_ATTRIBUTES = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)
POSITION_TOLERANCE_MM = 0.01
# Every attribute above is in a group up to 0x0028 (identity, geometry, image size).
_LAST_REFERENCED_GROUP = 0x0028


def check_dicom_input(path: Path | str) -> None:
    """Refuse, before any work, an input that is not DICOM: it has no study to attach the
    DICOM results to. A folder or a file of unknown type is DICOM to the readers, which say
    what is wrong if it is not."""
    path = Path(path)
    if path.is_dir():
        return
    kind = format_of(path) or ("picture" if path.name.lower().endswith(PICTURE_SUFFIXES) else None)
    if kind is not None:
        raise NotDicomSourceError(
            f"{path.name} is not DICOM, so it has no study to attach DICOM results to; give "
            "the DICOM series (or file) it came from, or leave out --dicom."
        )


@dataclass(frozen=True)
class DicomSource:
    """The source slices an analysis's block of the scan lies on (headers only, in slice
    order, one for each of the block's slices) and where the block sits in their frames."""

    slices: tuple[Dataset, ...]
    first_row: int
    first_column: int
    slice_spacing_mm: float

    @property
    def first(self) -> Dataset:
        return self.slices[0]

    @property
    def frame_of_reference_uid(self) -> str:
        return str(self.first.FrameOfReferenceUID)


def check_scan_source(scan: Volume) -> None:
    """Refuse, right after reading and before the network, a scan whose series cannot carry
    DICOM results (not DICOM, or its first slice lacks an attribute they copy)."""
    files = _source_files(scan)
    _check_attributes(pydicom.dcmread(files[0], stop_before_pixels=True), files[0])


def _source_files(scan: Volume) -> list[str]:
    files = scan.metadata.get("source_files")
    if scan.metadata.get("format") != "dicom" or not files:
        raise NotDicomSourceError(
            f"{scan.metadata.get('path', 'The input')} was not read from a DICOM series, so it "
            "has no study to attach DICOM results to; give the DICOM series, or leave out "
            "--dicom."
        )
    return list(files)


def dicom_source(scan: Volume, block: Volume) -> DicomSource:
    """The source slices under ``block`` (the heatmap's or segmentation's part of the scan's
    grid), read from the series the scan came from and checked to lie exactly where the block's
    slices lie."""
    files = _source_files(scan)
    offset = int(scan.metadata.get("region", {}).get("first_slice", 0))
    i, j, k = scan.block_slices(block)
    paths = [files[offset + n] for n in range(k.start, k.stop)]
    headers = (
        pydicom.dcmread(paths[0], stop_before_pixels=True),
        *(_referenced_header(path) for path in paths[1:]),
    )
    for header in headers:
        _check_attributes(header, files[0])
    _check_positions(headers, block)
    step = float(np.linalg.norm(block.affine[:3, 2]))
    return DicomSource(headers, first_row=j.start, first_column=i.start, slice_spacing_mm=step)


def _referenced_header(path: str) -> Dataset:
    """A slice's header up to its image attributes: all that the objects take from a slice
    beyond the first (whose header, read whole, gives the patient and study), which is its
    identity and place. Scanners write large private groups after them, a third of a
    header's parsing."""

    def past_image_attributes(tag: BaseTag, vr: str | None, length: int) -> bool:
        return tag.group > _LAST_REFERENCED_GROUP

    with open(path, "rb") as handle:
        return read_partial(handle, stop_when=past_image_attributes)


def radiograph_source(metadata: dict) -> Dataset:
    """The header of the DICOM radiograph an analysis read (``Radiograph.metadata``), checked
    for what the DICOM results copy; a radiograph has no geometry in the patient to check."""
    path = metadata.get("source_file")
    if not path:
        raise NotDicomSourceError(
            "The radiograph was not read from a DICOM file, so it has no study to attach DICOM "
            "results to; give the DICOM file, or leave out --dicom."
        )
    header = pydicom.dcmread(path, stop_before_pixels=True)
    _check_attributes(header, path, RADIOGRAPH_REQUIRED)
    if not any(str(header.get(name, "") or "").strip() for name in RADIOGRAPH_SPACINGS):
        raise NotDicomSourceError(
            f"The DICOM radiograph {Path(path).name} has neither PixelSpacing nor "
            "ImagerPixelSpacing, which the heatmap's Parametric Map must state; export it with "
            "one, or leave out --dicom."
        )
    return header


def _check_attributes(
    header: Dataset, where: str, required: tuple[str, ...] = REQUIRED_ATTRIBUTES
) -> None:
    for name in required:
        if not str(header.get(name, "") or "").strip():
            raise NotDicomSourceError(
                f"The DICOM source {Path(where).name} (and its series) has no {name}, which the "
                "DICOM results must copy or reference; export it with it, or leave out --dicom."
            )
    for name in TYPE2_ATTRIBUTES:
        if name not in header:
            raise NotDicomSourceError(
                f"The DICOM source {Path(where).name} (and its series) lacks {name} (DICOM "
                "requires it, even empty), so the DICOM results cannot copy it; export it with "
                "it, or leave out --dicom."
            )


def _check_positions(headers: tuple[Dataset, ...], block: Volume) -> None:
    """Each block slice's first voxel row must lie on its source slice's plane: the objects'
    frames are placed by the source's ImagePositionPatient, so a shifted one would misplace
    them. The reader built the grid from these positions; this holds it to them."""
    lps = LPS_TO_RAS @ block.affine
    for k, header in enumerate(headers):
        position = np.asarray(header.ImagePositionPatient, dtype=float)
        row, column = np.asarray(header.ImageOrientationPatient, dtype=float).reshape(2, 3)
        normal = np.cross(row, column)
        corner = lps[:3, :3] @ np.array([0.0, 0.0, float(k)]) + lps[:3, 3]
        if abs(float((corner - position) @ normal)) > POSITION_TOLERANCE_MM:
            raise NotDicomSourceError(
                f"The slice {header.SOPInstanceUID} does not lie where the series' grid puts "
                "it, so results cannot be placed on it; export the series again, or leave out "
                "--dicom."
            )
