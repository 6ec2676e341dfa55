"""Diameter and volume of known shapes, on anisotropic and flipped grids."""

from __future__ import annotations

import numpy as np

from medcnn.nodule.measure import (
    AERATED_LUNG_HU,
    NODULE_PROBABILITY,
    component_nearest_centre,
    longest_axial_diameter_mm,
    nodule_on_scan,
    volume_ml,
)
from medcnn.volume import Volume, apply_affine


def ball(affine: np.ndarray, shape: tuple[int, int, int], radius_mm: float) -> Volume:
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    world = apply_affine(affine, index.reshape(-1, 3)).reshape(*shape, 3)
    centre = apply_affine(affine, ((np.asarray(shape) - 1) / 2)[None])[0]
    return Volume((np.linalg.norm(world - centre, axis=-1) <= radius_mm).astype(np.uint8), affine)


def test_ball_volume_and_diameter_on_an_anisotropic_grid() -> None:
    affine = np.diag([-0.6, -0.6, 1.25, 1.0])
    seg = ball(affine, (60, 60, 30), radius_mm=7.5)
    assert abs(volume_ml(seg) - 4 / 3 * np.pi * 7.5**3 / 1000) < 0.06
    assert abs(longest_axial_diameter_mm(seg) - 15.0) < 0.8


def test_diameter_is_axial_even_when_the_slices_are_the_first_axis() -> None:
    # slices along the array's first axis (as some files store them)
    # i -> S (2 mm), j -> R, k -> A (0.7 mm)
    affine = np.array([[0, 0.7, 0, 0], [0, 0, 0.7, 0], [2.0, 0, 0, 0], [0, 0, 0, 1]], float)
    elongated = np.zeros((10, 40, 40), np.uint8)
    elongated[4:6, 5:35, 18:22] = 1  # 30 voxels * 0.7 mm long in-plane
    diameter = longest_axial_diameter_mm(Volume(elongated, affine))
    assert abs(diameter - 30 * 0.7) < 0.8


def test_empty_segmentation_measures_zero() -> None:
    empty = Volume(np.zeros((5, 5, 5), np.uint8), np.eye(4))
    assert longest_axial_diameter_mm(empty) == 0.0
    assert volume_ml(empty) == 0.0


def test_component_nearest_centre_ignores_other_blobs() -> None:
    mask = np.zeros((20, 20, 20), bool)
    mask[8:12, 8:12, 8:12] = True
    mask[0:3, 0:3, 0:3] = True
    kept = component_nearest_centre(mask)
    assert kept[10, 10, 10] and not kept[1, 1, 1]
    off_centre = np.zeros_like(mask)
    off_centre[15:18, 15:18, 15:18] = True
    assert component_nearest_centre(off_centre).sum() == 27


def test_the_nodule_leaves_out_aerated_lung_and_follows_the_block_of_the_scan() -> None:
    # a scan of lung with a solid nodule whose top slice is only lung; the network's
    # probability, on a block of the scan's grid, spills over the nodule onto that slice
    affine = np.diag([-0.7, -0.7, 5.0, 1.0])
    hu = np.full((40, 40, 12), -870, np.int16)
    hu[15:25, 15:25, 4:7] = 20  # the nodule, slices 4-6
    hu[15:25, 15:25, 7] = int(AERATED_LUNG_HU) + 50  # its faint cap: ground glass, kept
    scan = Volume(hu, affine)
    block_origin = np.array([10, 10, 2])
    block_affine = affine.copy()
    block_affine[:3, 3] = apply_affine(affine, block_origin[None].astype(float))[0]
    probability = np.zeros((20, 20, 8), np.float32)
    probability[4:16, 4:16, 2:7] = 0.9  # scan slices 4-8: two beyond the nodule's solid part
    mask = nodule_on_scan(Volume(probability, block_affine), scan, np.array([10.0, 10.0, 3.0]))
    slices = [int(mask[..., z].sum()) for z in range(mask.shape[2])]
    # scan slices 4-6 solid (10 x 10), slice 7 the cap (10 x 10), slice 8 only lung: left out
    assert slices == [0, 0, 100, 100, 100, 100, 0, 0]


def test_the_nodule_takes_in_its_rim_down_to_the_probability_threshold() -> None:
    # a solid nodule whose rim the network is less sure of: the rim above the threshold is
    # nodule (the consensus masks take it in), a fainter halo beyond it is not
    scan = Volume(np.full((20, 20, 20), 10, np.int16), np.eye(4))
    probability = np.zeros((20, 20, 20), np.float32)
    probability[4:16, 4:16, 4:16] = NODULE_PROBABILITY - 0.05  # the halo
    probability[6:14, 6:14, 6:14] = NODULE_PROBABILITY + 0.05  # the rim
    probability[8:12, 8:12, 8:12] = 0.95  # the core
    mask = nodule_on_scan(Volume(probability, np.eye(4)), scan, np.array([10.0, 10.0, 10.0]))
    assert mask.sum() == 8**3 and mask[6:14, 6:14, 6:14].all()
