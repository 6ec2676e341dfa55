"""A synthetic frontal chest radiograph: the chest X-ray model's embedded default input.

No real radiograph can ship in the repository, so ``medcnn demo`` and the bundle's default run
analyse this drawing (not a patient): a body, two lung fields, the heart and spine, ribs, and a
soft opacity in the right lower lung field where pneumonia would show. Its answer demonstrates
the mechanics, not the model's accuracy. The file name and the PNG's text say it is synthetic.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from medcnn.phantom import examples_cache

ROWS, COLUMNS = 640, 560
SEED = 20261206
DESCRIPTION = "MedCNN synthetic chest radiograph - not a patient"
FILE_NAME = "synthetic_chest_radiograph.png"
# Where the opacity is drawn, (row, column) in pixels: the patient's right lower lung field,
# on the image's left as radiographs are displayed.
OPACITY_CENTER = (400, 175)


def _ellipse(
    rows: np.ndarray,
    columns: np.ndarray,
    center: tuple[float, float],
    semi_axes: tuple[float, float],
    edge: float = 6.0,
) -> np.ndarray:
    """A soft-edged ellipse, 1 inside and 0 outside."""
    distance = np.sqrt(
        ((rows - center[0]) / semi_axes[0]) ** 2 + ((columns - center[1]) / semi_axes[1]) ** 2
    )
    return np.clip((1.0 - distance) * min(semi_axes) / edge + 0.5, 0.0, 1.0)


def synthetic_radiograph() -> np.ndarray:
    """(ROWS, COLUMNS) uint8 pixels, brighter where denser."""
    rows, columns = np.mgrid[0:ROWS, 0:COLUMNS].astype(float)
    body = _ellipse(rows, columns, (340, 280), (330, 250), edge=20)
    image = 0.08 + 0.5 * body
    lungs = _ellipse(rows, columns, (300, 175), (200, 95)) + _ellipse(
        rows, columns, (300, 385), (200, 95)
    )
    image -= 0.33 * np.clip(lungs, 0, 1)
    image += 0.3 * _ellipse(rows, columns, (380, 300), (110, 85))  # heart
    image += 0.25 * np.clip(1 - np.abs(columns - 280) / 22, 0, 1) * (rows > 60)  # spine
    for k in range(9):  # ribs: arcs across each lung field
        for side in (-1, 1):
            arc = 130 + 42 * k + 0.0022 * (columns - 280 - side * 40) ** 2 * side * side
            image += (
                0.09
                * np.clip(1 - np.abs(rows - arc) / 6, 0, 1)
                * body
                * (np.abs(columns - 280) > 30)
            )
    image += 0.22 * _ellipse(rows, columns, OPACITY_CENTER, (55, 45), edge=25)
    image += np.random.default_rng(SEED).normal(0, 0.012, image.shape)
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def write_radiograph_phantom(directory: Path) -> Path:
    """The synthetic radiograph as a PNG in ``directory``, written once and reused."""
    from PIL import Image, PngImagePlugin

    path = Path(directory) / FILE_NAME
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        text = PngImagePlugin.PngInfo()
        text.add_text("Description", DESCRIPTION)
        partial = path.with_name(path.name + ".partial.png")
        Image.fromarray(synthetic_radiograph()).save(partial, pnginfo=text)
        partial.replace(path)
    return path


def ensure_radiograph_phantom(directory: Path | None = None) -> Path:
    """The synthetic chest radiograph (PNG), generated once and reused."""
    return write_radiograph_phantom(
        Path(directory) if directory else examples_cache() / "radiograph"
    )


def demo_radiograph_manifest(directory: Path | None = None) -> Path:
    """A one-row manifest (no point) pointing at the synthetic radiograph: the bundle's default
    run."""
    image = ensure_radiograph_phantom(directory)
    manifest = image.parent / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "image"])
        writer.writerow(["synthetic_radiograph", image.name])
    return manifest
