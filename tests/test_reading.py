"""read_scan: real scans, exact world geometry across formats, series choice, and every refusal.

Broken and multi-series cases are written into tmp_path from the synthetic phantom or from copies
of shared files; the shared data is never modified.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from itk_images import to_itk_image
from pydicom.fileset import FileSet

from medcnn.errors import (
    GeometryError,
    InputNotFoundError,
    MedCNNError,
    NotCTError,
    ResourceLimitError,
    SeriesSelectionError,
    UnreadableImageError,
    UsageError,
)
from medcnn.phantom import synthetic_chest, write_dicom_series, write_nifti
from medcnn.reading import MAX_SCAN_BYTES_ENV, read_scan
from medcnn.volume import LPS_TO_RAS, Volume

METADATA_KEYS = {
    "path",
    "format",
    "modality",
    "series_instance_uid",
    "series_description",
    "series_choice",
    "source_files",
    "warnings",
}
LUNG1_NODULE_RAS = (21.86, 120.54, -611.50)


# --- helpers -----------------------------------------------------------------------------------


def raises_sentence(error_type: type[MedCNNError], path: Path | str, **kwargs) -> str:
    """Reading fails with this error type and one sentence for the user; returns the sentence."""
    with pytest.raises(error_type) as caught:
        read_scan(path, **kwargs)
    message = str(caught.value)
    assert message.endswith(".") and "\n" not in message and "Traceback" not in message
    return message


def small_volume(affine: np.ndarray, shape=(12, 14, 9), seed=0) -> Volume:
    """A small CT-like volume (HU from -1000 to 1500, all distinct enough not to be a label)."""
    rng = np.random.default_rng(seed)
    return Volume(rng.integers(-1000, 1500, size=shape).astype(np.int16), affine)


def oblique_affine(flip: bool = False) -> np.ndarray:
    """A rotated grid with anisotropic voxels and a far origin; ``flip`` mirrors one axis."""
    a, b = np.radians(20.0), np.radians(-35.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    rotation = rz @ rx
    if flip:
        rotation[:, 2] *= -1
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.7, 0.9, 2.1])
    affine[:3, 3] = (-31.5, 120.25, -600.0)
    return affine


def write_with_itk(volume: Volume, path: Path) -> Path:
    """Write through SimpleITK, which speaks LPS: the reader must convert back to RAS."""
    image = to_itk_image(volume)
    sitk.WriteImage(image, str(path))
    return path


def assert_same_world_voxels(a: Volume, b: Volume, sample: int | None = None) -> None:
    """Every voxel centre of ``a`` (or its corners and ``sample`` random voxels) is a voxel centre
    of ``b`` holding the same value."""
    assert a.array.size == b.array.size
    if sample is None:
        indices = np.indices(a.shape).reshape(3, -1).T
    else:
        corners = np.indices((2, 2, 2)).reshape(3, -1).T * (np.array(a.shape) - 1)
        picked = np.random.default_rng(0).integers(0, a.shape, size=(sample, 3))
        indices = np.concatenate([corners, picked])
    in_b = b.world_to_index(a.index_to_world(indices))
    nearest = np.rint(in_b)
    assert np.abs(in_b - nearest).max() < 1e-3
    i, j, k = nearest.astype(int).T
    np.testing.assert_array_equal(a.array[tuple(indices.T)], b.array[i, j, k])


def phantom_series(folder: Path, **kwargs) -> list[Path]:
    return write_dicom_series(synthetic_chest(), folder, **kwargs)


def set_tags(path: Path, **tags) -> None:
    ds = pydicom.dcmread(path)
    for name, value in tags.items():
        setattr(ds, name, value)
    ds.save_as(path)


@pytest.fixture(scope="module")
def phantom_dicom(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("phantom") / "dicom"
    phantom_series(folder)
    return folder


@pytest.fixture
def phantom_copy(phantom_dicom, tmp_path) -> Path:
    """A copy of the phantom series that a test may break."""
    return Path(shutil.copytree(phantom_dicom, tmp_path / "series"))


# --- real scans --------------------------------------------------------------------------------


@pytest.mark.data
def test_chest_ct_dicom_reads_as_hu_with_exact_geometry(shared_data):
    folder = shared_data / "ct" / "chest_ct_dicom"
    volume = read_scan(folder)
    assert volume.shape == (512, 512, 141)
    np.testing.assert_allclose(volume.spacing, (0.9765625, 0.9765625, 2.0), atol=1e-6)
    assert volume.array.dtype == np.int16
    assert volume.array.min() == -1024 and volume.array.max() > 1000
    assert np.median(volume.array[:20, :20, :]) < -900  # air around the patient
    assert set(volume.metadata) == METADATA_KEYS
    assert volume.metadata["format"] == "dicom" and volume.metadata["modality"] == "CT"
    assert "only CT series" in volume.metadata["series_choice"]

    # SimpleITK, left to sort the series itself, must agree voxel for voxel in world space.
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    lps = np.eye(4)
    lps[:3, :3] = np.reshape(image.GetDirection(), (3, 3)) * np.array(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    itk_volume = Volume(sitk.GetArrayFromImage(image).transpose(2, 1, 0), LPS_TO_RAS @ lps)
    assert_same_world_voxels(volume, itk_volume, sample=20_000)
    # The first slice in the file names is the most superior one.
    first = pydicom.dcmread(folder / "00-slice000.dcm", stop_before_pixels=True)
    top = volume.index_to_world(np.array([[0.0, 0.0, 140.0]]))[0]
    np.testing.assert_allclose(top, np.array(first.ImagePositionPatient) * (-1, -1, 1))


@pytest.mark.data
def test_one_file_of_a_series_reads_the_whole_series(shared_data):
    folder = shared_data / "ct" / "chest_ct_dicom"
    from_file = read_scan(folder / "00-slice070.dcm")
    from_folder = read_scan(folder)
    assert from_file.shape == (512, 512, 141)
    assert "file given" in from_file.metadata["series_choice"]
    np.testing.assert_array_equal(from_file.affine, from_folder.affine)
    np.testing.assert_array_equal(from_file.array, from_folder.array)


@pytest.mark.data
def test_jpeg2000_series_without_series_uid_reads(shared_data):
    volume = read_scan(shared_data / "dicom_edge" / "ct_jpeg2000_series")
    assert volume.shape == (512, 512, 20)
    np.testing.assert_allclose(volume.spacing, (0.9765625, 0.9765625, 2.0), atol=1e-6)
    assert volume.array.min() == -1024
    assert volume.metadata["series_instance_uid"] is None  # blanked by its anonymiser
    assert any("SeriesInstanceUID" in w for w in volume.metadata["warnings"])


@pytest.mark.data
def test_lung1_nrrd_holds_its_nodule_where_the_label_says(shared_data):
    folder = shared_data / "ct" / "lung1"
    volume = read_scan(folder / "lung1_image.nrrd")
    assert volume.shape == (512, 512, 48)
    assert volume.metadata["format"] == "nrrd" and volume.metadata["modality"] is None
    assert volume.contains(np.array(LUNG1_NODULE_RAS))
    # The label's centroid, placed with the image's affine, is the documented RAS point: the
    # LPS -> RAS conversion is right, not just self-consistent.
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "lung1_label.nrrd")))
    centroid_ijk = np.argwhere(label.transpose(2, 1, 0) > 0).mean(axis=0)
    centroid = volume.index_to_world(centroid_ijk[None])[0]
    np.testing.assert_allclose(centroid, LUNG1_NODULE_RAS, atol=0.05)
    i, j, k = np.rint(centroid_ijk).astype(int)
    assert volume.array[i, j, k] > -400  # solid tissue at the nodule


@pytest.mark.data
def test_lung1_label_is_refused_as_not_ct(shared_data):
    message = raises_sentence(NotCTError, shared_data / "ct" / "lung1" / "lung1_label.nrrd")
    assert "mask" in message


@pytest.mark.data
def test_lidc_voi_nifti_keeps_its_affine(shared_data):
    with open(shared_data / "lidc_voi" / "nodules.csv") as handle:
        row = next(csv.DictReader(handle))
    path = shared_data / "lidc_voi" / row["image"]
    volume = read_scan(path)
    np.testing.assert_array_equal(volume.affine, nib.load(path).affine)
    assert volume.array.dtype == np.int16
    center = np.array([float(row["center_r"]), float(row["center_a"]), float(row["center_s"])])
    assert volume.contains(center)
    assert volume.metadata["format"] == "nifti" and volume.metadata["series_choice"] is None


@pytest.mark.data
@pytest.mark.parametrize(
    "case, words",
    [
        ("gantrytilting_001", "tilt"),
        ("notavolume_001", "same position"),
        ("sliceincrement_001", "missing slices"),
        ("sliceincrement_002", "tilt"),  # tilted and missing a slice: the tilt is reported
    ],
)
def test_broken_dicom_geometry_is_refused(shared_data, case, words):
    message = raises_sentence(GeometryError, shared_data / "dicom_edge" / case)
    assert words in message


@pytest.mark.data
@pytest.mark.parametrize(
    "name, error_type",
    [
        ("MR_small.dcm", NotCTError),
        ("emri_small.dcm", NotCTError),  # enhanced multi-frame MR
        ("liver.dcm", NotCTError),  # DICOM SEG
        ("CT_small.dcm", GeometryError),  # one 2D slice
        ("eCT_Supplemental.dcm", UnreadableImageError),  # enhanced CT, not supported yet
        ("README_pydicom_test_files.txt", UnreadableImageError),
    ],
)
def test_single_files_that_are_not_a_ct_volume_are_refused(shared_data, name, error_type):
    raises_sentence(error_type, shared_data / "dicom_edge" / "single_files" / name)


@pytest.mark.data
def test_mixed_folder_chooses_the_ct_series_with_most_images(shared_data):
    folder = shared_data / "dicom_edge" / "single_files"
    volume = read_scan(folder)
    assert volume.shape == (16, 16, 5)  # dicomdir_CT5N_16x16, among MR, SEG and 1-4 image series
    assert "most images" in volume.metadata["series_choice"]
    dicomdir_layout = read_scan(folder / "dicomdir_CT5N_16x16")
    np.testing.assert_array_equal(dicomdir_layout.affine, volume.affine)


@pytest.mark.data
def test_folder_of_mr_only_is_not_ct(shared_data, tmp_path):
    for name in ("MR_small.dcm", "emri_small.dcm"):
        shutil.copy(shared_data / "dicom_edge" / "single_files" / name, tmp_path)
    assert "no CT series" in raises_sentence(NotCTError, tmp_path)
    assert "MR image" in raises_sentence(NotCTError, tmp_path / "MR_small.dcm")


def test_dicomdir_media_reads_from_its_folder_or_its_index(tmp_path):
    volume = small_volume(np.eye(4))
    file_set = FileSet()
    for path in write_dicom_series(volume, tmp_path / "exported"):
        file_set.add(pydicom.dcmread(path))
    file_set.write(tmp_path / "media")  # DICOMDIR + PT000000/ST000000/SE000000/IM00000n
    for path in (tmp_path / "media", tmp_path / "media" / "DICOMDIR"):
        read = read_scan(path)
        np.testing.assert_array_equal(read.array, volume.array)
        np.testing.assert_allclose(read.affine, volume.affine, atol=1e-6)


# --- geometry across formats -------------------------------------------------------------------


@pytest.mark.parametrize("flip", [False, True])
def test_nifti_nrrd_and_mha_agree_voxel_for_voxel_in_world_space(tmp_path, flip):
    volume = small_volume(oblique_affine(flip))
    nifti = read_scan(write_nifti(volume, tmp_path / "v.nii.gz"))
    nrrd = read_scan(write_with_itk(volume, tmp_path / "v.nrrd"))
    mha = read_scan(write_with_itk(volume, tmp_path / "v.mha"))
    for read in (nifti, nrrd, mha):
        np.testing.assert_allclose(read.affine, volume.affine, atol=1e-5)
        np.testing.assert_array_equal(read.array, volume.array)
        assert read.array.dtype == np.int16
    assert (nrrd.metadata["format"], mha.metadata["format"]) == ("nrrd", "mha")


def test_a_mirrored_copy_lands_on_the_same_world_points(tmp_path):
    volume = small_volume(oblique_affine())
    mirrored_affine = volume.affine @ np.array(
        [[-1, 0, 0, volume.shape[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float
    )
    mirrored = Volume(volume.array[::-1].copy(), mirrored_affine)
    original = read_scan(write_nifti(volume, tmp_path / "a.nii.gz"))
    assert_same_world_voxels(original, read_scan(write_with_itk(mirrored, tmp_path / "b.nrrd")))
    assert_same_world_voxels(original, read_scan(write_nifti(mirrored, tmp_path / "b.nii")))


@pytest.mark.parametrize("flip", [False, True])
def test_oblique_dicom_reads_to_its_world_geometry(tmp_path, flip):
    volume = small_volume(oblique_affine(flip))
    write_dicom_series(volume, tmp_path / "oblique")
    read = read_scan(tmp_path / "oblique")
    assert_same_world_voxels(volume, read)
    if not flip:
        np.testing.assert_allclose(read.affine, volume.affine, atol=1e-4)


@pytest.mark.parametrize(
    "slope, intercept, dtype",
    [(2.0, -1024.0, np.int16), (0.5, -1024.0, np.int16), (1.0, -1024.5, np.float32)],
)
def test_rescale_slope_and_intercept_give_hu(tmp_path, slope, intercept, dtype):
    hu = small_volume(np.diag([0.8, 0.8, 1.5, 1.0]))
    hu = Volume(hu.array // 2 * 2, hu.affine)  # even HU: exactly representable with slope 2
    write_dicom_series(hu, tmp_path, rescale_slope=slope, rescale_intercept=-1024.0)
    if intercept != -1024.0:  # a fractional intercept: the HU are no longer integers
        for path in tmp_path.glob("*.dcm"):
            set_tags(path, RescaleIntercept=str(intercept))
    read = read_scan(tmp_path)
    assert read.array.dtype == dtype
    np.testing.assert_array_equal(read.array, hu.array + (intercept + 1024.0))


def test_nifti_scaling_is_applied(tmp_path):
    volume = small_volume(np.eye(4))
    image = nib.Nifti1Image(((volume.array + 1024) // 2).astype(np.int16), volume.affine)
    image.header.set_slope_inter(2.0, -1024.0)
    nib.save(image, tmp_path / "scaled.nii")
    read = read_scan(tmp_path / "scaled.nii")
    assert read.array.dtype == np.int16
    np.testing.assert_array_equal(read.array, (volume.array + 1024) // 2 * 2 - 1024)


# --- series choice -----------------------------------------------------------------------------


def test_two_series_the_one_with_more_images_is_chosen(tmp_path):
    chest = synthetic_chest()
    write_dicom_series(chest, tmp_path / "a", uid_seed="full", series_description="full")
    half = Volume(chest.array[:, :, :40].copy(), chest.affine)
    write_dicom_series(half, tmp_path / "b", uid_seed="half", series_description="half")
    volume = read_scan(tmp_path)
    assert volume.shape[2] == 80 and volume.metadata["series_description"] == "full"
    assert "most images" in volume.metadata["series_choice"]
    half_uid = pydicom.dcmread(next((tmp_path / "b").iterdir())).SeriesInstanceUID
    chosen = read_scan(tmp_path, series_uid=half_uid)
    assert chosen.shape[2] == 40 and "series UID" in chosen.metadata["series_choice"]


def test_equal_image_counts_the_thinnest_spacing_is_chosen(tmp_path):
    thick_affine = np.diag([0.8, 0.8, 3.0, 1.0])
    write_dicom_series(small_volume(thick_affine), tmp_path / "thick", uid_seed="thick")
    write_dicom_series(
        small_volume(np.diag([0.8, 0.8, 1.5, 1])), tmp_path / "thin", uid_seed="thin"
    )
    volume = read_scan(tmp_path)
    assert volume.spacing[2] == pytest.approx(1.5)
    assert "thinnest" in volume.metadata["series_choice"]


def test_a_tie_asks_for_the_series_uid_and_lists_the_candidates(tmp_path):
    uids = []
    for name in ("first", "second"):
        paths = write_dicom_series(
            small_volume(np.eye(4)), tmp_path / name, uid_seed=name, series_description=name
        )
        uids.append(pydicom.dcmread(paths[0]).SeriesInstanceUID)
    message = raises_sentence(SeriesSelectionError, tmp_path)
    assert all(uid in message for uid in uids) and "'first'" in message and "UID" in message
    assert read_scan(tmp_path, series_uid=uids[1]).metadata["series_description"] == "second"


def test_an_unknown_series_uid_lists_the_series_present(phantom_dicom):
    message = raises_sentence(SeriesSelectionError, phantom_dicom, series_uid="1.2.3.4")
    assert "synthetic phantom" in message


def test_a_series_uid_for_a_nifti_file_is_a_usage_error(tmp_path):
    path = write_nifti(small_volume(np.eye(4)), tmp_path / "v.nii.gz")
    raises_sentence(UsageError, path, series_uid="1.2.3")


def test_localizers_and_non_ct_series_are_skipped(phantom_copy):
    localizer = phantom_series(phantom_copy.parent / "scout", uid_seed="scout")
    for path in localizer:
        set_tags(path, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    volume = read_scan(phantom_copy.parent)
    assert volume.shape == (160, 160, 80) and "skipped" in volume.metadata["series_choice"]
    assert "localizer" in raises_sentence(GeometryError, phantom_copy.parent / "scout")


# --- broken DICOM written here -----------------------------------------------------------------


def test_duplicate_images_are_dropped_with_a_warning(phantom_copy):
    shutil.copy(phantom_copy / "slice0010.dcm", phantom_copy / "copy_of_slice0010.dcm")
    volume = read_scan(phantom_copy)
    assert volume.shape == (160, 160, 80)
    assert any("duplicate" in w for w in volume.metadata["warnings"])


def test_a_missing_slice_is_refused(phantom_copy):
    (phantom_copy / "slice0040.dcm").unlink()
    assert "missing slices" in raises_sentence(GeometryError, phantom_copy)


def test_uneven_spacing_is_refused(phantom_copy):
    ds = pydicom.dcmread(phantom_copy / "slice0040.dcm", stop_before_pixels=True)
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    set_tags(phantom_copy / "slice0040.dcm", ImagePositionPatient=[x, y, z + 0.5])
    assert "unevenly spaced" in raises_sentence(GeometryError, phantom_copy)


def test_a_sheared_grid_is_refused(tmp_path):
    sheared = np.diag([0.8, 0.8, 1.5, 1.0])
    sheared[1, 2] = 0.4  # each slice moves 0.4 mm sideways: gantry tilt
    write_dicom_series(small_volume(sheared), tmp_path)
    assert "tilt" in raises_sentence(GeometryError, tmp_path)


def test_mixed_orientations_are_refused(phantom_copy):
    set_tags(phantom_copy / "slice0005.dcm", ImageOrientationPatient=[1, 0, 0, 0, 0, -1])
    assert "orientations" in raises_sentence(GeometryError, phantom_copy)


def test_the_same_number_of_images_at_every_position_is_refused(phantom_copy):
    for path in sorted(phantom_copy.glob("*.dcm")):
        shutil.copy(path, path.with_name("phase2_" + path.name))
    assert "each of its 80 positions" in raises_sentence(GeometryError, phantom_copy)


def test_truncated_dicom_pixels_are_unreadable(phantom_copy):
    path = phantom_copy / "slice0020.dcm"
    path.write_bytes(path.read_bytes()[:-20000])
    raises_sentence(UnreadableImageError, phantom_copy)


# --- not found, not an image, not a volume, too large --------------------------------------------


def test_missing_path_empty_folder_and_folder_without_dicom(tmp_path):
    raises_sentence(InputNotFoundError, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    raises_sentence(InputNotFoundError, tmp_path / "empty")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "readme.txt").write_text("not an image\n")
    (notes / "IM0001").write_bytes(b"\x00" * 400)
    assert "no DICOM" in raises_sentence(InputNotFoundError, notes)
    raises_sentence(UnreadableImageError, notes / "readme.txt")


def test_unrelated_files_beside_a_series_are_ignored(phantom_copy):
    (phantom_copy / "notes.txt").write_text("reading protocol\n")
    assert read_scan(phantom_copy).shape == (160, 160, 80)


@pytest.mark.parametrize("name", ["cut.nii.gz", "cut.nii"])
def test_truncated_nifti_is_unreadable(tmp_path, name):
    whole = write_nifti(small_volume(np.eye(4), shape=(40, 40, 30)), tmp_path / ("whole_" + name))
    data = whole.read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    raises_sentence(UnreadableImageError, tmp_path / name)


def test_garbage_with_an_image_suffix_is_unreadable(tmp_path):
    for name in ("junk.nii.gz", "junk.nrrd", "junk.mha"):
        (tmp_path / name).write_bytes(b"this is not an image" * 10)
        raises_sentence(UnreadableImageError, tmp_path / name)


def test_nan_voxels_are_refused(tmp_path):
    array = small_volume(np.eye(4)).array.astype(np.float32)
    array[3, 4, 5] = np.nan
    nib.save(nib.Nifti1Image(array, np.eye(4)), tmp_path / "nan.nii.gz")
    assert "NaN" in raises_sentence(UnreadableImageError, tmp_path / "nan.nii.gz")


def test_masks_and_label_maps_are_not_ct(tmp_path):
    probabilities = np.random.default_rng(1).random((20, 20, 10)).astype(np.float32)
    nib.save(nib.Nifti1Image(probabilities, np.eye(4)), tmp_path / "p.nii.gz")
    assert "mask" in raises_sentence(NotCTError, tmp_path / "p.nii.gz")
    labels = np.random.default_rng(2).integers(0, 6, size=(20, 20, 10)).astype(np.uint8)
    nib.save(nib.Nifti1Image(labels, np.eye(4)), tmp_path / "l.nii.gz")
    assert "label map" in raises_sentence(NotCTError, tmp_path / "l.nii.gz")


def test_2d_and_4d_images_are_not_volumes(tmp_path):
    slab = small_volume(np.eye(4), shape=(20, 20, 10)).array
    nib.save(nib.Nifti1Image(slab[:, :, :1], np.eye(4)), tmp_path / "flat.nii.gz")
    assert "2D" in raises_sentence(GeometryError, tmp_path / "flat.nii.gz")
    nib.save(nib.Nifti1Image(np.stack([slab, slab], -1), np.eye(4)), tmp_path / "t.nii.gz")
    assert "4D" in raises_sentence(GeometryError, tmp_path / "t.nii.gz")
    frame = sitk.GetImageFromArray(np.ascontiguousarray(slab.T))
    image = sitk.JoinSeries([frame, frame])
    sitk.WriteImage(image, str(tmp_path / "t.nrrd"))
    raises_sentence(GeometryError, tmp_path / "t.nrrd")
    nib.save(nib.Nifti1Image(slab[..., None], np.eye(4)), tmp_path / "one_frame.nii.gz")
    assert read_scan(tmp_path / "one_frame.nii.gz").shape == (20, 20, 10)


def test_scans_over_the_memory_limit_are_refused_before_loading(
    phantom_dicom, tmp_path, monkeypatch
):
    nifti = write_nifti(synthetic_chest(), tmp_path / "p.nii.gz")
    monkeypatch.setenv(MAX_SCAN_BYTES_ENV, str(160 * 160 * 80 * 2 - 1))
    assert MAX_SCAN_BYTES_ENV in raises_sentence(ResourceLimitError, phantom_dicom)
    raises_sentence(ResourceLimitError, nifti)
    monkeypatch.setenv(MAX_SCAN_BYTES_ENV, str(160 * 160 * 80 * 2))
    assert read_scan(nifti).array.nbytes == 160 * 160 * 80 * 2
    monkeypatch.setenv(MAX_SCAN_BYTES_ENV, "lots")
    raises_sentence(UsageError, nifti)


def test_metadata_holds_exactly_the_documented_keys(phantom_dicom, tmp_path):
    nifti = write_nifti(small_volume(np.eye(4)), tmp_path / "v.nii.gz")
    for volume in (read_scan(phantom_dicom), read_scan(nifti)):
        assert set(volume.metadata) == METADATA_KEYS
        assert isinstance(volume.metadata["warnings"], list)
        assert volume.metadata["path"] in (str(phantom_dicom), str(nifti))
    assert read_scan(phantom_dicom).metadata["series_instance_uid"].startswith("1.2.826.0.1")
