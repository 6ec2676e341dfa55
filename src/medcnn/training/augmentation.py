"""Random variation of a training example, applied where the patch is sampled.

Rotations, flips and a jittered centre are folded into the sampling grid itself, so an
augmented patch costs one interpolation of the original scan, not a chain of resamplings.
No scaling: a nodule's size is the strongest sign of malignancy and must not be blurred.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Augmentation:
    """How far a training example may vary; the numbers are ``train.json``'s
    (``settings.augmentation``, read by ``medcnn.training.recipe``)."""

    max_shift_mm: float
    max_tilt_deg: float
    hu_shift: float
    hu_noise: float
    box_margin_mm: tuple[float, float]
    box_min_inplane_mm: tuple[float, float]

    def __post_init__(self) -> None:
        # MONAI's ConfigParser passes JSON's lists; the ranges compare and hash as tuples.
        for name in ("box_margin_mm", "box_min_inplane_mm"):
            object.__setattr__(self, name, tuple(getattr(self, name)))


def random_rotation(rng: np.random.Generator, max_tilt_deg: float) -> np.ndarray:
    """Any in-plane angle, a small tilt out of it, and random flips of the three axes."""
    yaw = rng.uniform(0, 2 * np.pi)
    tilt_x, tilt_y = np.deg2rad(rng.uniform(-max_tilt_deg, max_tilt_deg, size=2))
    cz, sz = np.cos(yaw), np.sin(yaw)
    cx, sx = np.cos(tilt_x), np.sin(tilt_x)
    cy, sy = np.cos(tilt_y), np.sin(tilt_y)
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    flips = np.diag(rng.choice([-1.0, 1.0], size=3))
    return rz @ rx @ ry @ flips
