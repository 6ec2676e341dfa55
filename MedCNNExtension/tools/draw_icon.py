"""Draw the module's 128x128 icon: an axial chest slice, two lungs, and a nodule glowing in the
heat colour map inside its green segmentation ring. Run from the repository root::

    python MedCNNExtension/tools/draw_icon.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 128
SUPERSAMPLING = 4
OUTPUT = Path("MedCNNExtension/MedCNN/Resources/Icons/MedCNN.png")


def draw(size: int = SIZE, supersampling: int = SUPERSAMPLING) -> Image.Image:
    n = size * supersampling
    y, x = (np.mgrid[0:n, 0:n] + 0.5) / supersampling * (128.0 / size)
    rgba = np.zeros((n, n, 4))

    def ellipse(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0

    corner = 22.0
    dx = np.clip(np.abs(x - 64) - (64 - corner), 0, None)
    dy = np.clip(np.abs(y - 64) - (64 - corner), 0, None)
    tile = dx**2 + dy**2 <= corner**2
    rgba[tile] = (0.10, 0.14, 0.20, 1.0)
    rgba[tile & ellipse(64, 66, 54, 46), :3] = (0.62, 0.62, 0.60)  # body
    for cx in (40, 88):
        rgba[ellipse(cx, 64, 19, 33), :3] = (0.16, 0.20, 0.27)  # lungs
    rgba[ellipse(64, 100, 8, 7), :3] = (0.92, 0.92, 0.88)  # spine

    distance = np.hypot(x - 86, y - 50)
    heat = np.exp(-((distance / 15.0) ** 2))
    hot = np.stack(
        [np.clip(3 * heat, 0, 1), np.clip(3 * heat - 1, 0, 1), np.clip(3 * heat - 2, 0, 1)], -1
    )
    alpha = (np.clip(heat * 1.4, 0, 0.95) * (heat > 0.12))[..., None]
    rgba[..., :3] = rgba[..., :3] * (1 - alpha) + hot * alpha
    rgba[distance <= 6.5, :3] = (1.0, 0.97, 0.80)  # nodule
    rgba[(distance >= 9.0) & (distance <= 11.5), :3] = (0.12, 0.85, 0.45)  # segmentation
    rgba[..., 3] = tile

    pixels = (np.clip(rgba, 0, 1) * 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGBA").resize((size, size), Image.LANCZOS)


if __name__ == "__main__":
    draw().save(OUTPUT, optimize=True)
    print(f"wrote {OUTPUT}")
