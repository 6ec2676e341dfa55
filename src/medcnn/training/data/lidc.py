"""The LIDC-IDRI volumes of interest in ``lidc_voi``: one scan cut-out, mask and labels a nodule.

Everything the readers said about a nodule is supervision: the rating (1-5), the eight
descriptors and the consensus mask. In use the network gets only the scan and the point.
"""

from __future__ import annotations

import csv
import math
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medcnn.errors import InputNotFoundError, MedCNNError, UsageError
from medcnn.nodule.checks import check_scan_at_point
from medcnn.nodule.network import DESCRIPTORS
from medcnn.volume import Volume

# Descriptor codes run 1..n; calcification's 6 means "absent", internal structure has 4 codes.
DESCRIPTOR_RANGE = {"calcification": 6, "internal_structure": 4}
SOFT_MALIGNANCY = {1: 0.0, 2: 0.1, 3: 0.5, 4: 0.9, 5: 1.0}


@dataclass
class NoduleCase:
    """One nodule: its cut-out, consensus mask, centre and the readers' labels.

    A source that lacks some of the supervision (NoduleMNIST3D has one benign/malignant label
    and no mask, rating or descriptors) leaves those fields None and gives ``source_label``;
    the ``has_*`` flags say which targets exist, and training uses only those.
    """

    name: str
    patient_id: str
    fold: int
    center_ras: np.ndarray
    rating: int | None
    diameter_mm: float
    descriptors: np.ndarray | None
    image: Volume
    mask: Volume | None
    source_label: int | None = None

    @property
    def binary_label(self) -> int | None:
        """1 malignant (rating 4-5), 0 benign (1-2), None for the indeterminate rating 3;
        the source's own label where it gives one instead of a rating."""
        if self.source_label is not None:
            return self.source_label
        if self.rating in (1, 2):
            return 0
        if self.rating in (4, 5):
            return 1
        return None

    @property
    def has_mask(self) -> bool:
        return self.mask is not None

    @property
    def has_rating(self) -> bool:
        return self.rating is not None

    @property
    def has_descriptors(self) -> bool:
        return self.descriptors is not None


REQUIRED_COLUMNS = ("image", "center_r", "center_a", "center_s", "malignancy")
NO_FOLD = -1  # a nodule outside the patient folds: one of another set, for a held-out test


def read_table(data_dir: Path) -> list[dict[str, str]]:
    """The rows of ``nodules.csv``; it needs at least ``REQUIRED_COLUMNS``."""
    table = Path(data_dir) / "nodules.csv"
    if not table.is_file():
        raise InputNotFoundError(
            f"No nodules.csv in {data_dir}: give a folder laid out like lidc_voi "
            "(nodules.csv with image, center_r, center_a, center_s and malignancy columns)."
        )
    with open(table, newline="", encoding="utf-8-sig") as handle:  # Excel writes a BOM
        reader = csv.DictReader(handle)
        rows = list(reader)
    missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise UsageError(
            f"{table} lacks the column(s) {', '.join(missing)}: every nodule needs its image, "
            "its centre in RAS millimetres and the readers' malignancy rating (1-5)."
        )
    if not rows:
        raise UsageError(f"{table} lists no nodules: add one row per nodule under its header.")
    return rows


def cell_number(row: dict[str, str], column: str, where: str) -> float:
    """A table cell as a number; a cell that is not one is refused with its row and column."""
    text = (row.get(column) or "").strip()
    if not text:
        raise UsageError(f"{where} has no {column}; write it there.")
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value):
        raise UsageError(f"{where} gives {column} as {text!r}, not a number; write the number.")
    return value


def cell_whole(row: dict[str, str], column: str, where: str, lowest: int, highest: int) -> int:
    """A table cell as a whole number in ``lowest..highest``; ``4.0`` (as spreadsheets and
    pandas write integers) counts as 4."""
    value = cell_number(row, column, where)
    if value != round(value) or not lowest <= value <= highest:
        raise UsageError(
            f"{where} gives {column} as {row[column].strip()!r}; write a whole number from "
            f"{lowest} to {highest}."
        )
    return int(round(value))


def table_fold(row: dict[str, str], where: str) -> int:
    """The row's patient fold (0-99), or ``NO_FOLD`` where the table gives none."""
    if not (row.get("fold") or "").strip():
        return NO_FOLD
    return cell_whole(row, "fold", where, 0, 99)


def normalized_descriptors(row: dict[str, str], where: str) -> np.ndarray | None:
    """The eight descriptor codes on a 0-1 scale; None where the table does not give them."""
    if any(not (row.get(name) or "").strip() for name in DESCRIPTORS):
        return None
    values = []
    for name in DESCRIPTORS:
        top = DESCRIPTOR_RANGE.get(name, 5)
        values.append((cell_number(row, name, where) - 1.0) / (top - 1.0))
    return np.clip(np.array(values, dtype=np.float32), 0.0, 1.0)


def _listed_file(data_dir: Path, relative: str, column: str) -> Path:
    path = data_dir / relative
    if not path.exists():
        raise InputNotFoundError(
            f"{path}, the {column} nodules.csv lists, does not exist; paths in nodules.csv are "
            "relative to its folder."
        )
    return path


def load_scan(data_dir: Path, relative: str) -> Volume:
    """A nodule's scan: lidc_voi's NIfTI as stored (the training path), any other format the
    click reads (NRRD, MetaImage, DICOM) through ``medcnn.reading``, with its checks."""
    from medcnn.reading import format_of, read_nifti_as_stored, read_scan

    path = _listed_file(data_dir, relative, "image")
    return read_nifti_as_stored(path) if format_of(path) == "nifti" else read_scan(path)


def load_mask(data_dir: Path, relative: str) -> Volume:
    """A nodule's mask (non-zero inside): NIfTI, NRRD or MetaImage (``medcnn.reading``)."""
    from medcnn.reading import read_label

    return read_label(_listed_file(data_dir, relative, "mask"))


def row_labels(row: dict[str, str], where: str) -> dict:
    """A table row's name, patient, fold, centre and readers' labels, every cell checked."""
    diameter = row.get("diameter_mm") or ""
    return {
        "name": Path(row["image"]).name.replace(".nii.gz", ""),
        "patient_id": row.get("patient_id") or Path(row["image"]).name,
        "fold": table_fold(row, where),
        "center_ras": np.array(
            [cell_number(row, k, where) for k in ("center_r", "center_a", "center_s")]
        ),
        "rating": cell_whole(row, "malignancy", where, 1, 5),
        "diameter_mm": cell_number(row, "diameter_mm", where) if diameter.strip() else math.nan,
        "descriptors": normalized_descriptors(row, where),
    }


def labelled_rows(data_dir: Path, limit: int | None = None) -> list[tuple[dict[str, str], dict]]:
    """The table's rows, each with its ``row_labels``: every cell is checked before any scan
    is read, so a typo in the last row fails at once."""
    table = Path(data_dir) / "nodules.csv"
    rows = read_table(data_dir)[:limit]
    return [(row, row_labels(row, f"Row {line} of {table}")) for line, row in enumerate(rows, 2)]


def load_cases(
    data_dir: Path, cache_dir: Path | None = None, limit: int | None = None
) -> list[NoduleCase]:
    """All nodules of ``nodules.csv`` in memory; pickled in ``cache_dir`` for the next run."""
    data_dir = Path(data_dir)
    cache = None if cache_dir is None else Path(cache_dir) / "lidc_cases.pkl"
    if cache is not None and cache.exists() and limit is None:
        with open(cache, "rb") as handle:
            return pickle.load(handle)
    cases = [
        NoduleCase(
            **labels,
            image=load_scan(data_dir, row["image"]),
            mask=load_mask(data_dir, row["mask"]) if row.get("mask") else None,
        )
        for row, labels in labelled_rows(data_dir, limit)
    ]
    if cache is not None and limit is None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        with open(tmp, "wb") as handle:
            pickle.dump(cases, handle)
        tmp.replace(cache)
    return cases


def split_refused(cases: list[NoduleCase]) -> tuple[list[NoduleCase], list[dict]]:
    """The cases a click would judge, and those it would refuse, each with the reason."""
    judged, refused = [], []
    for case in cases:
        try:
            check_scan_at_point(case.image, case.center_ras)
        except MedCNNError as error:
            refused.append(
                {
                    "name": case.name,
                    "fold": case.fold,
                    "label": case.binary_label,
                    "reason": str(error),
                }
            )
            continue
        judged.append(case)
    if cases and not judged:
        raise UsageError(
            f"Every one of the {len(cases)} nodules was refused, first {refused[0]['name']}: "
            f"{refused[0]['reason']} Check the table's centre columns (RAS mm)."
        )
    return judged, refused
