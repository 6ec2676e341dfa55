"""The CT model's embedded default input: a synthetic CT phantom (the chest X-ray model's is in
``medcnn.xray.phantom``).

Real images cannot ship in the repository, so ``medcnn demo`` and each bundle's default run
analyse generated ones (a lung-like CT with one nodule; a drawn radiograph with an opacity),
clearly labelled synthetic.
"""

from __future__ import annotations

import csv
from pathlib import Path

from medcnn.phantom import examples_cache, make_phantom


def phantom_dir() -> Path:
    return examples_cache() / "phantom"


def ensure_phantom(directory: Path | None = None) -> dict:
    """The phantom's files and nodule centre, generated once and reused."""
    directory = Path(directory) if directory else phantom_dir()
    return make_phantom(directory)


def demo_manifest(directory: Path | None = None) -> Path:
    """A one-row manifest pointing at the phantom's DICOM series and nodule."""
    info = ensure_phantom(directory)
    manifest = Path(info["dicom_dir"]).parent / "manifest.csv"
    r, a, s = info["nodule_center_ras"]
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "image", "r", "a", "s"])
        writer.writerow(["synthetic_phantom", Path(info["dicom_dir"]).name, r, a, s])
    return manifest
