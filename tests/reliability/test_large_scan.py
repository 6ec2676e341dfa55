"""A scan too large for memory is refused before any voxel is read, with exit code 10.

Each input here is a real header whose voxels are missing (cut off, or never written): with the
limit low it is refused with exit code 10; with the default limit the same input fails as
unreadable (4), which shows that the refusal came before anything tried to read the voxels.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from reliability_support import assert_one_clear_sentence, run_cli, snapshot

from medcnn.phantom import NODULE_CENTER_RAS, synthetic_chest
from medcnn.reading import MAX_SCAN_BYTES_ENV

PHANTOM_BYTES = 160 * 160 * 80 * 2


def headers_only_dicom(tmp: Path, phantom: dict) -> Path:
    folder = Path(shutil.copytree(phantom["dicom_dir"], tmp / "dicom"))
    for path in folder.glob("*.dcm"):
        path.write_bytes(path.read_bytes()[: -160 * 160 * 2])  # the pixel data is last
    return folder


def headers_only_nrrd(tmp: Path, phantom: dict) -> Path:
    array = synthetic_chest().array
    path = tmp / "scan.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.ascontiguousarray(array.T)), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"\n\n") + 2])
    return path


def headers_only_nifti(tmp: Path, phantom: dict) -> Path:
    data = Path(phantom["nifti"]).read_bytes()
    path = tmp / "scan.nii"
    path.write_bytes(gzip.decompress(data)[:352])
    return path


@pytest.mark.parametrize(
    "make",
    [headers_only_dicom, headers_only_nrrd, headers_only_nifti],
    ids=["dicom", "nrrd", "nifti"],
)
def test_over_the_limit_is_refused_before_loading(
    make, phantom: dict, tmp_bundle: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    image = make(tmp_path, phantom)
    out = tmp_path / "out"
    args = ["analyze", image, "--point", *map(str, NODULE_CENTER_RAS), "--out", out]
    args += ["--bundle", tmp_bundle, "--trust-bundle"]
    before = snapshot(tmp_path)
    monkeypatch.setenv(MAX_SCAN_BYTES_ENV, str(PHANTOM_BYTES - 1))
    run = run_cli(capsys, *args)
    assert_one_clear_sentence(run, 10, "GiB", "raise MEDCNN_MAX_SCAN_BYTES")
    assert snapshot(tmp_path) == before
    monkeypatch.delenv(MAX_SCAN_BYTES_ENV)
    assert run_cli(capsys, *args).code == 4  # loading it would have failed: it was not loaded
    assert snapshot(tmp_path) == before


def test_a_limit_that_is_not_a_number_is_a_usage_error(
    phantom: dict, tmp_bundle: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv(MAX_SCAN_BYTES_ENV, "4GB")
    out = tmp_path / "out"
    run = run_cli(
        capsys, "analyze", phantom["nifti"], "--point", *map(str, NODULE_CENTER_RAS),
        "--out", out, "--bundle", tmp_bundle, "--trust-bundle",
    )  # fmt: skip
    assert_one_clear_sentence(run, 2, "not a whole number of bytes")
    assert not out.exists()
