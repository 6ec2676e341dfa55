"""The synthetic phantom: labelled synthetic, deterministic, the same scan in DICOM and NIfTI."""

from __future__ import annotations

import numpy as np
import pydicom
from scipy import ndimage

from medcnn.phantom import (
    NODULE_CENTER_RAS,
    NODULE_DIAMETER_MM,
    PATIENT_NAME,
    SERIES_DESCRIPTION,
    make_phantom,
    synthetic_chest,
)
from medcnn.reading import read_scan


def test_make_phantom_returns_the_documented_keys(phantom):
    assert set(phantom) == {"dicom_dir", "nifti", "nodule_center_ras", "nodule_diameter_mm"}
    assert phantom["nifti"].name == "phantom.nii.gz" and phantom["nifti"].is_file()
    assert len(list(phantom["dicom_dir"].glob("*.dcm"))) == 80
    assert tuple(phantom["nodule_center_ras"]) == NODULE_CENTER_RAS
    assert phantom["nodule_diameter_mm"] == NODULE_DIAMETER_MM


def test_dicom_files_say_they_are_synthetic_and_store_values_with_a_rescale(phantom):
    ds = pydicom.dcmread(sorted(phantom["dicom_dir"].glob("*.dcm"))[0])
    assert str(ds.PatientName) == PATIENT_NAME
    assert ds.SeriesDescription == SERIES_DESCRIPTION
    assert ds.SOPClassUID == pydicom.uid.CTImageStorage
    assert ds.Modality == "CT"
    assert float(ds.RescaleIntercept) == -1024.0
    # Stored values are not HU: a reader that forgot the rescale would be 1024 too high.
    assert ds.pixel_array.min() >= 0


def test_dicom_and_nifti_read_to_the_same_world_geometry_and_hu(phantom):
    from_dicom = read_scan(phantom["dicom_dir"])
    from_nifti = read_scan(phantom["nifti"])
    assert from_dicom.shape == from_nifti.shape == (160, 160, 80)
    np.testing.assert_allclose(from_dicom.affine, from_nifti.affine, atol=1e-4)
    np.testing.assert_allclose(from_dicom.spacing, (0.8, 0.8, 1.5), atol=1e-6)
    assert not np.allclose(from_dicom.affine[:3, 3], 0)
    assert from_dicom.array.dtype == from_nifti.array.dtype == np.int16
    np.testing.assert_array_equal(from_dicom.array, from_nifti.array)
    np.testing.assert_array_equal(from_dicom.array, synthetic_chest().array)


def test_phantom_is_deterministic(tmp_path, phantom):
    again = make_phantom(tmp_path)
    first = sorted(phantom["dicom_dir"].glob("*.dcm"))
    second = sorted(again["dicom_dir"].glob("*.dcm"))
    assert [p.read_bytes() for p in first[:3]] == [p.read_bytes() for p in second[:3]]
    np.testing.assert_array_equal(
        read_scan(again["nifti"]).array, read_scan(phantom["nifti"]).array
    )


def test_the_nodule_is_where_and_as_large_as_announced():
    volume = synthetic_chest()
    center = np.asarray(NODULE_CENTER_RAS)
    assert volume.contains(center)
    components, _ = ndimage.label(volume.array > -400)
    seed = tuple(np.rint(volume.world_to_index(center[None])[0]).astype(int))
    nodule = components == components[seed]
    world = volume.index_to_world(np.argwhere(nodule))
    equivalent_diameter = (6 * nodule.sum() * np.prod(volume.spacing) / np.pi) ** (1 / 3)
    assert 10.5 <= equivalent_diameter <= 13.0
    np.testing.assert_allclose(world.mean(axis=0), center, atol=0.3)
    shell = np.linalg.norm(volume.index_to_world(np.argwhere(~nodule)) - center, axis=1)
    around = volume.array[~nodule][(shell > 8.0) & (shell < 10.0)]
    assert np.median(around) < -700  # the nodule sits in lung


def test_phantom_hu_are_chest_like():
    array = synthetic_chest().array
    assert -1024 <= array.min() and array.max() <= 3071
    assert np.median(array[:5, :5, :]) < -950  # air in the corners
    assert abs(np.median(array[78:83, 38:43, 40]) - 40) < 20  # soft tissue between the lungs
