"""Results saved as DICOM into Slicer's DICOM database, on real MRML (slicer-core).

A volume is loaded from the files of a real DICOM series (the synthetic phantom's, which the
engine writes; the real chest CT series as a ``data`` case) through MRML's own reader, and
carries ``DICOM.instanceUIDs`` as Slicer's DICOM module sets it. ``RecordingDatabase`` stands in
for ``slicer.dicomDatabase``: it knows the series' files by SOP Instance UID, as the real one
does after an import, and copies what is inserted into its own folder, recording it. The
end-to-end test runs the real worker with the shipped models, so the DICOM objects it checks
are the engine's, read back with pydicom.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import pydicom
import pytest
from slicer_test_support import SLICER_CORE_MISSING, SettingsStore

slicer = pytest.importorskip("slicer", reason=SLICER_CORE_MISSING)

from MedCNNLib.AnalysisLogic import MedCNNLogic, pointFromRAS  # noqa: E402
from MedCNNLib.DicomResults import (  # noqa: E402
    INSTANCE_UIDS_ATTRIBUTE,
    dicomSeriesOf,
    saveToDatabase,
)
from MedCNNLib.Runner import WorkerRunner  # noqa: E402
from MedCNNLib.TaskLogic import AnalysisError  # noqa: E402
from slicer_scene_support import load_volume  # noqa: E402

from medcnn.catalog import XRAY_MODEL, installed_models  # noqa: E402
from medcnn.phantom import NODULE_CENTER_RAS, make_phantom  # noqa: E402

TIMEOUT = 900.0
DICOM_OUTPUTS = ("dicom_heatmap", "dicom_report", "dicom_segmentation")


class RecordingDatabase:
    """Slicer's DICOM database as the logic uses it: instance UIDs to files, and inserts that
    copy the file into the database's folder (``storeFile``), each recorded."""

    def __init__(self, folder: Path, files: Sequence[Path] = ()) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.files: dict[str, str] = {}
        self.inserted: list[Path] = []
        for path in files:
            self._index(path)

    def _index(self, path: Path) -> None:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        self.files[str(header.SOPInstanceUID)] = str(path)

    def fileForInstance(self, sopInstanceUID: str) -> str:
        return self.files.get(sopInstanceUID, "")

    def importFiles(self, paths: Sequence[str]) -> None:
        for path in paths:
            stored = self.folder / f"{len(self.inserted)}-{Path(path).name}"
            shutil.copyfile(path, stored)
            self.inserted.append(Path(path))
            self._index(stored)


def sop_instance_uids(files: Sequence[Path]) -> list[str]:
    return [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files]


def load_dicom_volume(scene, files: Sequence[Path], name: str):
    """The series as Slicer's DICOM module leaves it: a volume read from its files, carrying
    its instances' UIDs in file order."""
    volume = load_volume(scene, sorted(files), name)
    volume.SetAttribute(INSTANCE_UIDS_ATTRIBUTE, " ".join(sop_instance_uids(sorted(files))))
    return volume


@pytest.fixture(scope="module")
def phantom_series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = Path(make_phantom(tmp_path_factory.mktemp("phantom"))["dicom_dir"])
    return sorted(p for p in folder.rglob("*") if p.is_file())


# --- which volumes can have DICOM results: no worker runs ----------------------------------------


def test_the_original_series_is_found_through_the_database(scene, phantom_series, tmp_path):
    volume = load_dicom_volume(scene, phantom_series, "phantom")
    database = RecordingDatabase(tmp_path / "db", phantom_series)
    series = dicomSeriesOf(volume, database)
    assert Path(series.image) == phantom_series[0].parent
    assert series.files == tuple(str(p) for p in phantom_series)
    first = pydicom.dcmread(phantom_series[0], stop_before_pixels=True)
    assert series.seriesUid == str(first.SeriesInstanceUID)


def test_a_volume_not_loaded_from_dicom_is_refused_in_one_sentence(
    scene, phantom_series, tmp_path, standin_runner
):
    volume = load_volume(scene, sorted(phantom_series), "exported")  # no DICOM.instanceUIDs
    logic = MedCNNLogic(
        scene,
        standin_runner(),
        workDir=tmp_path / "work",
        dicomDatabase=RecordingDatabase(tmp_path / "db", phantom_series),
    )
    problem = logic.dicomResultsProblem(volume)
    assert problem is not None and problem.count(".") == 1
    assert problem.startswith("'exported' was not loaded from DICOM; DICOM results need")
    with pytest.raises(AnalysisError, match="was not loaded from DICOM") as refused:
        logic.startAnalysis(volume, [pointFromRAS(NODULE_CENTER_RAS)], saveDicom=True)
    assert refused.value.reason == "not_dicom_source"
    # the analysis itself stays possible without DICOM results
    task = logic.startAnalysis(volume, [pointFromRAS(NODULE_CENTER_RAS)], saveDicom=False)
    assert task.dicomSeries is None
    task.cancel()


def test_files_the_database_lacks_or_no_database_are_refused(scene, phantom_series, tmp_path):
    volume = load_dicom_volume(scene, phantom_series, "phantom")
    partial = RecordingDatabase(tmp_path / "db", phantom_series[:-2])
    with pytest.raises(AnalysisError, match=r"2 of its \d+ files are not in Slicer's DICOM"):
        dicomSeriesOf(volume, partial)
    with pytest.raises(AnalysisError, match="DICOM database is not open"):
        dicomSeriesOf(volume, None)
    moved = RecordingDatabase(tmp_path / "db2", phantom_series)  # a file gone from the disk
    moved.files[sop_instance_uids(phantom_series[:1])[0]] = str(tmp_path / "deleted.dcm")
    with pytest.raises(AnalysisError, match="1 of its"):
        dicomSeriesOf(volume, moved)


def test_the_checkbox_is_a_saved_parameter_and_the_default_of_a_start(
    scene, phantom_series, tmp_path, standin_runner
):
    from MedCNNLib.Parameters import Parameters

    store = SettingsStore()
    Parameters().save(store)
    assert Parameters.load(store).saveDicom is False  # off unless the user asks
    store["MedCNN/saveDicom"] = "true"  # QSettings gives strings back
    loaded = Parameters.load(store)
    assert loaded.saveDicom is True
    volume = load_volume(scene, sorted(phantom_series), "exported")
    logic = MedCNNLogic(scene, standin_runner(), workDir=tmp_path / "work", parameters=loaded)
    with pytest.raises(AnalysisError, match="was not loaded from DICOM"):
        logic.startAnalysis(volume, [pointFromRAS(NODULE_CENTER_RAS)])


class ForgetfulDatabase(RecordingDatabase):
    """Accepts inserts without keeping them (a database that failed quietly)."""

    def importFiles(self, paths: Sequence[str]) -> None:
        self.inserted.extend(Path(path) for path in paths)


class BrokenDatabase(RecordingDatabase):
    def importFiles(self, paths: Sequence[str]) -> None:
        raise OSError("database disk image is malformed")


def test_an_insert_the_database_did_not_keep_or_refused_is_one_sentence(phantom_series, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    shutil.copyfile(phantom_series[0], out / "report.dcm")  # any DICOM object
    result = {"outputs": {"result": "result.json", "dicom_report": "report.dcm"}}
    kept = RecordingDatabase(tmp_path / "db")
    assert saveToDatabase(kept, out, result) == [out / "report.dcm"]
    assert kept.inserted == [out / "report.dcm"]
    with pytest.raises(AnalysisError, match=r"did not keep report\.dcm;") as lost:
        saveToDatabase(ForgetfulDatabase(tmp_path / "db2"), out, result)
    assert lost.value.reason == "output"
    with pytest.raises(AnalysisError, match=r"could not be added .* \(database disk image"):
        saveToDatabase(BrokenDatabase(tmp_path / "db3"), out, result)
    with pytest.raises(AnalysisError, match="did not write the DICOM results"):
        saveToDatabase(kept, out, {"outputs": {"result": "result.json"}})
    with pytest.raises(AnalysisError, match="closed during the analysis"):
        saveToDatabase(None, out, result)


# --- end to end: the real worker writes the objects, the database receives them ---------------


@pytest.fixture(scope="module")
def runner():
    runner = WorkerRunner()
    yield runner
    runner.shutdown()


def analyse_to_database(scene, runner, files: list[Path], ras, tmp_path: Path):
    volume = load_dicom_volume(scene, files, "series")
    database = RecordingDatabase(tmp_path / "db", files)
    logic = MedCNNLogic(
        scene, runner, workDir=tmp_path / "work", keepOutputs=True, dicomDatabase=database
    )
    assert logic.dicomResultsProblem(volume) is None
    task = logic.analyze(volume, [pointFromRAS(ras, "N1")], TIMEOUT, saveDicom=True)
    assert task.failed == [], task.message
    return task.outcomes[0], database


def assert_objects_join_the_source(outcome, database, files: list[Path]) -> None:
    result = outcome.result
    # the worker read the original series, not an export of the volume
    assert Path(result["input"]["path"]) == files[0].parent
    assert result["input"]["format"] == "dicom"
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert result["input"]["series_instance_uid"] == str(source.SeriesInstanceUID)
    written = [outcome.outputDir / result["outputs"][key] for key in DICOM_OUTPUTS]
    assert all(path.is_file() for path in written)
    assert sorted(database.inserted) == sorted(written)
    assert "3 DICOM objects saved to the DICOM database" in outcome.summary()
    objects = {path.name: pydicom.dcmread(path) for path in written}
    uids = {str(ds.SOPInstanceUID) for ds in objects.values()}
    assert len(uids) == 3 and all(database.fileForInstance(uid) for uid in uids)
    for ds in objects.values():
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.PatientID == source.PatientID and ds.PatientName == source.PatientName
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    source_uids = set(sop_instance_uids(files))
    seg = objects[result["outputs"]["dicom_segmentation"]]
    assert seg.Modality == "SEG"
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == source.SeriesInstanceUID
    assert {str(i.ReferencedSOPInstanceUID) for i in referenced.ReferencedInstanceSequence} <= (
        source_uids
    )
    report = objects[result["outputs"]["dicom_report"]]
    evidence = {
        str(series.SeriesInstanceUID)
        for study in report.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
    }
    assert {str(source.SeriesInstanceUID), str(seg.SeriesInstanceUID)} <= evidence


@pytest.mark.slow
def test_phantom_results_reach_the_database_as_dicom(scene, runner, phantom_series, tmp_path):
    outcome, database = analyse_to_database(
        scene, runner, phantom_series, NODULE_CENTER_RAS, tmp_path
    )
    assert_objects_join_the_source(outcome, database, phantom_series)
    assert scene.GetNodeByID(outcome.nodeIDs["heatmap"]) is not None  # the scene has them too


@pytest.mark.slow
@pytest.mark.data
def test_chest_ct_results_reach_the_database_as_dicom(scene, runner, shared_data, tmp_path):
    from slicer_test_support import CHEST_LUNG_RAS

    files = sorted((shared_data / "ct" / "chest_ct_dicom").glob("*.dcm"))
    outcome, database = analyse_to_database(scene, runner, files, CHEST_LUNG_RAS, tmp_path)
    assert_objects_join_the_source(outcome, database, files)


@pytest.mark.slow
@pytest.mark.skipif(XRAY_MODEL not in installed_models(), reason="no chest X-ray bundle")
def test_a_dicom_radiographs_report_reaches_the_database(scene, runner, tmp_path):
    """One instance: the worker gets the file itself; the engine writes the report and the
    heatmap's Parametric Map."""
    from radiograph_files import radiograph_study, write_dicom

    from medcnn.xray.phantom import synthetic_radiograph

    study = radiograph_study(ImagerPixelSpacing=[0.5, 0.5])
    image = write_dicom(tmp_path / "chest.dcm", synthetic_radiograph(), **study)
    volume = load_dicom_volume(scene, [image], "radiograph")
    database = RecordingDatabase(tmp_path / "db", [image])
    logic = MedCNNLogic(
        scene, runner, workDir=tmp_path / "work", keepOutputs=True, dicomDatabase=database
    )
    task = logic.analyze(volume, None, TIMEOUT, saveDicom=True)
    assert task.failed == [], task.message
    outcome = task.outcomes[0]
    assert outcome.result["input"]["path"] == str(image)
    assert outcome.result["outputs"]["dicom_report"] == "report.dcm"
    assert sorted(database.inserted) == sorted(
        outcome.outputDir / name for name in ("heatmap.dcm", "report.dcm")
    )
    report = pydicom.dcmread(outcome.outputDir / "report.dcm")
    source = pydicom.dcmread(image, stop_before_pixels=True)
    assert report.StudyInstanceUID == source.StudyInstanceUID
    assert report.PatientID == "SYNTHETIC-1"


@pytest.mark.slow
def test_a_database_failure_is_the_outcomes_error_and_the_scene_keeps_the_results(
    scene, runner, phantom_series, tmp_path
):
    volume = load_dicom_volume(scene, phantom_series, "phantom")
    database = BrokenDatabase(tmp_path / "db", phantom_series)
    logic = MedCNNLogic(scene, runner, workDir=tmp_path / "work", dicomDatabase=database)
    task = logic.analyze(volume, [pointFromRAS(NODULE_CENTER_RAS, "N1")], TIMEOUT, saveDicom=True)
    (outcome,) = task.failed
    assert outcome.error.startswith("The DICOM results could not be added to Slicer's DICOM")
    assert outcome.exitCode == runner.hello.exitCode("output")
    assert scene.GetNodeByID(outcome.nodeIDs["heatmap"]) is not None
