"""Writing one analysis: all of its files appear together, or none of them do.

An analysis's files are written into a fresh hidden folder beside ``--out``
(``.NAME.partial-XXXXXXXX``), which is then renamed into place whole: one step, so a reader
sees either the earlier complete result or the new complete result, never a mixture. A reused
``--out`` that holds an earlier result (its ``result.json``) is replaced whole, with every file
in it, so no file of an earlier run (an ``overlay.png``) stays beside the new result; a folder
that holds anything else is refused before the work, so MedCNN never deletes files it did not
write. Two runs into one ``--out`` each stage their own folder and swap it in under a lock on
the parent folder, so the folder ends as one run's result, whole. A run killed on the way
(SIGKILL leaves no chance to clean up) leaves only its hidden folder, which the next run into a
folder of the same parent removes; a failure leaves nothing, not even the parent folders it
made.

``staged_output`` is the one commit path: it gives a staging folder and commits it whole.
``write_outputs`` writes an analysis (``result.json``, volumes, pictures) through it.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np

from medcnn.errors import OutputError
from medcnn.outputs.result import Result
from medcnn.volume import Volume

try:  # POSIX: locks that the kernel releases when their process dies, however it dies
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock; the folder rename is still one step
    fcntl = None  # type: ignore[assignment]

RESULT, HEATMAP, SEGMENTATION = "result.json", "heatmap.nii.gz", "segmentation.nii.gz"
OVERLAY, HEATMAP_PNG = "overlay.png", "heatmap.png"
# --dicom: the segmentation (SEG), the heatmap (Parametric Map) and the report (SR) as DICOM.
DICOM_SEGMENTATION, DICOM_HEATMAP, DICOM_REPORT = (
    "segmentation.dcm",
    "heatmap.dcm",
    "report.dcm",
)
STAGING_MARK, REPLACED_MARK = ".partial-", ".replaced-"
# The hidden folders beside an output folder NAME: ``.NAME.partial-XXXXXXXX`` while a run
# writes, ``.NAME.replaced-XXXXXXXX`` (the earlier result) for the moment of a swap.
# A file system without flock (some network ones): runs then go unlocked, the rename still one step.
NO_LOCKS = {getattr(errno, name, -1) for name in ("ENOLCK", "EOPNOTSUPP", "ENOTSUP", "EINVAL")}
LEFTOVER = re.compile(r"^\.(?P<name>.+)(?P<mark>\.partial-|\.replaced-)[0-9a-f]{8}$")


def output_folder(path: Path, option: str = "--out") -> Path:
    """The folder a command writes into, made now, or one sentence (exit code 13) saying why it
    cannot be: called before the work, a bad folder stops the command at once, not after
    minutes of work with a traceback."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)  # raises FileExistsError only for a non-folder
    except FileExistsError as error:
        raise OutputError(
            f"The output path {path} is a file; give a folder for {option}."
        ) from error
    except OSError as error:
        raise OutputError(
            f"The output folder {path} cannot be created ({error.strerror}); choose a folder "
            f"you can write to for {option}."
        ) from error
    return path


def check_output_folder(path: Path, option: str = "--out") -> None:
    """``output_folder``'s refusal, before the work, leaving nothing behind: the folders it makes
    to find out are removed again, so a command that stops later leaves no empty folder."""
    made = missing_folders(Path(path))
    try:
        output_folder(path, option)
    finally:
        remove_empty(made)


def check_result_folder(out_dir: Path, option: str = "--out") -> None:
    """Refuse, before the work, an ``--out`` that an analysis may not replace: a file, or a
    folder holding anything but an earlier result (one with ``result.json``)."""
    out_dir = Path(out_dir)
    check_output_folder(out_dir, option)
    try:
        entries = {entry.name for entry in os.scandir(out_dir)} if out_dir.is_dir() else set()
    except OSError as error:
        raise OutputError(
            f"The output folder {out_dir} cannot be read ({error.strerror}); choose a folder "
            f"you can write to for {option}."
        ) from error
    if entries and RESULT not in entries:
        raise OutputError(
            f"The output folder {out_dir} already holds files that are not an earlier MedCNN "
            f"result; give a new or empty folder for {option} (MedCNN replaces only a folder "
            "of its own results, whole)."
        )


@contextmanager
def staged_output(out_dir: Path, option: str = "--out") -> Iterator[Path]:
    """A fresh, empty staging folder for everything one analysis writes, committed whole as
    ``out_dir`` when the ``with`` block ends without an error, and removed otherwise.

    An ``OSError`` inside the block or in the commit (no space, no permission) becomes one
    sentence with exit code 13; any other error passes through, leaving nothing behind."""
    out_dir = Path(out_dir)
    check_result_folder(out_dir, option)
    made = missing_folders(out_dir.parent)
    staging: Path | None = None
    committed = False
    try:
        try:
            out_dir.parent.mkdir(parents=True, exist_ok=True)
            with parent_lock(out_dir):
                remove_leftovers(out_dir)
                name = f".{out_dir.name}{STAGING_MARK}{uuid.uuid4().hex[:8]}"
                staging = out_dir.with_name(name)
                staging.mkdir()  # the user's umask, as the folder it becomes
                alive = hold(staging)  # held while this run lives: leftovers are told by it
        except OSError as error:
            raise OutputError(
                f"The output folder {out_dir} cannot be created ({error.strerror}); choose a "
                f"folder you can write to for {option}."
            ) from error
        try:
            yield staging
            commit(staging, out_dir, option)
            committed = True
        except OSError as error:
            raise OutputError(
                f"The results cannot be written to {out_dir} ({error.strerror}); free some space "
                f"or choose another folder for {option}."
            ) from error
        finally:
            if alive is not None:
                os.close(alive)
    finally:
        if not committed:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            remove_empty(made)


def commit(staging: Path, out_dir: Path, option: str = "--out") -> None:
    """Rename ``staging`` into place as ``out_dir``, replacing an earlier result whole."""
    with parent_lock(out_dir):
        remove_leftovers(out_dir)
        check_result_folder(out_dir, option)  # again: another run may have written meanwhile
        if not out_dir.is_dir():
            os.rename(staging, out_dir)
            return
        replaced = out_dir.with_name(f".{out_dir.name}{REPLACED_MARK}{uuid.uuid4().hex[:8]}")
        os.rename(out_dir, replaced)
        try:
            os.rename(staging, out_dir)
        except OSError:
            os.rename(replaced, out_dir)
            raise
    shutil.rmtree(replaced, ignore_errors=True)


def remove_leftovers(out_dir: Path) -> None:
    """Remove what killed runs left beside ``out_dir`` (called under ``parent_lock``), for any
    output folder of this parent (3D Slicer gives each click a new one): staging folders no
    live process holds, and an earlier result set aside during a swap, which is put back
    where the swap never finished."""
    for entry in list(os.scandir(out_dir.parent)):
        match = LEFTOVER.match(entry.name)
        if match is None or not entry.is_dir(follow_symlinks=False):
            continue
        path, target = Path(entry.path), out_dir.parent / match["name"]
        if match["mark"] == STAGING_MARK and not held(path):
            shutil.rmtree(path, ignore_errors=True)
        elif match["mark"] == REPLACED_MARK:
            if target.exists():
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.rename(path, target)


@contextmanager
def parent_lock(out_dir: Path) -> Iterator[None]:
    """An exclusive lock on ``out_dir``'s parent folder, for the short steps that look at or
    rename the folders beside ``out_dir`` (none where the system has no such locks)."""
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    descriptor = os.open(out_dir.parent, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        except OSError as error:
            if error.errno not in NO_LOCKS:
                raise
        yield
    finally:
        os.close(descriptor)


def hold(folder: Path) -> int | None:
    """Lock ``folder`` for as long as the returned descriptor is open (or the process lives);
    None where the system has no such locks (Windows, some network file systems)."""
    if fcntl is None:  # pragma: no cover - Windows
        return None
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno not in NO_LOCKS:
            os.close(descriptor)
            raise
    return descriptor


def held(folder: Path) -> bool:
    """Whether a live run may hold ``folder`` (``hold``); where no lock can tell, it may."""
    if fcntl is None:  # pragma: no cover - Windows
        return True
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:  # held, or no locks here to tell: kept either way
        return error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES, *NO_LOCKS)
    finally:
        os.close(descriptor)
    return False


def missing_folders(folder: Path) -> list[Path]:
    """The folders that making ``folder`` would create, the deepest first."""
    made, folder = [], Path(folder)
    while not folder.exists() and folder != folder.parent:
        made.append(folder)
        folder = folder.parent
    return made


def remove_empty(folders: list[Path]) -> None:
    """Remove the folders a failed command made, the deepest first, where they are empty."""
    for folder in folders:
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
    heatmap, the segmentation) and any other files through ``staged_output``: all or none.

    ``pictures`` maps a file name to a function that writes that file at the path given (the
    overlay, a heatmap picture, the DICOM results, any further output), in the staging folder
    with the others.
    ``before_result`` may complete ``result`` (timings) once everything else is written.
    """
    with staged_output(Path(out_dir)) as staging:
        for name, (volume, dtype) in volumes.items():
            nib.save(nifti_image(volume, dtype), staging / name)
        for name, draw in (pictures or {}).items():
            draw(staging / name)
        if before_result is not None:
            result = before_result(result)
        (staging / RESULT).write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return result
