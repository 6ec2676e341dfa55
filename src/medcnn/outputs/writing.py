"""Writing one analysis: all of its files appear together, or none of them do.

Files are written into a hidden sibling folder and moved into place at the end, ``result.json``
last, so a reader that sees ``result.json`` sees a complete result, and a failure leaves
nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

import nibabel as nib
import numpy as np

from medcnn.errors import OutputError
from medcnn.outputs.result import Result
from medcnn.volume import Volume

RESULT, HEATMAP, SEGMENTATION = "result.json", "heatmap.nii.gz", "segmentation.nii.gz"
OVERLAY, HEATMAP_PNG = "overlay.png", "heatmap.png"
# --dicom: the segmentation (SEG), the heatmap (Parametric Map) and the report (SR) as DICOM.
DICOM_SEGMENTATION, DICOM_HEATMAP, DICOM_REPORT = (
    "segmentation.dcm",
    "heatmap.dcm",
    "report.dcm",
)
DICOM_FILES = (DICOM_SEGMENTATION, DICOM_HEATMAP, DICOM_REPORT)
# Every file an analysis of any model may write beside result.json; one an earlier run left
# and this one did not write is removed, so the folder holds what its result.json lists.
OUTPUT_FILES = (HEATMAP, SEGMENTATION, OVERLAY, HEATMAP_PNG, *DICOM_FILES)


def output_folder(path: Path, option: str = "--out") -> Path:
    """The folder a command writes into, made now, or one sentence (exit code 13) saying why it
    cannot be: called before the work, a bad folder stops the command at once, not after
    minutes of work with a traceback."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"The output path {path} is a file; give a folder for {option}.")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(
            f"The output folder {path} cannot be created ({error.strerror}); choose a folder "
            f"you can write to for {option}."
        ) from error
    return path


def check_output_folder(path: Path, option: str = "--out") -> None:
    """``output_folder``'s refusal, before the work, leaving nothing behind: the folders it makes
    to find out are removed again, so a command that stops later leaves no empty folder."""
    made, folder = [], Path(path)
    while not folder.exists() and folder != folder.parent:
        made.append(folder)
        folder = folder.parent
    try:
        output_folder(path, option)
    finally:
        for folder in made:  # the deepest first
            try:
                folder.rmdir()
            except OSError:
                pass


def nifti_image(volume: Volume, dtype: type) -> nib.Nifti1Image:
    """The volume as NIfTI with its affine as both qform and sform. Floats in 0..1 written as
    ``uint8`` are stored as 0..255 with a scale slope of 1/255, which every reader applies: a
    heatmap of a 1024 x 1024 radiograph then writes seven times faster than as float32, at
    1/255 precision."""
    array = np.asarray(volume.array)
    scaled = np.dtype(dtype) == np.uint8 and np.issubdtype(array.dtype, np.floating)
    if scaled:
        array = np.round(np.clip(array, 0.0, 1.0) * 255.0)
    image = nib.Nifti1Image(array.astype(dtype), volume.affine)
    if scaled:
        image.header.set_slope_inter(1.0 / 255.0, 0.0)
    image.set_qform(volume.affine, code="scanner")
    image.set_sform(volume.affine, code="scanner")
    image.header.set_xyzt_units("mm")
    return image


def write_outputs(
    out_dir: Path,
    result: Result,
    volumes: Mapping[str, tuple[Volume, type]],
    before_result: Callable[[Result], Result] | None = None,
    pictures: Mapping[str, Callable[[Path], object]] | None = None,
) -> Result:
    """Write ``result.json``, the NIfTI ``volumes`` (file name to volume and data type: the
    heatmap, the segmentation) and any pictures atomically; returns the result as written.

    ``pictures`` maps a file name to a function that draws it at the path given (the overlay,
    the DICOM results): made with the other files in the hidden folder, so one that fails
    leaves nothing.
    ``before_result`` may complete ``result`` (timings) once everything else is written.
    """
    out_dir = Path(out_dir)
    pictures = dict(pictures or {})
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"The output path {out_dir} is a file; give a folder for --out.")
    staging = out_dir.parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
    except OSError as error:
        raise OutputError(
            f"The output folder {out_dir} cannot be created ({error.strerror}); choose a folder "
            "you can write to."
        ) from error
    try:
        for name, (volume, dtype) in volumes.items():
            nib.save(nifti_image(volume, dtype), staging / name)
        for name, draw in pictures.items():
            draw(staging / name)
        if before_result is not None:
            result = before_result(result)
        (staging / RESULT).write_text(json.dumps(result.to_json(), indent=2) + "\n")
        out_dir.mkdir(exist_ok=True)
        for name in (*volumes, *pictures, RESULT):
            os.replace(staging / name, out_dir / name)
        for name in set(OUTPUT_FILES) - set(volumes) - set(pictures):
            (out_dir / name).unlink(missing_ok=True)
    except OSError as error:
        raise OutputError(
            f"The results cannot be written to {out_dir} ({error.strerror}); free some space or "
            "choose another folder for --out."
        ) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result
