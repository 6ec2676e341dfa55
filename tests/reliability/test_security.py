"""Security: no network at run time, no writing outside the output folder, no file names or
patient identifiers taken from DICOM tags, and no code run from a bundle nobody trusted.

Tampered weights and the trust flag at the library level are in ``tests/test_bundle.py``.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from reliability_support import (
    SHIPPED_WEIGHTS,
    RecordingAnalyzer,
    assert_one_clear_sentence,
    run_cli,
    snapshot,
    write_random_bundle,
)

from medcnn.app.batch import BatchRunner, ManifestRow, case_folder_name
from medcnn.bundle import sign_weights
from medcnn.phantom import NODULE_CENTER_RAS, synthetic_chest, write_dicom_series
from medcnn.volume import Volume

GUARD = Path(__file__).with_name("network_guard")
IDENTIFIERS = {
    "PatientName": "DOE^JANE^QUINCY",
    "PatientID": "MRN-4711-0815",
    "PatientBirthDate": "19450317",
    "OtherPatientIDs": "OTHER-ID-31337",
    "PatientAddress": "12 Example Lane, Springfield",
    "AccessionNumber": "ACC-99887766",
    "InstitutionName": "Saint Example Hospital",
    "ReferringPhysicianName": "HOUSE^GREGORY",
    "StudyID": "STUDY-5150",
    "StudyDescription": "CT THORAX JANE DOE",
}
HOSTILE_DESCRIPTION = "../../../escaped result.json"
OUTPUT_NAMES = {"result.json", "heatmap.nii.gz", "segmentation.nii.gz"}


def guarded_env(log: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MEDCNN_BUNDLE"}
    env["PYTHONPATH"] = os.pathsep.join([str(GUARD), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["MEDCNN_NETWORK_LOG"] = str(log)
    return env


def test_the_network_guard_blocks_and_records(tmp_path: Path) -> None:
    log = tmp_path / "network.log"
    code = "import urllib.request; urllib.request.urlopen('http://example.org', timeout=2)"
    done = subprocess.run(
        [sys.executable, "-c", code], env=guarded_env(log), capture_output=True, text=True
    )
    assert done.returncode != 0 and "network is blocked" in done.stderr
    assert "example.org" in log.read_text()


def identified_dicom_archive(folder: Path) -> Path:
    """What a hospital export looks like: the CT with identifiers in every tag, a shorter second
    series, a duplicated instance, and a series description that tries to be a path. (The folder
    is named neutrally: result.json repeats the input path the user gave, as given.)"""
    chest = synthetic_chest()
    main = write_dicom_series(
        chest, folder / "export" / "series1", series_description=HOSTILE_DESCRIPTION
    )
    for path in main:
        ds = pydicom.dcmread(path)
        for tag, value in IDENTIFIERS.items():
            setattr(ds, tag, value)
        ds.save_as(path)
    shutil.copy(main[40], main[40].with_name("copy_of_" + main[40].name))
    half = Volume(chest.array[:, :, :30].copy(), chest.affine)
    write_dicom_series(half, folder / "export" / "series2", uid_seed="second")
    return folder / "export"


@pytest.fixture(scope="module")
def offline_analysis(tmp_path_factory) -> dict:
    """``medcnn analyze`` in a fresh process whose sockets are blocked, on an identified DICOM
    archive; with the shipped model where it exists, else a random one (the network, the
    names and the identifiers do not depend on the weights)."""
    folder = tmp_path_factory.mktemp("offline")
    archive = identified_dicom_archive(folder / "input")
    bundle_args: list[str] = []
    if not SHIPPED_WEIGHTS.exists():
        bundle = write_random_bundle(folder / "bundle")
        bundle_args = ["--bundle", str(bundle), "--trust-bundle"]
    log = folder / "network.log"
    out = folder / "out"
    before = snapshot(folder / "input")
    point = [str(v) for v in NODULE_CENTER_RAS]
    done = subprocess.run(
        [sys.executable, "-m", "medcnn", "analyze", str(archive), "--point", *point]
        + ["--out", str(out), *bundle_args],
        env=guarded_env(log),
        capture_output=True,
        text=True,
        cwd=folder,
    )
    return {
        "done": done,
        "log": log,
        "out": out,
        "folder": folder,
        "input_unchanged": snapshot(folder / "input") == before,
    }


def test_analysis_works_with_the_network_blocked(offline_analysis: dict) -> None:
    done = offline_analysis["done"]
    assert done.returncode == 0, done.stderr[-3000:]
    assert not offline_analysis["log"].exists(), offline_analysis["log"].read_text()[:3000]


def test_output_names_are_fixed_and_nothing_is_written_elsewhere(offline_analysis: dict) -> None:
    assert offline_analysis["done"].returncode == 0
    folder = offline_analysis["folder"]
    assert {p.name for p in offline_analysis["out"].iterdir()} == OUTPUT_NAMES
    written = {p.name for p in folder.iterdir()} - {"input", "bundle"}
    assert written == {"out"}
    assert not any("escaped" in str(p) for p in folder.parent.rglob("*"))
    assert offline_analysis["input_unchanged"]


def test_outputs_carry_no_patient_identifiers(offline_analysis: dict) -> None:
    assert offline_analysis["done"].returncode == 0
    out = offline_analysis["out"]
    result = (out / "result.json").read_text()
    json.loads(result)
    headers = b""
    for name in ("heatmap.nii.gz", "segmentation.nii.gz"):
        raw = gzip.decompress((out / name).read_bytes())
        headers += raw[: 352 + 4096]  # the header and any extension, not the voxels
    for tag, value in IDENTIFIERS.items():
        for part in [value, *value.replace("^", " ").split()]:
            if len(part) >= 4:
                assert part.lower() not in result.lower(), (tag, part)
                assert part.encode() not in headers, (tag, part)
    # stdout and stderr (what a log would keep) hold none either
    said = offline_analysis["done"].stdout + offline_analysis["done"].stderr
    assert "MRN-4711" not in said and "HOUSE" not in said and "Saint Example" not in said


def test_the_series_choice_and_the_dropped_duplicate_are_reported(offline_analysis: dict) -> None:
    done = offline_analysis["done"]
    assert done.returncode == 0
    result = json.loads((offline_analysis["out"] / "result.json").read_text())
    assert (
        "chosen among 2 CT series because it has the most images"
        in (result["input"]["series_choice"])
    )
    assert result["input"]["shape"] == [160, 160, 80]
    assert any("duplicate" in w for w in result["warnings"])
    assert "warning: 1 duplicate image" in done.stderr


# --- manifest paths ----------------------------------------------------------------------------

HOSTILE_IDS = [
    "../../x",
    "..",
    ".",
    "",
    "/etc/passwd",
    "/tmp/medcnn-escape",
    "..\\..\\windows\\x",
    "C:\\Users\\x",
    "~/x",
    "a/../../b",
    "%2e%2e%2fx",
    "\x00nul",
    "CON",
    "x" * 500,
    "患者 名前",
]


def test_manifest_ids_and_paths_cannot_write_outside_the_output_folder(tmp_path: Path) -> None:
    lines = ["id,image,r,a,s"]
    for n, case_id in enumerate(HOSTILE_IDS):
        image = "/abs/scan.nii.gz" if n % 2 else "../../outside/scan.nii.gz"
        quoted = '"' + case_id.replace('"', '""') + '"'
        lines.append(f"{quoted},{image},1,2,3")
    manifest = tmp_path / "m" / "manifest.csv"
    manifest.parent.mkdir()
    manifest.write_text("\n".join(lines) + "\n")
    analyzer = RecordingAnalyzer()
    out = tmp_path / "out"
    BatchRunner(analyzer, manifest, out, progress=False).run()
    cases = (out / "cases").resolve()
    assert len(analyzer.out_dirs) == len(HOSTILE_IDS)
    assert len(set(analyzer.out_dirs)) == len(HOSTILE_IDS)
    for folder in analyzer.out_dirs:
        assert folder.resolve().parent == cases
    assert {p.name for p in tmp_path.iterdir()} == {"m", "out"}


@given(st.text(max_size=200))
def test_any_id_gives_one_safe_folder_name(case_id: str) -> None:
    row = ManifestRow(index=6, id=case_id, image="x", image_path=Path("x"), point=("1", "2", "3"))
    name = case_folder_name(row)
    assert name.startswith("00007_") and len(name) <= 66
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in name)
    assert (Path("/out/cases") / name).resolve().parent == Path("/out/cases")


# --- bundles that nobody trusted ---------------------------------------------------------------


class Payload:
    """A pickle that, if ever unpickled, creates a file: the trace of code that should not run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def booby_trapped_bundle(folder: Path, marker: Path) -> Path:
    """A bundle whose configs and weights both try to run code."""
    bundle = write_random_bundle(folder)
    config_path = bundle / "configs" / "inference.json"
    config = json.loads(config_path.read_text())
    config["imports"].append(f"$__import__('pathlib').Path({str(marker)!r}).touch()")
    config["preprocessing"]["size"] = f"$__import__('pathlib').Path({str(marker)!r}).touch() or 32"
    config_path.write_text(json.dumps(config))
    weights = bundle / "models" / "model.pt"
    state = torch.load(weights, weights_only=True)
    state["members.0.payload"] = Payload(marker)
    sign_weights(bundle, state)  # even a matching checksum
    return bundle


@pytest.mark.parametrize("trusted", [False, True], ids=["without trust", "with trust"])
def test_a_booby_trapped_bundle_runs_no_code(
    trusted: bool, phantom: dict, tmp_path: Path, capsys
) -> None:
    marker = tmp_path / "code_ran"
    bundle = booby_trapped_bundle(tmp_path / "bundle", marker)
    out = tmp_path / "out"
    args = ["analyze", phantom["nifti"], "--point", *map(str, NODULE_CENTER_RAS), "--out", out]
    args += ["--bundle", bundle] + (["--trust-bundle"] if trusted else [])
    run = run_cli(capsys, *args)
    phrase = "cannot be loaded" if trusted else "--trust-bundle"
    assert_one_clear_sentence(run, 9, phrase)
    assert not marker.exists() and not out.exists()
