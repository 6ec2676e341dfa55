"""Radiographs in: one 2D image, brighter where denser, with its pixel spacing when known.

PNG and JPEG (grey or RGB) are read through Pillow. Every reader returns a ``Radiograph`` whose
``pixels`` are (rows, columns) float32, row 0 at the top of the film as displayed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from medcnn.errors import UnreadableImageError

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class Radiograph:
    """A radiograph's pixels (rows, columns), brighter where denser, and what is known of it."""

    pixels: np.ndarray
    # (row, column) spacing in mm where the file states it, else None.
    spacing_mm: tuple[float, float] | None = None
    source_format: str = ""
    metadata: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        rows, columns = self.pixels.shape
        return int(rows), int(columns)


def read_picture(path: Path) -> Radiograph:
    """A PNG or JPEG radiograph; colour is averaged to grey."""
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode in ("I;16", "I;16B", "I;16L", "I", "F", "L"):
                pixels = np.asarray(image, dtype=np.float32)
            else:
                pixels = np.asarray(image.convert("RGB"), dtype=np.float32).mean(axis=2)
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise UnreadableImageError(
            f"{path} cannot be read as a PNG or JPEG image ({error}); check the file."
        ) from error
    return Radiograph(
        pixels=np.ascontiguousarray(pixels, dtype=np.float32),
        source_format=Path(path).suffix.lower().lstrip("."),
        metadata={"mode": mode},
    )
