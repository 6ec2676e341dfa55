"""The rules of ``medcnn.nodule.checks`` at their boundaries: what is refused, what still works.

The command-line view of each refusal is in ``test_bad_inputs.py``; here each threshold is
held on both sides, without a model, so a change of rule shows up as a failing line.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

import medcnn.errors as errors
from medcnn.app.analysis import Analyzer
from medcnn.errors import (
    EXIT_CODES,
    GeometryError,
    MedCNNError,
    NotCTError,
    NoTissueAtPointError,
    PointOutsideScanError,
    UnreadableImageError,
    UsageError,
)
from medcnn.nodule.checks import (
    MIN_CORE_INSIDE,
    TISSUE_RADIUS_MM,
    check_scan_at_point,
    core_inside_fraction,
    densest_hu_near,
)
from medcnn.phantom import NODULE_CENTER_RAS, synthetic_chest, write_nifti
from medcnn.volume import Volume

NODULE = np.array(NODULE_CENTER_RAS)


@pytest.fixture(scope="module")
def chest() -> Volume:
    return synthetic_chest()


def refused(error_type: type[MedCNNError], scan: Volume, point: np.ndarray) -> str:
    with pytest.raises(error_type) as caught:
        check_scan_at_point(scan, point)
    message = str(caught.value)
    assert message.endswith(".") and "\n" not in message
    return message


def slab(chest: Volume, k0: int, k1: int, spacing: float | None = None) -> Volume:
    """Slices k0..k1-1 of the phantom, optionally restacked at another slice spacing."""
    affine = chest.affine.copy()
    affine[:3, 3] = chest.index_to_world(np.array([[0.0, 0.0, float(k0)]]))[0]
    if spacing is not None:
        affine[2, 2] = spacing
    return Volume(chest.array[:, :, k0:k1].copy(), affine)


def nodule_k(chest: Volume) -> int:
    return int(round(chest.world_to_index(NODULE[None])[0, 2]))


def test_the_phantom_nodule_passes_every_rule_with_room_to_spare(chest: Volume) -> None:
    assert core_inside_fraction(chest, NODULE) == 1.0
    assert densest_hu_near(chest, NODULE, TISSUE_RADIUS_MM) > 0.0  # soft tissue, not lung
    check_scan_at_point(chest, NODULE)  # and so the whole check lets it through


def test_a_point_on_the_last_slice_is_analysed_and_one_in_a_corner_is_refused(chest) -> None:
    k = nodule_k(chest)
    cut_at_nodule = slab(chest, 0, k + 1)  # the nodule's centre is on the scan's last slice
    point = cut_at_nodule.index_to_world(np.array([[0.0, 0.0, float(k)]]))[0]
    point[:2] = NODULE[:2]
    assert 0.5 <= core_inside_fraction(cut_at_nodule, point) < 0.7
    check_scan_at_point(cut_at_nodule, point)
    corner = chest.index_to_world(np.zeros((1, 3)))[0]
    assert core_inside_fraction(chest, corner) < MIN_CORE_INSIDE
    assert "very edge" in refused(PointOutsideScanError, chest, corner)
    edge_of_two_faces = chest.index_to_world(np.array([[0.0, 0.0, 40.0]]))[0]
    assert core_inside_fraction(chest, edge_of_two_faces) < MIN_CORE_INSIDE


def test_a_point_half_a_voxel_beyond_the_scan_is_outside(chest: Volume) -> None:
    beyond = chest.index_to_world(np.array([[80.0, 80.0, 79.6]]))[0]
    assert "outside the scan" in refused(PointOutsideScanError, chest, beyond)


def test_the_thinnest_training_volume_passes_and_thinner_is_refused(chest: Volume) -> None:
    k = nodule_k(chest)
    two_thin = slab(chest, k, k + 2, spacing=1.25)  # 2.5 mm, as the thinnest LIDC volumes
    centre = two_thin.index_to_world(np.array([[0.0, 0.0, 0.5]]))[0]
    centre[:2] = NODULE[:2]
    check_scan_at_point(two_thin, centre)
    thinner = slab(chest, k, k + 2, spacing=0.7)
    centre = thinner.index_to_world(np.array([[0.0, 0.0, 0.5]]))[0]
    centre[:2] = NODULE[:2]
    assert "1.4 mm thick (2 slices of 0.70 mm)" in refused(GeometryError, thinner, centre)


def test_air_is_refused_but_a_cavitating_nodule_is_not(chest: Volume) -> None:
    array = np.full((40, 40, 40), -1000, np.int16)
    scan = Volume(array, np.eye(4))
    centre = np.array([20.0, 20.0, 20.0])
    assert "in air or lung" in refused(NoTissueAtPointError, scan, centre)
    index = np.indices(array.shape).transpose(1, 2, 3, 0)
    distance = np.linalg.norm(index - centre, axis=-1)
    cavity = np.where((distance > 3.5) & (distance <= 7.0), 30, -1000).astype(np.int16)
    cavitating = Volume(cavity, np.eye(4))  # air within 3.5 mm of the centre, a wall beyond
    assert densest_hu_near(cavitating, centre, 3.0) == -1000
    check_scan_at_point(cavitating, centre)
    lung_only = Volume(np.full((40, 40, 40), -850, np.int16), np.eye(4))
    refused(NoTissueAtPointError, lung_only, centre)


def test_slices_thicker_than_the_radius_still_count_the_nearest_voxel() -> None:
    array = np.full((30, 30, 3), -1000, np.int16)
    array[15, 15, 1] = 50
    scan = Volume(array, np.diag([1.0, 1.0, 12.0, 1.0]))
    point = np.array([15.0, 15.0, 12.0 + 5.9])  # 5.9 mm from the slice: no voxel within 5 mm
    assert densest_hu_near(scan, point, 5.0) == 50


@pytest.mark.parametrize(
    "change, error_type, phrase",
    [
        (lambda a: a.astype(np.float32) + 1024.0, NotCTError, "lowest value is"),
        (lambda a: a.astype(np.float32) * 1000.0, NotCTError, "beyond the -32768 to 32767"),
        (lambda a: np.where(a > 400, np.nan, a).astype(np.float32), UnreadableImageError, "NaN"),
        (lambda a: np.where(a > 400, np.inf, a).astype(np.float32), UnreadableImageError, "NaN"),
    ],
    ids=["no rescale", "absurd range", "NaN voxels", "infinite voxels"],
)
def test_values_that_are_not_hounsfield_units_are_refused(
    chest: Volume, change, error_type, phrase
) -> None:
    scan = Volume(change(chest.array), chest.affine)
    assert phrase in refused(error_type, scan, NODULE)


def test_fractional_hounsfield_units_pass(chest: Volume) -> None:
    check_scan_at_point(Volume(chest.array.astype(np.float32) - 0.5, chest.affine), NODULE)


def test_non_finite_points_are_refused_in_the_library_too(
    chest: Volume, tmp_analyzer: Analyzer
) -> None:
    for point in ([np.nan, 0, 0], [0, np.inf, 0], [1, 2]):
        with pytest.raises(UsageError, match="three finite numbers"):
            tmp_analyzer.analyze_volume(chest, np.array(point, dtype=float))


def test_every_error_type_has_one_documented_exit_code() -> None:
    classes = [
        c
        for c in vars(errors).values()
        if isinstance(c, type) and issubclass(c, MedCNNError) and c is not MedCNNError
    ]
    codes = [c.exit_code for c in classes]
    assert len(codes) == len(set(codes)), "two error types share an exit code"
    for cls in classes:
        assert EXIT_CODES[cls.exit_code] == cls.__doc__.strip()
    assert set(EXIT_CODES) == {0, 1, *codes}
    assert NoTissueAtPointError.exit_code == 12
    assert all(EXIT_CODES[c.exit_code].endswith(".") for c in classes)


def test_a_nodule_on_the_scans_last_slice_is_analysed_end_to_end(
    chest: Volume, shipped_analyzer: Analyzer, tmp_path
) -> None:
    k = nodule_k(chest)
    cut_at_nodule = slab(chest, 0, k + 1)
    path = write_nifti(cut_at_nodule, tmp_path / "cut.nii.gz")
    result = shipped_analyzer.analyze_file(path, NODULE, tmp_path / "out")
    whole = shipped_analyzer.analyze_file(
        write_nifti(chest, tmp_path / "whole.nii.gz"), NODULE, tmp_path / "whole"
    )
    # half the nodule is in the scan: more than half its diameter is measured, not more than all
    assert 0.5 * whole.nodule.diameter_mm < result.nodule.diameter_mm <= whole.nodule.diameter_mm
    heatmap = nib.load(tmp_path / "out" / "heatmap.nii.gz")
    np.testing.assert_allclose(heatmap.affine[:3, :3], cut_at_nodule.affine[:3, :3], atol=1e-4)
    top = cut_at_nodule.world_to_index(heatmap.affine[None, :3, 3])[0][2] + heatmap.shape[2] - 1
    assert round(top) == k  # the written block ends with the scan
