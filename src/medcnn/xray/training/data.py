"""The chest radiograph training data: Kermany et al.'s pediatric set and the NIH adults.

Each image is read once through the engine's reader and preprocessing
(``medcnn.xray.preprocessing``, the bundle's numbers) into a cache, so training never decodes a
JPEG twice and sees exactly what a click would. Folds are by patient: NIH's own ``fold`` column,
and for Kermany's training split five folds drawn here from the children's identifiers (a
pneumonia file ``personNNN_...`` is child NNN; a normal one ``[NORMAL2-]IM-PPPP-...`` is child
PPPP). Kermany's test split is never used to choose anything.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medcnn.reading.radiograph import read_picture
from medcnn.xray.preprocessing import RadiographSpec, to_model_input

KERMANY_FOLDS = 5
_FOLD_SEED = 20261206
_PNEUMONIA_CHILD = re.compile(r"^person(\d+)_")
_NORMAL_CHILD = re.compile(r"^(?:NORMAL2-)?IM-(\d+)-")


@dataclass(frozen=True)
class RadiographRecord:
    path: Path
    label: int  # 1 pneumonia, 0 normal / no finding
    source: str  # "kermany" or "nih"
    split: str  # "train" (cross-validated) or "test" (Kermany's test split)
    patient: str
    fold: int  # 0..4 for "train"; -1 for "test"


def kermany_patient(name: str) -> str:
    """The child a Kermany file belongs to."""
    match = _PNEUMONIA_CHILD.match(name)
    if match:
        return f"pneumonia-{int(match.group(1))}"
    match = _NORMAL_CHILD.match(name)
    if match:
        return f"normal-{int(match.group(1))}"
    raise ValueError(f"Cannot tell the child of Kermany file {name}.")


def kermany_records(root: Path) -> list[RadiographRecord]:
    records = []
    for split in ("train", "test"):
        files = sorted((root / split).glob("*/*.jpeg"))
        patients = sorted({kermany_patient(f.name) for f in files})
        order = np.random.default_rng(_FOLD_SEED).permutation(len(patients))
        fold_of = {p: int(order[i]) % KERMANY_FOLDS for i, p in enumerate(patients)}
        for path in files:
            patient = kermany_patient(path.name)
            records.append(
                RadiographRecord(
                    path=path,
                    label=int(path.parent.name == "PNEUMONIA"),
                    source="kermany",
                    split=split,
                    patient=patient,
                    fold=fold_of[patient] if split == "train" else -1,
                )
            )
    return records


def nih_records(root: Path) -> list[RadiographRecord]:
    with open(root / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [
        RadiographRecord(
            path=root / row["image"],
            label=int(row["label"] == "pneumonia"),
            source="nih",
            split="train",
            patient=f"nih-{row['patient_id']}",
            fold=int(row["fold"]),
        )
        for row in rows
    ]


def all_records(data_root: Path) -> list[RadiographRecord]:
    """Every radiograph of ``xray/`` (the folder holding ``kermany/`` and ``nih/``)."""
    return kermany_records(data_root / "kermany") + nih_records(data_root / "nih")


@dataclass
class RadiographCache:
    """The preprocessed inputs (N, size, size) float16 and each one's record fields."""

    images: torch.Tensor
    labels: torch.Tensor
    source: np.ndarray
    split: np.ndarray
    fold: np.ndarray
    patient: np.ndarray
    names: np.ndarray


def build_cache(data_root: Path, spec: RadiographSpec, cache_path: Path) -> RadiographCache:
    """Read and preprocess every image once; reuse the cache while the spec is the same."""
    key = f"{spec.size}-{spec.low_percentile}-{spec.high_percentile}"
    if cache_path.exists():
        saved = np.load(cache_path, allow_pickle=False)
        if str(saved["key"]) == key:
            return _from_arrays(saved)
    records = all_records(data_root)
    images = np.zeros((len(records), spec.size, spec.size), np.float16)
    for i, record in enumerate(records):
        images[i] = to_model_input(read_picture(record.path).pixels, spec)[0].numpy()
    arrays = {
        "key": np.array(key),
        "images": images,
        "labels": np.array([r.label for r in records], np.int64),
        "source": np.array([r.source for r in records]),
        "split": np.array([r.split for r in records]),
        "fold": np.array([r.fold for r in records], np.int64),
        "patient": np.array([r.patient for r in records]),
        "names": np.array([str(r.path.relative_to(data_root)) for r in records]),
    }
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    partial = cache_path.with_name(cache_path.name + ".partial.npz")
    np.savez(partial, **arrays)  # type: ignore[arg-type]
    partial.replace(cache_path)
    return _from_arrays(arrays)


def _from_arrays(arrays: Mapping[str, np.ndarray]) -> RadiographCache:
    return RadiographCache(
        images=torch.from_numpy(np.asarray(arrays["images"])),
        labels=torch.from_numpy(np.asarray(arrays["labels"])),
        source=np.asarray(arrays["source"]),
        split=np.asarray(arrays["split"]),
        fold=np.asarray(arrays["fold"]),
        patient=np.asarray(arrays["patient"]),
        names=np.asarray(arrays["names"]),
    )
