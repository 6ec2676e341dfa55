"""Every bad input the chest X-ray model can meet, as a user meets it: ``medcnn analyze`` without
a point answers with the documented exit code and one sentence, leaves no file behind, and the
next radiograph is analysed normally. The reader's own refusals are tested in detail in
``tests/test_radiograph_reader.py``; here each is followed to the edge the user sees."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from radiograph_files import write_dicom
from reliability_support import assert_one_clear_sentence, run_cli, snapshot

from medcnn.catalog import XRAY_MODEL, installed_models
from medcnn.xray.phantom import synthetic_radiograph

pytestmark = pytest.mark.skipif(
    XRAY_MODEL not in installed_models(), reason="the chest X-ray bundle is not installed"
)


def lateral(folder: Path) -> Path:
    return write_dicom(folder / "lateral.dcm", synthetic_radiograph(), ViewPosition="LL")


def multi_frame(folder: Path) -> Path:
    return write_dicom(folder / "frames.dcm", np.stack([synthetic_radiograph()] * 3))


def ct_slice(folder: Path) -> Path:
    return write_dicom(folder / "ct.dcm", synthetic_radiograph(), modality="CT")


def ct_volume(folder: Path) -> Path:
    path = folder / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((64, 64, 20), np.int16) - 1000, np.eye(4)), path)
    return path


def too_small(folder: Path) -> Path:
    path = folder / "small.png"
    Image.fromarray(synthetic_radiograph()[::16, ::16]).save(path)
    return path


def photograph(folder: Path) -> Path:
    pixels = np.zeros((200, 240, 3), np.uint8)
    pixels[..., 0] = np.linspace(0, 255, 240)[None, :]
    pixels[..., 2] = np.linspace(255, 0, 200)[:, None]
    path = folder / "holiday.jpg"
    Image.fromarray(pixels).save(path)
    return path


def corrupt(folder: Path) -> Path:
    path = folder / "chest.png"
    Image.fromarray(synthetic_radiograph()).save(path)
    path.write_bytes(path.read_bytes()[:2000])
    return path


CASES: dict[str, tuple[Callable[[Path], Path], int, tuple[str, ...]]] = {
    "a lateral view": (lateral, 14, ("lateral",)),
    "a multi-frame file": (multi_frame, 14, ("frames",)),
    "a CT image": (ct_slice, 14, ("CT",)),
    "a CT volume, model named": (ct_volume, 14, ("slices",)),
    "too small": (too_small, 14, ("too small",)),
    "a colour photograph": (photograph, 14, ("colour",)),
    "a corrupt file": (corrupt, 4, ()),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_bad_radiograph_is_one_sentence_an_exit_code_and_no_files(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    make, code, phrases = CASES[name]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    image = make(inputs)
    before = snapshot(inputs)
    out = tmp_path / "out"
    run = run_cli(capsys, "analyze", image, "--model", XRAY_MODEL, "--out", out)
    assert_one_clear_sentence(run, code, *phrases)
    assert not out.exists() or snapshot(out) == {}
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert snapshot(inputs) == before
    good = inputs / "good.png"
    Image.fromarray(synthetic_radiograph()).save(good)
    again = run_cli(capsys, "analyze", good, "--out", tmp_path / "next")
    assert again.code == 0, again.stderr
    assert (tmp_path / "next" / "result.json").is_file()
