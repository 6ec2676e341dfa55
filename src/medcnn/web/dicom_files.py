"""The web front end's DICOM database: the DICOM files it opened and the DICOM results written
since, by SOP Instance UID.

The extension's logic saves results as DICOM from a volume's original series, which it finds
through a DICOM database (``MedCNNLib.DicomResults.DicomDatabase``: ``fileForInstance``,
``importFiles``) and the instance UIDs on the volume (``DICOM.instanceUIDs``), as Slicer's DICOM
module leaves them. The browser has no DICOM database, so this index stands in its place with
the same two calls: it knows the files of the series the viewer opened (or that were uploaded),
marks the volume with its instances, and takes the objects an analysis wrote (which stay in the
analysis's folder, offered for download).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydicom
from MedCNNLib.DicomResults import INSTANCE_UIDS_ATTRIBUTE
from pydicom.errors import InvalidDicomError


class DicomFiles:
    """DICOM files by SOP Instance UID."""

    def __init__(self) -> None:
        self.files: dict[str, str] = {}

    def fileForInstance(self, sopInstanceUID: str) -> str:  # noqa: N802 - the logic's name
        return self.files.get(str(sopInstanceUID), "")

    def importFiles(self, paths: Sequence[str]) -> None:  # noqa: N802 - the logic's name
        self.index(paths)

    def index(self, paths: Sequence[str]) -> dict[str, list[str]]:
        """Remember the DICOM files among ``paths`` (the others are passed over); their
        instances by series."""
        found: dict[str, list[str]] = {}
        for path in paths:
            try:
                header = pydicom.dcmread(
                    str(path),
                    stop_before_pixels=True,
                    specific_tags=["SOPInstanceUID", "SeriesInstanceUID"],
                )
                instance, series = str(header.SOPInstanceUID), str(header.SeriesInstanceUID)
            except (OSError, AttributeError, InvalidDicomError):
                continue
            self.files[instance] = str(Path(path).resolve())
            found.setdefault(series, []).append(instance)
        return found

    def mark(self, volume_node: Any, paths: Sequence[str]) -> None:
        """Index ``paths`` and mark ``volume_node`` with the instances of the series it was
        read from: of the series among them, the largest with as many files as the volume has
        slices (Slicer's DICOM reader makes one volume of one series)."""
        slices = volume_node.GetImageData().GetDimensions()[2]
        fitting: list[list[str]] = [
            uids for uids in self.index(paths).values() if len(set(uids)) == slices
        ]
        if fitting:
            largest = sorted(fitting, key=len)[-1]
            volume_node.SetAttribute(INSTANCE_UIDS_ATTRIBUTE, " ".join(largest))
