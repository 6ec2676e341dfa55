"""Results saved as DICOM into Slicer's DICOM database, from there to a PACS with Slicer's tools.

The engine writes the DICOM objects (``--dicom``: a Segmentation, a Parametric Map, a TID 1500
report) only from the original DICOM series, whose patient and study they copy and whose
instances they reference; a volume exported from the scene has neither. So, asked for DICOM
results, the analysis sends the worker the files Slicer loaded the volume from: a volume the
DICOM module loaded carries its instances' UIDs (the node attribute ``DICOM.instanceUIDs``),
and the DICOM database knows each one's file. The objects written are then imported into that
database (copied, since the analysis's folder is temporary).

The database is reached through ``DicomDatabase``, two calls wide: in Slicer,
``SlicerDicomDatabase`` (``slicer.dicomDatabase``, a ctkDICOMDatabase, inserting as
QuantitativeReporting does); in the tests, a stand-in that knows the files of a real series.
Each object is then looked up by its SOP Instance UID: an insert the database did not keep is
a failure, not a silent loss.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import slicer

from .TaskLogic import AnalysisError

INSTANCE_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"  # set by Slicer's DICOM plugins on what they load
DICOM_OUTPUT_PREFIX = "dicom_"  # result.json's outputs that are DICOM objects (the engine's names)


class DicomDatabase(Protocol):
    """What the logic needs of Slicer's DICOM database."""

    def fileForInstance(self, sopInstanceUID: str) -> str:
        """The file of an instance, or "" when the database does not know it."""
        ...

    def importFiles(self, paths: Sequence[str]) -> None:
        """Add the files to the database, copied into its own folder."""
        ...


class SlicerDicomDatabase:
    """Slicer's DICOM database (``slicer.dicomDatabase``, a ctkDICOMDatabase)."""

    def __init__(self, database: Any) -> None:
        self.database = database

    def fileForInstance(self, sopInstanceUID: str) -> str:
        return str(self.database.fileForInstance(sopInstanceUID) or "")

    def importFiles(self, paths: Sequence[str]) -> None:
        for path in paths:  # storeFile: copied into the database's folder; no thumbnail
            self.database.insert(str(path), True, False)


def slicerDicomDatabase() -> SlicerDicomDatabase | None:
    """The application's DICOM database, or None where there is none (bare MRML, or a Slicer
    whose DICOM database is not open)."""
    database = getattr(slicer, "dicomDatabase", None)
    if database is None:
        return None
    isOpen = getattr(database, "isOpen", True)  # a Qt property; a method in some wrappings
    if not (isOpen() if callable(isOpen) else isOpen):
        return None
    return SlicerDicomDatabase(database)


@dataclass(frozen=True)
class DicomSeries:
    """The original series of a volume, as the worker takes it: ``image`` is the folder that
    holds its files (``seriesUid`` choosing it among the series there) or its one file."""

    image: str
    seriesUid: str | None
    files: tuple[str, ...]


def notDicomReason(volumeName: str) -> str:
    return (
        f"'{volumeName}' was not loaded from DICOM; DICOM results need a volume loaded through "
        "the DICOM module, whose series they join (turn off Save as DICOM to analyse it)."
    )


def dicomSeriesOf(
    volumeNode: slicer.vtkMRMLVolumeNode, database: DicomDatabase | None
) -> DicomSeries:
    """The original DICOM series of ``volumeNode``, or an ``AnalysisError`` that says in one
    sentence why its results cannot be saved as DICOM."""
    name = volumeNode.GetName() or "The volume"
    uids = (volumeNode.GetAttribute(INSTANCE_UIDS_ATTRIBUTE) or "").split()
    if not uids:
        raise AnalysisError(notDicomReason(name), "not_dicom_source")
    if database is None:
        raise AnalysisError(
            f"'{name}' was loaded from DICOM, but Slicer's DICOM database is not open; open "
            "the DICOM module to open it, or turn off Save as DICOM.",
            "not_dicom_source",
        )
    files = [database.fileForInstance(uid) for uid in uids]
    missing = sum(1 for path in files if not path or not os.path.isfile(path))
    if missing:
        raise AnalysisError(
            f"'{name}' was loaded from DICOM, but {missing} of its {len(files)} files are not "
            "in Slicer's DICOM database (or not on disk); DICOM results need the original "
            "series: import it again in the DICOM module, or turn off Save as DICOM.",
            "not_dicom_source",
        )
    if len(files) == 1:
        return DicomSeries(files[0], None, (files[0],))
    folder = os.path.commonpath([os.path.dirname(os.path.abspath(path)) for path in files])
    return DicomSeries(folder, seriesUidOf(files[0], name), tuple(files))


def seriesUidOf(path: str, volumeName: str) -> str:
    """The Series Instance UID in a file's header (pydicom, which Slicer ships)."""
    import pydicom

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        return str(header.SeriesInstanceUID)
    except (OSError, AttributeError, pydicom.errors.InvalidDicomError) as error:
        raise AnalysisError(
            f"The DICOM file {path} of '{volumeName}' cannot be read ({error}); import the "
            "series again in the DICOM module, or turn off Save as DICOM.",
            "not_dicom_source",
        ) from None


def dicomResultFiles(outDir: Path, result: dict) -> list[Path]:
    """The DICOM objects an answer names (``outputs``' ``dicom_*``), each checked on disk."""
    outputs = result.get("outputs") or {}
    paths = [
        Path(outDir) / str(name)
        for key, name in sorted(outputs.items())
        if key.startswith(DICOM_OUTPUT_PREFIX) and name
    ]
    if not paths or not all(path.is_file() for path in paths):
        raise AnalysisError(
            "The engine did not write the DICOM results it was asked for; see the Python "
            "console's log.",
            "internal_error",
        )
    return paths


def saveToDatabase(database: DicomDatabase | None, outDir: Path, result: dict) -> list[Path]:
    """Import an answer's DICOM objects into the database; their paths as written."""
    paths = dicomResultFiles(outDir, result)
    if database is None:
        raise AnalysisError(
            "Slicer's DICOM database closed during the analysis; the DICOM results were not saved.",
            "output",
        )
    try:
        database.importFiles([str(path) for path in paths])
    except Exception as error:  # the database's own failure, in one sentence
        raise AnalysisError(
            f"The DICOM results could not be added to Slicer's DICOM database ({error}).",
            "output",
        ) from None
    lost = [path.name for path in paths if not database.fileForInstance(sopInstanceUidOf(path))]
    if lost:
        raise AnalysisError(
            f"Slicer's DICOM database did not keep {', '.join(lost)}; see the Python console's "
            "log.",
            "output",
        )
    return paths


def sopInstanceUidOf(path: Path) -> str:
    import pydicom

    header = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
    return str(header.SOPInstanceUID)
