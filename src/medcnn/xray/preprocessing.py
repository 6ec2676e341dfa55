"""The one definition of what the radiograph network sees, shared by training and inference.

The whole radiograph is resized to ``size`` x ``size`` pixels without keeping its aspect ratio,
as the pediatric training images were resized by their publishers, with an antialiased bilinear
filter. Intensities are scaled per image between two percentiles to 0..1: radiographs carry no
absolute unit (exposure, detector and processing differ between sites), and a per-image scale
makes an 8-bit PNG, a JPEG and a 16-bit DICOM of the same film alike.

The way back, ``to_image_grid``, resizes a map of the network's grid onto the input's pixels, so
a heatmap lands where the network looked whatever the image's size and aspect.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from medcnn.tensors import to_array, to_tensor


@dataclass(frozen=True)
class RadiographSpec:
    """The network's input. No defaults: the numbers are the bundle's (``inference.json``'s
    ``preprocessing``, read by ``medcnn.bundle.load_radiograph_spec``)."""

    size: int
    low_percentile: float
    high_percentile: float

    @property
    def shape(self) -> tuple[int, int]:
        return (self.size, self.size)


def to_model_input(pixels: np.ndarray, spec: RadiographSpec) -> torch.Tensor:
    """A (rows, columns) radiograph, brighter where denser, as the network's (1, size, size)
    input in 0..1."""
    image = to_tensor(np.asarray(pixels, dtype=np.float32))
    if image.ndim != 2:
        raise ValueError(
            f"A radiograph is one 2D image, not an array of shape {tuple(image.shape)}."
        )
    resized = F.interpolate(
        image[None, None], size=spec.shape, mode="bilinear", align_corners=False, antialias=True
    )[0]
    low, high = torch.quantile(
        resized.flatten(),
        torch.tensor([spec.low_percentile / 100.0, spec.high_percentile / 100.0]),
    )
    scale = float(high - low)
    if scale <= 0:
        return torch.zeros_like(resized)
    return ((resized - low) / scale).clamp_(0.0, 1.0)


def to_image_grid(grid_map: torch.Tensor, rows: int, columns: int) -> np.ndarray:
    """A (h, w) map over the network's input, resized onto the radiograph's (rows, columns)."""
    resized = F.interpolate(
        grid_map[None, None].float(), size=(rows, columns), mode="bilinear", align_corners=False
    )
    return to_array(resized[0, 0])
