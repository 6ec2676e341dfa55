"""A small lidc_voi-style folder from some of its rows, for tests that need a chosen few nodules."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path


def copy_nodules(source: Path, folder: Path, rows: list[dict], columns: list[str]) -> Path:
    """``folder`` with the rows' images and masks (a row whose ``mask`` is empty has none) and a
    ``nodules.csv`` of ``columns``."""
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for row in rows:
        shutil.copy(source / row["image"], folder / row["image"])
        if row.get("mask"):
            shutil.copy(source / row["mask"], folder / row["mask"])
    with open(folder / "nodules.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return folder
