"""A run stopped half-way, by the user or by the disk, leaves nothing half-written behind, and a
previous complete result in the same folder stays as it was."""

from __future__ import annotations

import csv
import errno
from pathlib import Path

import pytest
from nodule_tables import copy_nodules
from reliability_support import assert_one_clear_sentence, run_cli, snapshot

import medcnn.app.analysis
import medcnn.outputs.writing
from medcnn.phantom import NODULE_CENTER_RAS


def analyze_args(phantom: dict, out: Path, bundle: Path) -> list:
    args = ["analyze", phantom["nifti"], "--point", *map(str, NODULE_CENTER_RAS), "--out", out]
    return args + ["--bundle", bundle, "--trust-bundle"]


def test_cancelling_is_exit_code_130_and_leaves_nothing(
    phantom: dict, tmp_bundle: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(medcnn.app.analysis, "predict", interrupted)
    before = snapshot(tmp_path)
    run = run_cli(capsys, *analyze_args(phantom, tmp_path / "out", tmp_bundle))
    assert_one_clear_sentence(run, 130, "Cancelled")
    assert snapshot(tmp_path) == before


def test_a_failed_write_keeps_the_previous_result_whole(
    phantom: dict, tmp_bundle: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    out = tmp_path / "out"
    assert run_cli(capsys, *analyze_args(phantom, out, tmp_bundle)).code == 0
    before = snapshot(tmp_path)
    saved = []
    real_save = medcnn.outputs.writing.nib.save

    def disk_full_on_second_file(image: object, path: Path) -> None:
        if saved:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(image, path)
        saved.append(path)

    monkeypatch.setattr(medcnn.outputs.writing.nib, "save", disk_full_on_second_file)
    run = run_cli(capsys, *analyze_args(phantom, out, tmp_bundle))
    assert run.code != 0
    assert "No space left on device" in run.stderr and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert saved and not saved[0].exists()  # the staged heatmap is gone
    assert snapshot(tmp_path) == before  # the earlier result.json and volumes are untouched


def test_batch_into_a_file_is_an_output_error(tmp_bundle: Path, tmp_path: Path, capsys) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,r,a,s\nx.nii.gz,1,2,3\n")
    out = tmp_path / "out.txt"
    out.write_text("not a folder\n")
    run = run_cli(
        capsys, "batch", manifest, "--out", out, "--no-progress", "--bundle", tmp_bundle,
        "--trust-bundle",
    )  # fmt: skip
    assert_one_clear_sentence(run, 13, "is a file", "give a folder")


@pytest.mark.data
@pytest.mark.parametrize("command", ["batch", "evaluate", "train"])
def test_an_output_folder_that_cannot_be_made_stops_before_the_work(
    command: str, shared_data: Path, tmp_path: Path, capsys
) -> None:
    """Below a file no folder can be made: each command says so at once (exit 13), rather than
    with a traceback after the evaluation or the training ran."""
    source = shared_data / "lidc_voi"
    with open(source / "nodules.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)[:2]  # folds 4 and 3
    data = copy_nodules(source, tmp_path / "data", rows, list(reader.fieldnames or []))
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder\n")
    out = blocker / "results"
    if command == "batch":
        manifest = tmp_path / "m.csv"
        row = rows[0]
        manifest.write_text(
            f"image,r,a,s\n{data / row['image']},{row['center_r']},"
            f"{row['center_a']},{row['center_s']}\n"
        )
        args = ["batch", manifest, "--out", out, "--no-progress"]
    elif command == "evaluate":
        args = ["evaluate", "--held-out", "--data", data, "--out", out]
    else:
        args = ["train", "--data", data, "--run-dir", out, "--folds", "3", "4"]
    run = run_cli(capsys, *args)
    assert_one_clear_sentence(run, 13, str(out), "cannot be created", "choose a folder")
    assert blocker.read_text() == "not a folder\n"
