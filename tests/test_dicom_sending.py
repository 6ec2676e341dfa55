"""--store and --stow against a real archive: Orthanc (the Debian package), started here on
loopback ports with its own configuration and storage, then asked through its REST API what
arrived. Skipped, with the reason, where the Orthanc binary is missing (CI installs it)."""

from __future__ import annotations

import csv
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from command_line import medcnn, series_and_nifti_manifest

from medcnn.errors import SendError, UsageError
from medcnn.outputs.sending import store_destination
from medcnn.phantom import NODULE_CENTER_RAS

ORTHANC = shutil.which("Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
FILES = ("segmentation.dcm", "heatmap.dcm", "report.dcm")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Archive:
    """One Orthanc process with its own storage, on loopback."""

    def __init__(self, folder: Path) -> None:
        self.http, self.dicom = free_port(), free_port()
        config = {
            "Name": "medcnn-test",
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "storage"),
            "HttpPort": self.http,
            "DicomPort": self.dicom,
            "DicomAet": "ORTHANC",
            "DicomCheckCalledAet": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [str(DICOMWEB_PLUGIN)] if DICOMWEB_PLUGIN.exists() else [],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        (folder / "orthanc.json").write_text(json.dumps(config))
        self.log = open(folder / "orthanc.log", "w")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [str(ORTHANC), str(folder / "orthanc.json")], stdout=self.log, stderr=self.log
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.get("/system")
                return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not start: {(folder / 'orthanc.log').read_text()}")

    @property
    def store_to(self) -> str:
        return f"ORTHANC@127.0.0.1:{self.dicom}"

    @property
    def stow_to(self) -> str:
        return f"http://127.0.0.1:{self.http}/dicom-web"

    def read(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}{path}", timeout=5) as answer:
            return answer.read()

    def get(self, path: str):
        return json.loads(self.read(path))

    def instances(self) -> dict[str, pydicom.Dataset]:
        """Every stored instance, read back from Orthanc, by SOP Instance UID."""
        found = {}
        for orthanc_id in self.get("/instances"):
            data = self.read(f"/instances/{orthanc_id}/file")
            dataset = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
            found[str(dataset.SOPInstanceUID)] = dataset
        return found

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    if ORTHANC is None:
        pytest.skip("Orthanc is not installed (apt-get install orthanc)")
    running = Archive(tmp_path)
    yield running
    running.stop()


def analyze(phantom: dict, out: Path, *options: str) -> subprocess.CompletedProcess:
    point = [str(v) for v in NODULE_CENTER_RAS]
    return medcnn(
        "analyze", str(phantom["dicom_dir"]), "--point", *point, "--out", str(out), *options
    )


def assert_arrived_together(archive: Archive, out: Path, phantom: dict) -> None:
    """The three objects are in the archive, in the source's study; the SR references the SEG,
    the SEG the source series."""
    stored = archive.instances()
    written = {name: pydicom.dcmread(out / name) for name in FILES}
    assert set(stored) == {str(d.SOPInstanceUID) for d in written.values()}
    seg = stored[written["segmentation.dcm"].SOPInstanceUID]
    report = stored[written["report.dcm"].SOPInstanceUID]
    source = pydicom.dcmread(next(Path(phantom["dicom_dir"]).iterdir()))
    assert {d.StudyInstanceUID for d in stored.values()} == {source.StudyInstanceUID}
    assert len(archive.get("/studies")) == 1 and len(archive.get("/series")) == 3
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    evidence = {
        str(i.ReferencedSOPInstanceUID)
        for study in report.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for i in series.ReferencedSOPSequence
    }
    assert seg.SOPInstanceUID in evidence


def test_store_sends_the_three_objects_by_c_store(
    archive: Archive, phantom: dict, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    done = analyze(phantom, out, "--store", archive.store_to)
    assert done.returncode == 0, done.stderr
    assert f"sent 3 DICOM objects to {archive.store_to}" in done.stdout
    assert_arrived_together(archive, out, phantom)


@pytest.mark.skipif(not DICOMWEB_PLUGIN.exists(), reason="orthanc-dicomweb is not installed")
def test_stow_sends_the_three_objects_by_dicomweb(
    archive: Archive, phantom: dict, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    done = analyze(phantom, out, "--stow", archive.stow_to)
    assert done.returncode == 0, done.stderr
    assert_arrived_together(archive, out, phantom)


def test_a_rejected_association_is_one_sentence_and_the_files_stay(
    archive: Archive, phantom: dict, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    done = analyze(phantom, out, "--store", f"NOT_ORTHANC@127.0.0.1:{archive.dicom}")
    assert done.returncode == SendError.exit_code == 16
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "rejected the association" in done.stderr and "not sent" in done.stderr
    assert all((out / name).exists() for name in FILES)
    assert archive.get("/instances") == []


def test_an_archive_that_does_not_answer_is_one_sentence(phantom: dict, tmp_path: Path) -> None:
    done = analyze(phantom, tmp_path / "out", "--store", f"ORTHANC@127.0.0.1:{free_port()}")
    assert done.returncode == 16
    assert "cannot be reached" in done.stderr and done.stderr.strip().count("\n") == 0
    assert (tmp_path / "out" / "report.dcm").exists()


@pytest.mark.skipif(not DICOMWEB_PLUGIN.exists(), reason="orthanc-dicomweb is not installed")
def test_a_stow_refusal_is_one_sentence(archive: Archive, phantom: dict, tmp_path: Path) -> None:
    done = analyze(phantom, tmp_path / "out", "--stow", f"http://127.0.0.1:{archive.http}/no")
    assert done.returncode == 16 and "HTTP 404" in done.stderr
    assert archive.get("/instances") == []


def test_a_bad_destination_is_refused_before_any_work(phantom: dict, tmp_path: Path) -> None:
    done = analyze(phantom, tmp_path / "out", "--store", "localhost:4242")
    assert done.returncode == UsageError.exit_code
    assert not (tmp_path / "out").exists()
    assert store_destination("PACS@archive.example:104") == ("PACS", "archive.example", 104)


# --- medcnn batch: each case sent once its folder is written ------------------------------------


def batch(phantom: dict, folder: Path, *options: str) -> subprocess.CompletedProcess:
    """``medcnn batch`` of ``series_and_nifti_manifest``'s two rows."""
    manifest = series_and_nifti_manifest(phantom, folder)
    return medcnn("batch", str(manifest), "--out", str(folder / "out"), "--no-progress", *options)


def errors(out: Path) -> dict[str, str]:
    with open(out / "predictions.csv", newline="") as table:
        return {row["id"]: row["error"] for row in csv.DictReader(table)}


def test_batch_sends_each_cases_objects_after_writing_them(
    archive: Archive, phantom: dict, tmp_path: Path
) -> None:
    done = batch(phantom, tmp_path, "--store", archive.store_to)
    assert done.returncode == 11, done.stderr  # the NIfTI row, refused on its own
    out = tmp_path / "out"
    failed = errors(out)
    assert failed["series"] == "" and "is not DICOM" in failed["nifti"]
    (case,) = (out / "cases").glob("*_series")
    assert_arrived_together(archive, case, phantom)


def test_batch_a_case_that_cannot_be_sent_is_its_rows_error(
    archive: Archive, phantom: dict, tmp_path: Path
) -> None:
    done = batch(phantom, tmp_path, "--store", f"NOT_ORTHANC@127.0.0.1:{archive.dicom}")
    assert done.returncode == 11, done.stderr
    out = tmp_path / "out"
    error = errors(out)["series"]
    assert "rejected the association" in error and "not sent" in error
    assert error.count(". ") == 0  # one sentence
    (case,) = (out / "cases").glob("*_series")
    assert all((case / name).exists() for name in FILES)  # written, kept, not sent
    assert archive.get("/instances") == []


def test_batch_refuses_a_bad_destination_before_any_work(phantom: dict, tmp_path: Path) -> None:
    done = batch(phantom, tmp_path, "--stow", "archive.example/dicom-web")
    assert done.returncode == UsageError.exit_code and "--stow" in done.stderr
    assert not (tmp_path / "out").exists()
