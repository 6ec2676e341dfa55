"""The measurements the combining head reads off each member's segmentation."""

from __future__ import annotations

import math

import numpy as np
import torch

from medcnn.bundle import load_patch_spec
from medcnn.nodule.features import NAMES, nodule_features
from medcnn.nodule.preprocessing import normalize_hu

SPEC = load_patch_spec()  # the shipped bundle's preprocessing


def _ball(radius: float, n: int = 32) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(n) - (n - 1) / 2] * 3, indexing="ij"))
    return (np.sqrt((grid**2).sum(0)) <= radius).astype(np.float32)


def _measure(hu: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    window = torch.from_numpy(normalize_hu(hu, SPEC))[None]
    values = nodule_features(window, torch.from_numpy(mask)[None, None], *SPEC.hu_window)[0, 0]
    return dict(zip(NAMES, values.tolist(), strict=True))


def test_a_solid_ball_measures_its_size_and_density() -> None:
    ball = _ball(6.0)
    hu = np.where(ball > 0, 40.0, -850.0).astype(np.float32)
    measured = _measure(hu, ball)
    assert abs(math.expm1(measured["log_volume"]) - ball.sum()) < 1e-3
    assert abs(math.expm1(measured["log_axial_area"]) - ball.sum((0, 1)).max()) < 1e-3
    assert abs(math.expm1(measured["log_axial_area"]) - math.pi * 36) < 0.1 * math.pi * 36
    assert abs(measured["mean_hu"] - 40.0) < 1e-3
    assert measured["hu_spread"] < 1e-2
    assert measured["calcified_share"] == 0.0
    assert measured["ground_glass_share"] == 0.0
    assert abs(measured["brightest_hu"] - 40.0) < 1e-3


def test_calcification_and_ground_glass_are_told_apart() -> None:
    ball = _ball(5.0)
    core = _ball(2.5)
    calcified = np.where(core > 0, 900.0, np.where(ball > 0, 30.0, -850.0)).astype(np.float32)
    ground_glass = np.where(ball > 0, -600.0, -850.0).astype(np.float32)
    hard, soft = _measure(calcified, ball), _measure(ground_glass, ball)
    assert abs(hard["calcified_share"] - core.sum() / ball.sum()) < 1e-6
    assert abs(hard["brightest_hu"] - 900.0) < 1e-3  # calcium's own density, above the CNN's window
    assert soft["calcified_share"] == 0.0 and soft["ground_glass_share"] == 1.0
    assert soft["mean_hu"] < -550 < hard["mean_hu"]


def test_a_spiculated_outline_is_less_compact_than_a_ball() -> None:
    ball = _ball(5.0)
    spiky = ball.copy()
    spiky[15:17, 15:17, :] = 1.0  # two spikes along the S axis
    spiky[:, 15:17, 15:17] = 1.0
    hu = np.full(ball.shape, 20.0, dtype=np.float32)
    assert _measure(hu, spiky)["compactness"] < 0.8 * _measure(hu, ball)["compactness"]


def test_an_empty_segmentation_gives_finite_numbers() -> None:
    hu = np.full((32, 32, 32), -900.0, dtype=np.float32)
    measured = _measure(hu, np.zeros((32, 32, 32), dtype=np.float32))
    assert all(math.isfinite(v) for v in measured.values())
    assert measured["log_volume"] == 0.0


def test_densities_are_read_up_to_the_inputs_top_and_no_further() -> None:
    ball = _ball(5.0)
    metal = np.where(ball > 0, 3000.0, -850.0).astype(np.float32)
    assert _measure(metal, ball)["brightest_hu"] == SPEC.measured_hu_max
