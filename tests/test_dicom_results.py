"""--dicom: the SEG, Parametric Map and SR of a nodule, checked by tools MedCNN does not write.

dciodvfy (dicom3tools) validates each object against the standard; dcmqi, the converter 3D
Slicer uses, reads them back, and what it reads must equal segmentation.nii.gz, heatmap.nii.gz
and result.json. The real chest CT series is the source where the data is present; the
synthetic phantom's DICOM series, always, for the command line's refusals and the round trip.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from command_line import medcnn, series_and_nifti_manifest
from pydicom.dataset import Dataset
from radiograph_files import PATIENT_AND_STUDY, radiograph_study, write_dicom
from result_checks import assert_valid_result

import medcnn.app.analysis as analysis_module
from medcnn.app.analysis import Analyzer
from medcnn.catalog import XRAY_MODEL, installed_models
from medcnn.errors import NotDicomSourceError
from medcnn.phantom import NODULE_CENTER_RAS
from medcnn.volume import LPS_TO_RAS
from medcnn.xray.phantom import synthetic_radiograph

CHEST_CT_POINT_RAS = (-48.9, -79.7, 35.5)
BIN = Path(sys.executable).parent
DCIODVFY, SEGIMAGE2ITKIMAGE = BIN / "dciodvfy", BIN / "segimage2itkimage"
PARAMAP2ITKIMAGE, TID1500READER = BIN / "paramap2itkimage", BIN / "tid1500reader"
FILES = ("segmentation.dcm", "heatmap.dcm", "report.dcm")
# The warnings dciodvfy leaves on the chest CT's objects, each for a reason the README gives:
# the source's Patient ID and Study ID are empty, and are copied as they are.
EXPECTED_WARNINGS = {
    "Warning - Missing attribute or value that would be needed to build DICOMDIR - Patient ID",
    "Warning - Missing attribute or value that would be needed to build DICOMDIR - Study ID",
}


@pytest.fixture(scope="module")
def chest_ct(shared_data: Path, analyzer: Analyzer, tmp_path_factory: pytest.TempPathFactory):
    """The real chest CT series, analysed once with --dicom: (series folder, output folder)."""
    series = shared_data / "ct" / "chest_ct_dicom"
    out = tmp_path_factory.mktemp("chest_ct") / "out"
    analyzer.analyze_file(series, CHEST_CT_POINT_RAS, out, dicom=True)
    return series, out


def source_headers(series: Path) -> dict[str, Dataset]:
    """The source series' headers by SOP Instance UID."""
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(series.glob("*.dcm"))]
    return {str(h.SOPInstanceUID): h for h in headers}


def world_points(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The RAS centres of an image's non-zero voxels, and their values, read with SimpleITK."""
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    index = np.argwhere(array != 0)
    lps = np.array([image.TransformContinuousIndexToPhysicalPoint(i.tolist()) for i in index])
    return (lps * [-1, -1, 1] if len(lps) else lps.reshape(0, 3)), array[array != 0]


def nifti_points(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(str(path))
    array = np.asarray(image.dataobj)
    index = np.argwhere(array != 0)
    return nib.affines.apply_affine(image.affine, index), array[array != 0]


def sorted_rows(points: np.ndarray, values: np.ndarray) -> np.ndarray:
    rows = np.c_[np.round(points, 2), values]
    return rows[np.lexsort(rows.T[::-1])]


def content_items(dataset: Dataset):
    for item in dataset.get("ContentSequence", []):
        yield item
        yield from content_items(item)


# --- the real chest CT: validators and independent readers ------------------------------------


@pytest.mark.data
@pytest.mark.parametrize("name", FILES)
def test_dciodvfy_reports_no_error(chest_ct, name: str) -> None:
    done = subprocess.run([DCIODVFY, chest_ct[1] / name], capture_output=True, text=True)
    lines = {line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()}
    assert not [line for line in lines if line.startswith("Error")], lines
    assert {line for line in lines if line.startswith("Warning")} <= EXPECTED_WARNINGS


@pytest.mark.data
def test_the_seg_read_by_dcmqi_is_the_segmentation_voxel_for_voxel(chest_ct, tmp_path) -> None:
    series, out = chest_ct
    subprocess.run(
        [SEGIMAGE2ITKIMAGE, "--inputDICOM", out / "segmentation.dcm", "--outputDirectory",
         tmp_path, "--outputType", "nifti"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    read_back = sorted_rows(*world_points(tmp_path / "1.nii.gz"))
    written = sorted_rows(*nifti_points(out / "segmentation.nii.gz"))
    assert len(written) > 100
    np.testing.assert_array_equal(read_back, written)


@pytest.mark.data
def test_the_seg_frames_reference_the_source_slices_they_lie_on(chest_ct) -> None:
    series, out = chest_ct
    sources = source_headers(series)
    seg = pydicom.dcmread(out / "segmentation.dcm")
    assert (seg.Rows, seg.Columns) == (512, 512)
    for frame in seg.PerFrameFunctionalGroupsSequence:
        position = np.asarray(frame.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        source = frame.DerivationImageSequence[0].SourceImageSequence[0]
        header = sources[str(source.ReferencedSOPInstanceUID)]
        np.testing.assert_allclose(position, np.asarray(header.ImagePositionPatient, float))
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == next(iter(sources.values())).SeriesInstanceUID


@pytest.mark.data
def test_the_parametric_map_read_by_dcmqi_is_the_heatmap(chest_ct, tmp_path) -> None:
    out = chest_ct[1]
    subprocess.run(
        [PARAMAP2ITKIMAGE, "--inputDICOM", out / "heatmap.dcm", "--outputDirectory", tmp_path],
        check=True,
        capture_output=True,
    )
    pmap = sitk.ReadImage(str(next(tmp_path.glob("*.nrrd"))))
    heatmap = nib.load(str(out / "heatmap.nii.gz"))
    expected = np.asarray(heatmap.dataobj)
    array = sitk.GetArrayFromImage(pmap).transpose(2, 1, 0)
    assert array.shape == expected.shape
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(pmap.GetDirection()).reshape(3, 3) * np.asarray(pmap.GetSpacing())
    lps[:3, 3] = pmap.GetOrigin()
    np.testing.assert_allclose(LPS_TO_RAS @ lps, heatmap.affine, atol=1e-4)
    np.testing.assert_allclose(array, expected, atol=1e-6, rtol=0)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["QuantityValueCode"]["CodeValue"] == "130404"  # DCM Saliency


@pytest.mark.data
def measurements_read_by_dcmqi(report: Path, folder: Path) -> list[dict]:
    """The report's measurement groups as dcmqi's ``tid1500reader`` (3D Slicer's) reads them."""
    metadata = folder / "sr.json"
    subprocess.run(
        [TID1500READER, "--inputDICOM", report, "--outputMetadata", metadata],
        check=True,
        capture_output=True,
    )
    return json.loads(metadata.read_text())["Measurements"]


def test_the_report_read_by_dcmqi_holds_result_json(chest_ct, tmp_path) -> None:
    series, out = chest_ct
    result = json.loads((out / "result.json").read_text())
    assert_valid_result(result)
    assert result["outputs"]["dicom_report"] == "report.dcm"
    groups = measurements_read_by_dcmqi(out / "report.dcm", tmp_path)
    values = {
        (item["quantity"]["CodeValue"], item.get("derivationModifier", {}).get("CodeValue")): (
            float(item["value"]),
            item["units"]["CodeValue"],
        )
        for group in groups
        for item in group["measurementItems"]
    }
    assert values == {
        ("118565006", None): (result["volume_ml"], "mL"),
        ("103339001", None): (result["diameter_mm"], "mm"),
        ("112019", None): (pytest.approx(result["calcified_share"] * 100), "%"),
        ("111047", None): (result["probability"], "1"),
        ("111047", "386136009"): (result["uncertainty"], "1"),
    }
    seg = pydicom.dcmread(out / "segmentation.dcm")
    segment = seg.SegmentSequence[0]
    measured = next(g for g in groups if "ReferencedSegment" in g)
    assert measured["segmentationSOPInstanceUID"] == seg.SOPInstanceUID
    assert measured["ReferencedSegment"] == 1
    assert {g["TrackingUniqueIdentifier"] for g in groups} == {segment.TrackingUID}
    assert (
        measured["SourceSeriesForImageSegmentation"]
        == seg.ReferencedSeriesSequence[0]["SeriesInstanceUID"].value
    )


@pytest.mark.data
def test_the_report_has_the_point_and_its_evidence(chest_ct) -> None:
    series, out = chest_ct
    result = json.loads((out / "result.json").read_text())
    report = pydicom.dcmread(out / "report.dcm")
    points = [i for i in content_items(report) if i.ValueType == "SCOORD3D"]
    assert len(points) == 1 and points[0].GraphicType == "POINT"
    np.testing.assert_allclose(points[0].GraphicData, result["point"]["lps"], atol=1e-4)
    evidence = {
        str(instance.ReferencedSOPInstanceUID)
        for study in report.CurrentRequestedProcedureEvidenceSequence
        for series_item in study.ReferencedSeriesSequence
        for instance in series_item.ReferencedSOPSequence
    }
    seg, pm = (pydicom.dcmread(out / name) for name in FILES[:2])
    assert {seg.SOPInstanceUID, pm.SOPInstanceUID} <= evidence
    assert evidence - {seg.SOPInstanceUID, pm.SOPInstanceUID} <= set(source_headers(series))
    sha = result["model"]["weights_sha256"]
    assert any(sha in str(i.get("TextValue", "")) for i in content_items(report))


@pytest.mark.data
def test_each_object_is_a_new_series_in_the_source_study(chest_ct) -> None:
    series, out = chest_ct
    source = next(iter(source_headers(series).values()))
    objects = [pydicom.dcmread(out / name) for name in FILES]
    for dataset in objects:
        for name in PATIENT_AND_STUDY:
            assert dataset.get(name) == source.get(name), name
        assert dataset.SeriesInstanceUID != source.SeriesInstanceUID
    uids = [d.SOPInstanceUID for d in objects] + [d.SeriesInstanceUID for d in objects]
    assert len(set(uids)) == 6
    for uid in uids:
        assert pydicom.uid.UID(uid).is_valid


# --- the synthetic phantom: always runs ---------------------------------------------------------


def without_uids_and_times(dataset: Dataset) -> list:
    """The dataset's content with what must differ between runs left out: UIDs, dates, times."""
    rows = []
    for element in dataset.iterall():
        if element.VR in ("UI", "DA", "TM", "DT") or element.VR == "SQ":
            continue
        value = element.value
        rows.append((str(element.tag), value if not isinstance(value, bytes) else hash(value)))
    return rows


def test_a_rerun_gives_new_uids_and_otherwise_the_same_objects(
    phantom: dict, analyzer: Analyzer, tmp_path: Path
) -> None:
    runs = []
    for out in (tmp_path / "first", tmp_path / "second"):
        analyzer.analyze_file(phantom["dicom_dir"], NODULE_CENTER_RAS, out, dicom=True)
        runs.append([pydicom.dcmread(out / name) for name in FILES])
    for first, second in zip(*runs, strict=True):
        assert first.SOPInstanceUID != second.SOPInstanceUID
        assert first.SeriesInstanceUID != second.SeriesInstanceUID
        assert without_uids_and_times(first) == without_uids_and_times(second)
        assert first.StudyInstanceUID == second.StudyInstanceUID


def test_non_dicom_input_is_refused_before_any_work(phantom: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    point = [str(v) for v in NODULE_CENTER_RAS]
    done = medcnn("analyze", str(phantom["nifti"]), "--point", *point, "--out", str(out), "--dicom")
    assert done.returncode == NotDicomSourceError.exit_code == 15
    assert "is not DICOM" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_a_source_without_a_patient_id_is_refused_naming_it_before_the_network(
    phantom: dict, analyzer: Analyzer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    series = tmp_path / "series"
    shutil.copytree(phantom["dicom_dir"], series)
    for path in series.iterdir():
        dataset = pydicom.dcmread(path)
        del dataset.PatientID
        dataset.save_as(path)

    def network(*args, **kwargs):
        raise AssertionError("the network ran for a source that cannot carry the results")

    monkeypatch.setattr(analysis_module, "predict", network)
    with pytest.raises(NotDicomSourceError, match="PatientID"):
        analyzer.analyze_file(series, NODULE_CENTER_RAS, tmp_path / "out", dicom=True)
    assert not (tmp_path / "out").exists()


def test_without_dicom_no_dicom_file_is_left(
    phantom: dict, analyzer: Analyzer, tmp_path: Path
) -> None:
    """A folder written with --dicom, then without, holds only what its result.json lists."""
    out = tmp_path / "out"
    analyzer.analyze_file(phantom["dicom_dir"], NODULE_CENTER_RAS, out, dicom=True)
    assert all((out / name).exists() for name in FILES)
    result = analyzer.analyze_file(phantom["dicom_dir"], NODULE_CENTER_RAS, out)
    assert not any((out / name).exists() for name in FILES)
    assert "dicom_report" not in result.outputs.to_json()


def test_batch_writes_each_cases_dicom_results_and_refuses_non_dicom_rows(
    phantom: dict, tmp_path: Path
) -> None:
    manifest = series_and_nifti_manifest(phantom, tmp_path)
    out = tmp_path / "out"
    done = medcnn("batch", str(manifest), "--out", str(out), "--no-progress", "--dicom")
    assert done.returncode == 11, done.stderr  # one case refused
    rows = (out / "predictions.csv").read_text().splitlines()
    assert "is not DICOM" in rows[2] and "is not DICOM" not in rows[1]
    (series_case,) = (out / "cases").glob("*_series")
    assert all((series_case / name).exists() for name in FILES)
    report = pydicom.dcmread(series_case / "report.dcm")
    source = pydicom.dcmread(next(Path(phantom["dicom_dir"]).iterdir()))
    assert report.StudyInstanceUID == source.StudyInstanceUID
    assert not list((out / "cases").glob("*_nifti/*.dcm"))


# --- a radiograph: the heatmap and the report ---------------------------------------------------


@pytest.mark.skipif(XRAY_MODEL not in installed_models(), reason="no chest X-ray bundle")
def test_a_dicom_radiographs_heatmap_and_report(tmp_path: Path) -> None:
    pixels = synthetic_radiograph()
    study = radiograph_study(ImagerPixelSpacing=[0.2, 0.25])
    image = write_dicom(tmp_path / "chest.dcm", pixels, **study)
    out = tmp_path / "out"
    done = medcnn("analyze", str(image), "--out", str(out), "--dicom")
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "result.json").read_text())
    assert_valid_result(result)
    assert result["outputs"]["dicom_report"] == "report.dcm"
    assert result["outputs"]["dicom_heatmap"] == "heatmap.dcm"
    assert not (out / "segmentation.dcm").exists()
    for name in ("heatmap.dcm", "report.dcm"):
        checked = subprocess.run([DCIODVFY, out / name], capture_output=True, text=True)
        said = checked.stdout + checked.stderr
        assert "Error" not in said and "Warning" not in said, said
    source = pydicom.dcmread(image, stop_before_pixels=True)
    # The map: pixel for pixel the radiograph's, equal to heatmap.nii.gz (which stores the
    # heatmap in 1/255 steps, so within half a step), in a frame of reference of its own.
    pm = pydicom.dcmread(out / "heatmap.dcm")
    assert (pm.NumberOfFrames, pm.Rows, pm.Columns) == (1, *pixels.shape)
    values = np.frombuffer(pm.FloatPixelData, dtype="<f4").reshape(pixels.shape)
    nifti = np.asarray(nib.load(out / "heatmap.nii.gz").dataobj)[:, :, 0].T
    assert np.abs(values - nifti).max() <= 0.5 / 255 + 1e-6
    assert values.max() > 0.5  # a real heatmap, not zeros
    subprocess.run(
        [PARAMAP2ITKIMAGE, "--inputDICOM", out / "heatmap.dcm", "--outputDirectory", tmp_path],
        check=True,
        capture_output=True,
    )  # dcmqi, as 3D Slicer reads it
    read = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "pmap.nrrd")))
    assert read.shape == (1, *pixels.shape)
    assert np.abs(read[0] - nifti).max() <= 0.5 / 255 + 1e-6
    frame = pm.PerFrameFunctionalGroupsSequence[0]
    referenced = frame.DerivationImageSequence[0].SourceImageSequence[0]
    assert referenced.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert referenced.SpatialLocationsPreserved == "YES"
    assert "FrameOfReferenceUID" not in source and pydicom.uid.UID(pm.FrameOfReferenceUID).is_valid
    measures = pm.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert [float(v) for v in measures.PixelSpacing] == [0.2, 0.25]
    for name in PATIENT_AND_STUDY:
        assert pm.get(name) == source.get(name), name
    # The report: the probability and its uncertainty, referencing the radiograph and the map.
    (group,) = measurements_read_by_dcmqi(out / "report.dcm", tmp_path)
    assert group["Finding"]["CodeValue"] == "233604007"  # SCT Pneumonia
    values_read = [float(item["value"]) for item in group["measurementItems"]]
    assert values_read == [result["probability"], result["uncertainty"]]
    report = pydicom.dcmread(out / "report.dcm")
    referenced_images = {
        str(image.ReferencedSOPInstanceUID)
        for item in content_items(report)
        for image in item.get("ReferencedSOPSequence", [])
    }
    assert {pm.SOPInstanceUID, source.SOPInstanceUID} <= referenced_images
    for name in PATIENT_AND_STUDY:
        assert report.get(name) == source.get(name), name


@pytest.mark.skipif(XRAY_MODEL not in installed_models(), reason="no chest X-ray bundle")
def radiograph_map_placed_at(
    tmp_path: Path, frame_of_reference: str, orientation: list[float]
) -> pydicom.Dataset:
    """The heatmap's Parametric Map of a radiograph whose header places it at (-150, -100, 200)
    mm with ``orientation``, in ``frame_of_reference``."""
    study = radiograph_study(
        PixelSpacing=[0.3, 0.3],
        FrameOfReferenceUID=frame_of_reference,
        ImagePositionPatient=[-150.0, -100.0, 200.0],
        ImageOrientationPatient=orientation,
    )
    image = write_dicom(tmp_path / "chest.dcm", synthetic_radiograph(), **study)
    out = tmp_path / "out"
    done = medcnn("analyze", str(image), "--out", str(out), "--dicom")
    assert done.returncode == 0, done.stderr
    return pydicom.dcmread(out / "heatmap.dcm")


@pytest.mark.skipif(XRAY_MODEL not in installed_models(), reason="no chest X-ray bundle")
def test_a_radiograph_placed_in_the_patient_shares_its_frame_of_reference(
    tmp_path: Path,
) -> None:
    frame_of_reference = pydicom.uid.generate_uid()
    pm = radiograph_map_placed_at(tmp_path, frame_of_reference, [1.0, 0.0, 0.0, 0.0, 0.0, -1.0])
    assert pm.FrameOfReferenceUID == frame_of_reference
    shared = pm.SharedFunctionalGroupsSequence[0]
    orientation = shared.PlaneOrientationSequence[0].ImageOrientationPatient
    assert [float(v) for v in orientation] == [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]
    position = pm.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]
    assert [float(v) for v in position.ImagePositionPatient] == [-150.0, -100.0, 200.0]


@pytest.mark.skipif(XRAY_MODEL not in installed_models(), reason="no chest X-ray bundle")
def test_a_radiograph_placed_elsewhere_than_its_own_plane_gets_a_frame_of_reference_of_its_own(
    tmp_path: Path,
) -> None:
    frame_of_reference = pydicom.uid.generate_uid()
    not_perpendicular_units = [1.0, 0.0, 0.0, 0.5, 0.0, -1.0]
    pm = radiograph_map_placed_at(tmp_path, frame_of_reference, not_perpendicular_units)
    assert pm.FrameOfReferenceUID != frame_of_reference  # placed at origin 0, as the NIfTI is
    position = pm.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]
    assert [float(v) for v in position.ImagePositionPatient] == [0.0, 0.0, 0.0]


@pytest.mark.skipif(XRAY_MODEL not in installed_models(), reason="no chest X-ray bundle")
def test_a_radiograph_without_a_pixel_spacing_is_refused_with_dicom(tmp_path: Path) -> None:
    image = write_dicom(tmp_path / "chest.dcm", synthetic_radiograph(), **radiograph_study())
    done = medcnn("analyze", str(image), "--out", str(tmp_path / "out"), "--dicom")
    assert done.returncode == NotDicomSourceError.exit_code == 15
    assert "ImagerPixelSpacing" in done.stderr and done.stderr.strip().count("\n") == 0
    assert not (tmp_path / "out").exists()


def test_a_png_radiograph_is_refused_with_dicom(tmp_path: Path) -> None:
    picture = tmp_path / "chest.png"
    picture.write_bytes(b"")  # refused by its name, before it is read
    done = medcnn("analyze", str(picture), "--out", str(tmp_path / "out"), "--dicom")
    assert done.returncode == 15 and "is not DICOM" in done.stderr
