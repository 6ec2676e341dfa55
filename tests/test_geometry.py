"""Geometry is where such tools go wrong: the patch must be centred on the world point, and
what is written back must land on the scan's own voxels at the same world positions."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from medcnn.bundle import load_patch_spec
from medcnn.nodule.preprocessing import (
    patch_to_scan,
    resample,
    sample_patch,
    scan_subgrid,
)
from medcnn.volume import Volume, apply_affine, ras_point

SPEC = load_patch_spec()  # the shipped bundle's preprocessing


def rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cz, sz, cy, sy, cx, sx = (
        np.cos(yaw),
        np.sin(yaw),
        np.cos(pitch),
        np.sin(pitch),
        np.cos(roll),
        np.sin(roll),
    )
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return rz @ ry @ rx


def scan_affine(
    flips: tuple[int, int, int],
    angles: tuple[float, float, float],
    spacing: tuple[float, float, float],
    origin: tuple[float, float, float],
) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = rotation(*angles) @ np.diag(flips) @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def blob_scan(
    affine: np.ndarray,
    shape: tuple[int, int, int],
    centre_index: np.ndarray,
    radius_mm: float = 3.0,
) -> Volume:
    """A bright ball of ``radius_mm`` around a voxel, on any grid."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    world = apply_affine(affine, index.reshape(-1, 3)).reshape(*shape, 3)
    centre = apply_affine(affine, centre_index[None])[0]
    distance = np.linalg.norm(world - centre, axis=-1)
    array = np.where(distance <= radius_mm, 100.0, -1000.0).astype(np.float32)
    return Volume(array, affine)


geometries = st.tuples(
    st.tuples(*[st.sampled_from([-1, 1])] * 3),
    st.tuples(*[st.floats(-0.6, 0.6)] * 3),
    st.tuples(st.floats(0.5, 1.2), st.floats(0.5, 1.2), st.floats(0.6, 3.0)),
    st.tuples(*[st.floats(-200, 200)] * 3),
)


def centroid_world(values: np.ndarray, affine: np.ndarray) -> np.ndarray:
    index = np.argwhere(values > 0.5 * values.max()).astype(float)
    weights = values[values > 0.5 * values.max()]
    return apply_affine(affine, (index * weights[:, None]).sum(0)[None] / weights.sum())[0]


@settings(max_examples=25, deadline=None)
@given(geometries)
def test_patch_is_centred_on_the_world_point(geometry) -> None:
    affine = scan_affine(*geometry)
    shape = (40, 44, 36)
    scan = blob_scan(affine, shape, np.array([20.0, 22.0, 18.0]), radius_mm=4.0)
    point = scan.index_to_world(np.array([[20.0, 22.0, 18.0]]))[0]
    patch = sample_patch(scan, point, SPEC)
    hu = patch.hu + 1000.0
    centre = (SPEC.size - 1) / 2
    assert np.linalg.norm(centroid_world(hu, patch.affine) - point) < 0.75
    assert hu[int(centre), int(centre), int(centre)] > 500
    # the patch's axes are R, A, S at 1 mm
    np.testing.assert_allclose(patch.affine[:3, :3], np.eye(3) * SPEC.spacing_mm)


@settings(max_examples=25, deadline=None)
@given(geometries)
def test_maps_written_back_land_on_the_same_world_positions(geometry) -> None:
    affine = scan_affine(*geometry)
    shape = (40, 44, 36)
    scan = Volume(np.zeros(shape, np.float32), affine)
    point = scan.index_to_world(np.array([[19.0, 23.0, 17.0]]))[0]
    patch = sample_patch(scan, point, SPEC)
    # a ball of 4 mm at the patch centre, in patch space
    idx = np.stack(np.meshgrid(*[np.arange(SPEC.size)] * 3, indexing="ij"), -1)
    ball = (np.linalg.norm(idx - (SPEC.size - 1) / 2, axis=-1) <= 4.0).astype(np.float32)
    back = patch_to_scan(ball, patch, scan, SPEC)
    # on the scan's own grid: same spacing and direction, origin on one of its voxel centres
    np.testing.assert_allclose(back.affine[:3, :3], scan.affine[:3, :3], atol=1e-9)
    origin_index = scan.world_to_index(back.affine[None, :3, 3])[0]
    np.testing.assert_allclose(origin_index, np.round(origin_index), atol=1e-6)
    assert np.linalg.norm(centroid_world(back.array, back.affine) - point) < 0.8


def test_subgrid_is_clipped_to_the_scan_at_its_edge() -> None:
    scan = Volume(np.zeros((20, 20, 10), np.float32), np.diag([0.7, 0.7, 2.5, 1.0]))
    corner = scan.index_to_world(np.array([[0.0, 0.0, 0.0]]))[0]
    patch = sample_patch(scan, corner, SPEC)
    shape, affine = scan_subgrid(scan, patch.affine, SPEC)
    np.testing.assert_allclose(affine, scan.affine)
    assert all(0 < n <= m for n, m in zip(shape, scan.shape, strict=True))
    # only the octant inside the scan is covered
    assert 0.05 < patch.coverage.mean() < 0.2


def test_resample_on_the_same_grid_is_exact() -> None:
    rng = np.random.default_rng(0)
    array = rng.normal(size=(12, 13, 9)).astype(np.float32)
    affine = scan_affine((-1, 1, -1), (0.3, -0.2, 0.1), (0.8, 0.9, 2.0), (5, -7, 30))
    sub = affine.copy()
    sub[:3, 3] = apply_affine(affine, np.array([[2.0, 3.0, 1.0]]))[0]
    np.testing.assert_allclose(
        resample(array, affine, (5, 6, 4), sub), array[2:7, 3:9, 1:5], atol=1e-5
    )
    np.testing.assert_array_equal(
        resample(array, affine, (5, 6, 4), sub, mode="nearest"), array[2:7, 3:9, 1:5]
    )


def test_lps_points_are_converted_to_ras() -> None:
    np.testing.assert_allclose(ras_point([10, -20, 30], lps=True), [-10, 20, 30])
    np.testing.assert_allclose(ras_point([10, -20, 30]), [10, -20, 30])


def test_same_scan_in_ras_and_lps_storage_gives_the_same_patch() -> None:
    """A scan stored with its axes flipped (as LPS-ordered files are) is the same scan."""
    affine = scan_affine((1, 1, 1), (0.0, 0.0, 0.0), (0.7, 0.7, 2.0), (-50, 20, -100))
    scan = blob_scan(affine, (40, 40, 20), np.array([18.0, 21.0, 9.0]))
    flipped_affine = affine @ np.array(
        [[-1, 0, 0, 39], [0, -1, 0, 39], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float
    )
    flipped = Volume(scan.array[::-1, ::-1, :].copy(), flipped_affine)
    point = scan.index_to_world(np.array([[18.0, 21.0, 9.0]]))[0]
    np.testing.assert_allclose(
        sample_patch(scan, point, SPEC).hu, sample_patch(flipped, point, SPEC).hu, atol=0.01
    )


def test_block_slices_find_the_voxels_of_a_block_of_the_grid() -> None:
    affine = scan_affine((1, -1, 1), (0.3, -0.2, 0.1), (0.7, 0.8, 2.5), (-40.0, 12.0, -300.0))
    scan = Volume(np.arange(20 * 22 * 24, dtype=np.float32).reshape(20, 22, 24), affine)
    block_affine = affine.copy()
    block_affine[:3, 3] = scan.index_to_world(np.array([[3.0, 5.0, 7.0]]))[0]
    block = Volume(np.zeros((4, 6, 8), dtype=np.float32), block_affine)
    expected = scan.array[3:7, 5:11, 7:15]
    np.testing.assert_array_equal(scan.array[scan.block_slices(block)], expected)
