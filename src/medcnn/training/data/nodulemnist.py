"""NoduleMNIST3D (MedMNIST v2), the benchmark's LIDC-IDRI nodules as 28 mm cubes with one label.

Users download ``nodulemnist3d.npz`` themselves (https://medmnist.com); it holds
``{train,val,test}_images`` (N, 28, 28, 28) uint8 and ``{train,val,test}_labels`` (N, 1),
0 benign (readers' rating 1-2) and 1 malignant (4-5). Each nodule becomes a ``NoduleCase`` that
the same training and inference code reads, under these documented assumptions:

- Geometry: MedMNIST resampled the scans to 1 mm and cut a 28 mm cube centred on the nodule.
  The file keeps no coordinates, so each cube is a ``Volume`` of 1 mm voxels centred on the
  world origin, array axes i, j, k along R, A, S (the file does not say which axis is axial;
  training's rotations and flips make the model indifferent to that), and the nodule's centre
  is the origin, the cube's centre.
- Intensity: the file stores 0-255 without the HU window it came from. MedCNN reads 0..255 as
  its own network window, the bundle's ``PatchSpec.hu_window`` (-1000..400 HU), linearly. The
  HU values are therefore approximate, but what the network sees is exact: its first channel
  becomes the file's value / 255, neither clipped nor stretched, which is all a model trained
  on this file needs. Only a model trained on real scans judging these cubes depends on the
  guess.
- Splits: MedMNIST's own. ``fold`` keeps them apart from LIDC's patient folds (0-4) with
  negative numbers: -1 train, -2 val, -3 test (``SPLIT_FOLDS``).
- Targets: the file's label only. There is no mask, rating or descriptor, so the cases carry
  none (``has_mask``/``has_rating``/``has_descriptors`` are False) and training leaves those
  terms out for them instead of inventing values.
"""

from __future__ import annotations

import hashlib
import zipfile
import zlib
from pathlib import Path

import numpy as np

from medcnn.errors import GeometryError, InputNotFoundError, UnreadableImageError
from medcnn.nodule.preprocessing import PatchSpec
from medcnn.training.data.lidc import NoduleCase
from medcnn.volume import Volume

OFFICIAL_MD5 = "8755a7e9e05a4d9ce80a24c3e7a256f3"
SPLIT_SIZES = {"train": 1158, "val": 165, "test": 310}
SPLIT_FOLDS = {"train": -1, "val": -2, "test": -3}
CUBE = 28
SPACING_MM = 1.0
DOWNLOAD_HINT = "download nodulemnist3d.npz (28x28x28) from https://medmnist.com"


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cube_affine() -> np.ndarray:
    """Index -> RAS for a 28 mm cube of 1 mm voxels whose centre is the origin."""
    affine = np.diag([SPACING_MM, SPACING_MM, SPACING_MM, 1.0])
    affine[:3, 3] = -SPACING_MM * (CUBE - 1) / 2.0
    return affine


def to_hu(values: np.ndarray, spec: PatchSpec) -> np.ndarray:
    """0..255 -> the network's HU window (-1000..400 HU), linearly (see the module's docstring
    for why)."""
    hu_min, hu_max = spec.hu_window
    scale = (hu_max - hu_min) / 255.0
    return (hu_min + np.asarray(values, dtype=np.float32) * scale).astype(np.float32)


def _read_arrays(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Images and 0/1 labels of each split, after checking the archive's keys and shapes."""
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise UnreadableImageError(
            f"{path} is not an npz archive ({type(error).__name__}); NoduleMNIST3D comes as "
            f"nodulemnist3d.npz: {DOWNLOAD_HINT}."
        ) from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise UnreadableImageError(
            f"{path} is a single NumPy array, not an npz archive; {DOWNLOAD_HINT}."
        )
    with archive:
        wanted = [f"{split}_{part}" for split in SPLIT_SIZES for part in ("images", "labels")]
        missing = [key for key in wanted if key not in archive.files]
        if missing:
            raise UnreadableImageError(
                f"{path} is an npz archive but not NoduleMNIST3D: it lacks {', '.join(missing)} "
                f"(it has {', '.join(archive.files) or 'nothing'}); {DOWNLOAD_HINT}."
            )
        try:
            arrays = {key: archive[key] for key in wanted}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
            raise UnreadableImageError(
                f"{path} is damaged: its arrays cannot be read ({type(error).__name__}); "
                f"{DOWNLOAD_HINT} again."
            ) from error
    splits = {}
    for split in SPLIT_SIZES:
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 4 or images.shape[1:] != (CUBE, CUBE, CUBE):
            raise GeometryError(
                f"{path}'s {split}_images have the shape {images.shape}, not (N, 28, 28, 28) "
                f"volumes: MedCNN reads the 28x28x28 NoduleMNIST3D, {DOWNLOAD_HINT}."
            )
        labels = labels.reshape(-1, 1) if labels.ndim == 1 else labels
        if labels.shape != (len(images), 1) or not np.isin(labels, (0, 1)).all():
            raise UnreadableImageError(
                f"{path}'s {split}_labels are not one 0/1 label for each of its {len(images)} "
                f"images (shape {labels.shape}); {DOWNLOAD_HINT}."
            )
        splits[split] = (images, labels[:, 0].astype(int))
    return splits


def _verify(path: Path, sizes: dict[str, int]) -> None:
    """The official file, byte for byte; the sentence says whether it is another file or damaged."""
    actual = file_md5(path)
    if actual == OFFICIAL_MD5:
        return
    if sizes != SPLIT_SIZES:
        found, official = ("/".join(str(n[s]) for s in SPLIT_SIZES) for n in (sizes, SPLIT_SIZES))
        raise UnreadableImageError(
            f"{path} is not the official nodulemnist3d.npz: its MD5 is {actual}, not "
            f"{OFFICIAL_MD5}, and its train/val/test splits hold {found} nodules, not {official}, "
            f"so its numbers would not be comparable with the MedMNIST table; {DOWNLOAD_HINT}, "
            "or turn verification off for a subset of your own."
        )
    raise UnreadableImageError(
        f"{path} has the official split sizes but its MD5 is {actual}, not {OFFICIAL_MD5}: "
        f"the file is corrupted or modified; {DOWNLOAD_HINT} again."
    )


def nodule_case(
    image: np.ndarray, label: int, split: str, index: int, spec: PatchSpec
) -> NoduleCase:
    """One cube as a case: 1 mm voxels centred on the origin, the file's label and nothing else."""
    return NoduleCase(
        name=f"nodulemnist3d_{split}_{index:04d}",
        patient_id="",  # the file does not say which patient a nodule comes from
        fold=SPLIT_FOLDS[split],
        center_ras=np.zeros(3),
        rating=None,
        diameter_mm=float("nan"),
        descriptors=None,
        image=Volume(
            to_hu(image, spec), cube_affine(), {"source": "nodulemnist3d", "split": split}
        ),
        mask=None,
        source_label=int(label),
    )


def load_nodulemnist3d(
    path: Path | str, spec: PatchSpec, verify: bool = True
) -> dict[str, list[NoduleCase]]:
    """The cases of each split (``train``, ``val``, ``test``) of a ``nodulemnist3d.npz``, its
    0..255 read as ``spec``'s HU window (the bundle's preprocessing).

    ``verify`` (the default) accepts only the official file (its MD5 and split sizes), so that
    the numbers can be compared with the MedMNIST table; ``verify=False`` checks only that the
    archive has NoduleMNIST3D's arrays, for tests and subsets.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not the file" if path.is_dir() else "does not exist"
        raise InputNotFoundError(
            f"The NoduleMNIST3D file {path} {what}; {DOWNLOAD_HINT} and pass the file's path."
        )
    arrays = _read_arrays(path)
    if verify:
        _verify(path, {split: len(images) for split, (images, _) in arrays.items()})
    return {
        split: [
            nodule_case(image, label, split, i, spec)
            for i, (image, label) in enumerate(zip(images, labels, strict=True))
        ]
        for split, (images, labels) in arrays.items()
    }
