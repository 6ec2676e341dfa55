"""Whether an input is a 2D radiograph or a 3D scan, from its name and header only.

The engine asks this before any pixel is read, to choose the model an input needs (a point in a
CT for the lung nodule model, a whole radiograph for the chest X-ray model) and to refuse a
mismatch in one sentence. A file that cannot be probed is reported as unknown; the reader
chosen then says what is wrong with it.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import SimpleITK as sitk

from medcnn.reading.image_files import format_of

# Modalities of cross-sectional volumes, and of projection radiographs (CR, DX, the digital
# radiograph RG, and OT, which secondary captures of films carry). Other objects (SEG, SR, ...)
# are left to the reader of the model the point chooses.
VOLUME_MODALITIES = frozenset({"CT", "MR", "PT", "NM", "US"})
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "RG", "OT", ""})
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")


def is_two_dimensional(path: Path | str) -> bool | None:
    """True for a radiograph-like input (a picture, a single DICOM image of a projection
    modality, a one-slice NIfTI/NRRD/MetaImage), False for a volume or a folder of several
    files, None when the header cannot tell."""
    path = Path(path)
    if path.is_dir():
        files = [f for f in path.iterdir() if f.is_file() and not f.name.startswith(".")]
        return _dicom_is_two_dimensional(files[0]) if len(files) == 1 else False
    if not path.is_file():
        return None
    if path.name.lower().endswith(PICTURE_SUFFIXES):
        return True
    if format_of(path) is not None:
        try:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
        except RuntimeError:
            return None
        size = reader.GetSize()
        return len(size) == 2 or (len(size) == 3 and 1 in size)
    return _dicom_is_two_dimensional(path)


def _dicom_is_two_dimensional(path: Path) -> bool | None:
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"])
    except Exception:  # not DICOM, or unreadable: the reader will say which
        return None
    modality = str(header.get("Modality", "") or "").upper()
    if modality in VOLUME_MODALITIES:
        return False
    return True if modality in RADIOGRAPH_MODALITIES else None
