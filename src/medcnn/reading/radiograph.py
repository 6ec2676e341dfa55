"""Radiographs in: one 2D image, brighter where denser, on its own pixel grid.

PNG and JPEG (grey or RGB) are read through Pillow. Every reader returns a ``Radiograph`` whose
``grid`` keeps the input's own pixel grid and world geometry, so that a heatmap written on it
overlays the input exactly (in 3D Slicer too).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from medcnn.errors import UnreadableImageError
from medcnn.volume import LPS_TO_RAS, Volume

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class Radiograph:
    """A radiograph on its own pixel grid.

    ``grid.array`` is (columns, rows, 1), the axis order of ITK and 3D Slicer (i along a row,
    j down the columns), and ``grid.affine`` maps those indices to RAS mm exactly as the input
    file places them (for a PNG or JPEG, as ITK and Slicer do: origin 0, spacing 1 mm unless
    known, i to the patient's left in LPS). Values are brighter where denser, float32.
    """

    grid: Volume
    source_format: str
    spacing_known: bool = False
    metadata: dict = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @property
    def pixels(self) -> np.ndarray:
        """(rows, columns) as displayed, row 0 at the top."""
        return self.grid.array[:, :, 0].T

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns)."""
        columns, rows, _ = self.grid.shape
        return rows, columns


def picture_affine(row_spacing: float = 1.0, column_spacing: float = 1.0) -> np.ndarray:
    """Where ITK (and so 3D Slicer) puts a 2D picture: origin 0, identity direction in LPS."""
    return LPS_TO_RAS @ np.diag([column_spacing, row_spacing, 1.0, 1.0])


def from_pixels(pixels: np.ndarray, affine: np.ndarray, source_format: str, **kwargs) -> Radiograph:
    """A ``Radiograph`` of (rows, columns) pixels placed by ``affine``."""
    grid = np.ascontiguousarray(np.asarray(pixels, dtype=np.float32).T[:, :, None])
    return Radiograph(grid=Volume(grid, affine), source_format=source_format, **kwargs)


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
    return from_pixels(
        pixels, picture_affine(), Path(path).suffix.lower().lstrip("."), metadata={"mode": mode}
    )


def read_radiograph(path: Path | str) -> Radiograph:
    """Placeholder until the full reader lands: PNG and JPEG only."""
    return read_picture(Path(path))
