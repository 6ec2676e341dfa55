"""The failures a user can cause, each a sentence that says what to do and a documented exit code.

Code deep inside raises these; only the edges (command line, worker, Slicer panel) turn them into
an exit code or a message. Exit codes are listed in the README's "When things go wrong".
"""

from __future__ import annotations

import errno
import re


class MedCNNError(Exception):
    """Base class: ``str(error)`` is one clear sentence for the user."""

    exit_code = 1


class UsageError(MedCNNError):
    """A command-line argument or manifest entry is wrong (bad point, missing column)."""

    exit_code = 2


class InputNotFoundError(MedCNNError):
    """The image path does not exist, or a folder holds nothing readable."""

    exit_code = 3


class UnreadableImageError(MedCNNError):
    """The file is not a regular image file MedCNN can read, or it is truncated or corrupt."""

    exit_code = 4


class SeriesSelectionError(MedCNNError):
    """A folder holds several candidate CT series and none can be chosen by the documented rule."""

    exit_code = 5


class NotCTError(MedCNNError):
    """The image is not a CT in Hounsfield units (MR, segmentation, screenshot, values not HU)."""

    exit_code = 6


class GeometryError(MedCNNError):
    """The scan is not a usable 3D volume: 2D, 4D, too thin, tilted, uneven, or a corrupt grid."""

    exit_code = 7


class PointOutsideScanError(MedCNNError):
    """The point is outside the scan, or at its very edge, where a nodule would be cut off."""

    exit_code = 8


class ModelIntegrityError(MedCNNError):
    """The model bundle or its weights fail the integrity check, or the bundle is not trusted."""

    exit_code = 9


class ResourceLimitError(MedCNNError):
    """The scan is too large to process within the memory limit."""

    exit_code = 10


class NoTissueAtPointError(MedCNNError):
    """The point is in air: no tissue within a few millimetres of it, so no nodule is there."""

    exit_code = 12


class BatchIncompleteError(MedCNNError):
    """``medcnn batch`` finished, but at least one case failed (see its ``error`` column)."""

    exit_code = 11


class OutputError(MedCNNError):
    """The output cannot be written: no space or permission, a file, or a folder of other files."""

    exit_code = 13


class NotRadiographError(MedCNNError):
    """The image is not a frontal chest radiograph the X-ray model can judge."""

    exit_code = 14


class NotDicomSourceError(MedCNNError):
    """--dicom needs a DICOM input with the attributes its results copy; this one is not."""

    exit_code = 15


class SendError(MedCNNError):
    """The DICOM results were written but not sent: the archive refused them or did not answer."""

    exit_code = 16


class CancelledError(MedCNNError):
    """The user cancelled the analysis."""

    exit_code = 130


USER_ERRORS: tuple[type[MedCNNError], ...] = (
    UsageError,
    InputNotFoundError,
    UnreadableImageError,
    SeriesSelectionError,
    NotCTError,
    GeometryError,
    PointOutsideScanError,
    ModelIntegrityError,
    ResourceLimitError,
    BatchIncompleteError,
    NoTissueAtPointError,
    OutputError,
    NotRadiographError,
    NotDicomSourceError,
    SendError,
    CancelledError,
)

EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "unexpected internal error (rerun with --verbose and report it)",
    **{cls.exit_code: (cls.__doc__ or "").strip() for cls in USER_ERRORS},
}


def error_name(cls: type[MedCNNError]) -> str:
    """A stable snake_case name of an error type: ``NotCTError`` is ``not_ct``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", cls.__name__.removesuffix("Error")).lower()


# The exit codes by name, for front ends that do not import the engine (the worker's hello).
EXIT_CODES_BY_NAME: dict[str, int] = {
    "success": 0,
    "internal_error": MedCNNError.exit_code,
    **{error_name(cls): cls.exit_code for cls in USER_ERRORS},
}


# Errors of a disk, not of MedCNN: whatever writes (an output, a phantom, a cache), they are
# the user's to fix, exit code 13.
DISK_ERRNOS = frozenset(getattr(errno, name, -1) for name in ("ENOSPC", "EDQUOT", "EROFS", "EFBIG"))


def disk_error(error: BaseException) -> OutputError | None:
    """A full, read-only or over-quota disk's ``OSError`` as one sentence with exit code 13;
    None for any other error."""
    if not isinstance(error, OSError) or error.errno not in DISK_ERRNOS:
        return None
    return OutputError(
        f"A file cannot be written ({error.strerror}); free some space or choose a folder you "
        "can write to."
    )
