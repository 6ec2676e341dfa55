"""Radiograph files the tests write: a valid DICOM of any pixels and tags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import generate_uid

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
# The patient and study attributes the DICOM results copy from their source.
PATIENT_AND_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    modality: str | None = "DX",
    sop_class: str = DX_STORAGE,
    **tags,
) -> Path:
    """A valid DICOM file (with its file meta) of the pixels and tags."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    if modality is not None:
        ds.Modality = modality
    ds.set_pixel_data(pixels, photometric, bits_stored or pixels.dtype.itemsize * 8)
    for name, value in tags.items():
        setattr(ds, name, value)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def radiograph_study(**tags: object) -> dict:
    """The patient and study attributes of a test radiograph (and any other tags)."""
    study: dict[str, object] = {name: "" for name in PATIENT_AND_STUDY}
    study.update(
        PatientName="SYNTHETIC^RADIOGRAPH",
        PatientID="SYNTHETIC-1",
        StudyInstanceUID=generate_uid(),
        SeriesInstanceUID=generate_uid(),
        StudyDate="20000101",
        StudyTime="000000",
        StudyID="1",
        ViewPosition="PA",
    )
    study.update(tags)
    return study
