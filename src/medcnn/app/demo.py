"""The embedded default inputs: a synthetic CT phantom and a synthetic chest radiograph.

Real images cannot ship in the repository, so ``medcnn demo`` and each bundle's default run
analyse generated ones (a lung-like CT with one nodule; a drawn radiograph with an opacity),
clearly labelled synthetic.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from medcnn.phantom import make_phantom
from medcnn.radiograph_phantom import write_radiograph_phantom


def phantom_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "medcnn" / "phantom"


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


def ensure_radiograph_phantom(directory: Path | None = None) -> Path:
    """The synthetic chest radiograph (PNG), generated once and reused."""
    return write_radiograph_phantom(
        Path(directory) if directory else phantom_dir().parent / "radiograph"
    )


def demo_radiograph_manifest(directory: Path | None = None) -> Path:
    """A one-row manifest (no point) pointing at the synthetic radiograph."""
    image = ensure_radiograph_phantom(directory)
    manifest = image.parent / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "image"])
        writer.writerow(["synthetic_radiograph", image.name])
    return manifest
