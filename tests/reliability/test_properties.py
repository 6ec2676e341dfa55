"""Properties of the whole chain, files included: scan written, read, analysed, outputs written.

``tests/test_geometry.py`` holds the crop and the write-back to their geometry in memory. Here the
same scan is stored twice on a random grid (flips, rotation, anisotropic spacing, far origin):
as NIfTI in one voxel order, and as NRRD (LPS, through ITK) with its axes permuted and flipped.
Both are analysed from disk with a throw-away bundle (the model does not matter, the places do).
The outputs of each must lie on its input's own voxels, and both must put the same values on the
same world positions: a crop, a resampling or a write-back that loses track of an axis, a flip
or the LPS/RAS conversion cannot pass.
"""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from itk_images import to_itk_image

from medcnn.app.analysis import Analyzer
from medcnn.phantom import write_nifti
from medcnn.reading import read_scan
from medcnn.volume import Volume, apply_affine

SHAPE = (36, 40, 24)


def rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cz, sz = np.cos(yaw), np.sin(yaw)
    cy, sy = np.cos(pitch), np.sin(pitch)
    cx, sx = np.cos(roll), np.sin(roll)
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return rz @ ry @ rx


def chest_like(affine: np.ndarray, centre_index: np.ndarray, seed: int) -> Volume:
    """Lung (-850 HU with noise) around a 5 mm solid ball, and a band of air: a CT in HU."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), -1)
    world = apply_affine(affine, index.reshape(-1, 3)).reshape(*SHAPE, 3)
    centre = apply_affine(affine, centre_index[None])[0]
    distance = np.linalg.norm(world - centre, axis=-1)
    rng = np.random.default_rng(seed)
    hu = -850.0 + rng.normal(0.0, 30.0, SHAPE)
    hu = np.where(distance <= 5.0, 40.0 + rng.normal(0.0, 10.0, SHAPE), hu)
    hu[:3] = -1000.0
    return Volume(np.rint(hu).astype(np.int16), affine)


def reordered(volume: Volume, axes: tuple[int, int, int], flips: tuple[bool, bool, bool]) -> Volume:
    """The same voxels at the same world positions, stored with permuted and flipped axes."""
    array = volume.array.transpose(axes)
    to_original = np.zeros((4, 4))
    to_original[3, 3] = 1.0
    for new_axis, old_axis in enumerate(axes):
        to_original[old_axis, new_axis] = 1.0
    for axis, flip in enumerate(flips):
        if flip:
            array = np.flip(array, axis)
            step = np.eye(4)
            step[axis, axis] = -1.0
            step[axis, 3] = array.shape[axis] - 1
            to_original = to_original @ step
    return Volume(np.ascontiguousarray(array), volume.affine @ to_original)


def write_nrrd(volume: Volume, path) -> None:
    image = to_itk_image(volume)
    sitk.WriteImage(image, str(path))


def scan_indices(output: nib.Nifti1Image, scan: Volume) -> np.ndarray:
    """The scan indices that the output's voxel centres sit on (checked to be whole voxels)."""
    index = np.indices(output.shape).reshape(3, -1).T
    in_scan = scan.world_to_index(apply_affine(output.affine, index))
    np.testing.assert_allclose(in_scan, np.rint(in_scan), atol=2e-3)
    return np.rint(in_scan).astype(int)


def assert_on_grid_of(output: nib.Nifti1Image, scan: Volume) -> None:
    """The output is a block of the scan's own grid: same axes and spacing, voxels on voxels."""
    np.testing.assert_allclose(output.affine[:3, :3], scan.affine[:3, :3], atol=1e-4)
    index = scan_indices(output, scan)
    assert np.all(index >= 0) and np.all(index < np.asarray(scan.shape))


def world_values(output: nib.Nifti1Image, scan: Volume) -> dict[tuple, float]:
    """The output's values keyed by the voxel of ``scan`` they sit on."""
    values = np.asarray(output.dataobj, dtype=np.float64).reshape(-1)
    return dict(zip(map(tuple, scan_indices(output, scan)), values, strict=True))


geometries = st.tuples(
    st.tuples(*[st.sampled_from([-1.0, 1.0])] * 3),
    st.tuples(*[st.floats(-0.5, 0.5)] * 3),
    st.tuples(st.floats(0.6, 1.1), st.floats(0.6, 1.1), st.floats(0.8, 2.5)),
    st.tuples(*[st.floats(-300, 300)] * 3),
    st.sampled_from(list(itertools.permutations(range(3)))),
    st.tuples(*[st.booleans()] * 3),
)


@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(geometry=geometries)
def test_outputs_land_on_the_same_world_voxels_whatever_the_storage(
    geometry, tmp_analyzer: Analyzer, tmp_path_factory
) -> None:
    flips, angles, spacing, origin, axes, storage_flips = geometry
    affine = np.eye(4)
    affine[:3, :3] = rotation(*angles) @ np.diag(flips) @ np.diag(spacing)
    affine[:3, 3] = origin
    centre_index = np.array([17.0, 21.0, 12.0])
    scan = chest_like(affine, centre_index, seed=1)
    point = apply_affine(affine, centre_index[None])[0]
    other = reordered(scan, axes, storage_flips)
    folder = tmp_path_factory.mktemp("stored")
    files = (write_nifti(scan, folder / "a.nii.gz"), folder / "b.nrrd")
    write_nrrd(other, files[1])

    outputs = []
    for path, stored in zip(files, (scan, other), strict=True):
        read = read_scan(path)
        np.testing.assert_allclose(read.affine, stored.affine, atol=1e-4)
        out = folder / f"out_{path.stem}"
        result = tmp_analyzer.analyze_file(path, point, out)
        assert list(result.nodule.point.ras) == [round(float(v), 4) for v in point]
        heatmap, segmentation = (
            nib.load(out / n) for n in ("heatmap.nii.gz", "segmentation.nii.gz")
        )
        assert_on_grid_of(heatmap, stored)
        assert_on_grid_of(segmentation, stored)
        outputs.append((heatmap, segmentation))

    # keyed by the voxels of one storage, both analyses put the same values in the same places
    (heat_a, seg_a), (heat_b, seg_b) = (
        (world_values(h, scan), world_values(s, scan)) for h, s in outputs
    )
    assert heat_a.keys() == heat_b.keys() == seg_a.keys() == seg_b.keys()
    keys = sorted(heat_a)
    np.testing.assert_allclose([heat_a[k] for k in keys], [heat_b[k] for k in keys], atol=2e-3)
    assert sum(seg_a[k] != seg_b[k] for k in keys) <= 0.01 * len(keys)
    # the point is inside the written block, near its middle unless the scan's edge clipped it
    block = np.array(keys)
    point_index = scan.world_to_index(point[None])[0]
    assert np.all(block.min(0) <= point_index) and np.all(point_index <= block.max(0))
