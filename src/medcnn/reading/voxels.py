"""Voxels as Hounsfield units, checked the same way by every reader: an int16 or float32 array,
no NaN, values that can be HU, a scan that fits the memory limit; and the metadata each reader
returns beside them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medcnn.errors import NotCTError, ResourceLimitError, UnreadableImageError, UsageError

MAX_SCAN_BYTES_ENV = "MEDCNN_MAX_SCAN_BYTES"
DEFAULT_MAX_SCAN_BYTES = 3 * 1024**3


def array_from_sitk(image: sitk.Image) -> tuple[np.ndarray, float, float]:
    """HU voxels as ``[i, j, k]`` with one copy only (ITK's buffer is ``[k, j, i]``)."""
    if image.GetPixelID() == sitk.sitkInt16:
        array, low, high = hounsfield_array(sitk.GetArrayFromImage(image), copy=False)
    else:
        view = sitk.GetArrayViewFromImage(image)  # valid while `image` lives: copied right here
        array, low, high = hounsfield_array(view, copy=True)
        del view
    return array.transpose(2, 1, 0), low, high


def hounsfield_array(array: np.ndarray, copy: bool) -> tuple[np.ndarray, float, float]:
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


def value_warnings(array: np.ndarray, low: float, high: float, modality_known: bool) -> list[str]:
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


def check_size(estimated_bytes: int, where: str) -> None:
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


def scan_metadata(
    path: Path,
    image_format: str,
    modality: str | None,
    warnings: list[str],
    series_uid: str | None = None,
    series_description: str | None = None,
    series_choice: str | None = None,
    source_files: list[str] | None = None,
) -> dict:
    """The input's description in every result; the series fields only for DICOM."""
    return {
        "path": str(path),
        "format": image_format,
        "modality": modality,
        "series_instance_uid": series_uid,
        "series_description": series_description,
        "series_choice": series_choice,
        "source_files": source_files,
        "warnings": warnings,
    }


def first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__
