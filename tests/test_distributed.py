"""Scale-out on torchrun, with two local processes on the gloo backend: the sharded batch run
gives the single-process ``predictions.csv``, and the bundle's multi-process training runs and
leaves the single-process checkpoint format. Small data, a few steps: CI, not a benchmark."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medcnn.bundle import load_patch_spec, sign_weights, verified_weights_path
from medcnn.distributed import World, gather_in_order
from medcnn.nodule.network import NoduleEnsemble
from medcnn.phantom import make_phantom

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "monai_bundle" / "lung_nodule_ct" / "configs"


def torchrun(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def why_it_failed(result: subprocess.CompletedProcess) -> str:
    """The ranks' exceptions, which torchrun's closing report pushes out of a stderr's tail."""
    raised = re.findall(r"^\[rank\d+\]: [\w.]+(?:Error|Exception): .*$", result.stderr, re.M)
    return "\n".join(raised) or result.stderr[-3000:]


def test_shards_are_round_robin_and_merge_back_in_order() -> None:
    rows = list(range(11))
    shards = [World(rank, 3).shard(rows) for rank in range(3)]
    assert shards == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    assert gather_in_order(rows, World(), len(rows)) == rows


@pytest.fixture(scope="module")
def random_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trusted bundle with random weights: the sharding, not the model, is under test."""
    bundle = tmp_path_factory.mktemp("bundle")
    shutil.copytree(CONFIGS, bundle / "configs")
    (bundle / "models").mkdir()
    torch.manual_seed(0)
    window = load_patch_spec(bundle).hu_window
    sign_weights(bundle, NoduleEnsemble(n_members=2, hu_window=window).state_dict())
    return bundle


@pytest.mark.slow
def test_batch_sharded_over_two_processes_gives_the_single_process_predictions(
    tmp_path: Path, random_bundle: Path
) -> None:
    phantom = make_phantom(tmp_path / "phantom")
    r, a, s = phantom["nodule_center_ras"]
    manifest = tmp_path / "manifest.csv"
    lines = ["id,image,r,a,s"]
    for n in range(5):
        image = phantom["nifti"] if n % 2 else phantom["dicom_dir"]
        lines.append(f"case{n},{image},{r + n},{a - n},{s}")
    lines.append(f"missing,{tmp_path / 'nowhere.nii.gz'},{r},{a},{s}")  # fails on rank 1
    manifest.write_text("\n".join(lines) + "\n")
    options = ["--bundle", str(random_bundle), "--trust-bundle", "--no-progress"]

    single = subprocess.run(
        [
            sys.executable,
            "-m",
            "medcnn",
            "batch",
            str(manifest),
            "--out",
            str(tmp_path / "one"),
        ]
        + options,
        capture_output=True,
        text=True,
    )
    sharded = torchrun(
        "-m", "medcnn", "batch", str(manifest), "--out", str(tmp_path / "two"), *options
    )
    assert single.returncode != 0 and sharded.returncode != 0, sharded.stderr[-2000:]
    expected = list(csv.DictReader(open(tmp_path / "one" / "predictions.csv")))
    merged = list(csv.DictReader(open(tmp_path / "two" / "predictions.csv")))
    assert [row["id"] for row in merged] == [f"case{n}" for n in range(5)] + ["missing"]
    for got, want in zip(merged, expected, strict=True):
        for column in ("probability", "uncertainty"):  # one thread a rank vs two: float noise
            assert abs(float(got.pop(column) or 0) - float(want.pop(column) or 0)) < 1e-5
        assert got == want
    assert merged[-1]["error"] and not any(row["error"] for row in merged[:-1])
    for row in merged[:-1]:  # each case's files were written by the rank that analysed it
        assert (tmp_path / "two" / row["output_dir"] / "result.json").exists()


@pytest.mark.slow
@pytest.mark.data
def test_bundle_trains_on_two_processes(tmp_path: Path, shared_data: Path) -> None:
    run_dir = tmp_path / "run"
    configs = f"['{CONFIGS / 'train.json'}','{CONFIGS / 'multi_gpu_train.json'}']"
    result = torchrun(
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        configs,
        "--data_dir",
        str(shared_data / "lidc_voi"),
        "--run_dir",
        str(run_dir),
        "--release_dir",
        str(run_dir / "bundle"),
        "--folds",
        "[0,1]",
        "--seeds",
        "[0]",
        "--limit",
        "40",
        "--settings#epochs",
        "2",
        "--settings#max_steps_per_epoch",
        "2",
        "--settings#batch_size",
        "4",
    )
    assert result.returncode == 0, why_it_failed(result)
    for fold in (0, 1):
        history = (run_dir / f"fold{fold}" / "history.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in history] == [0, 1]  # rank 0 alone logs
        checkpoint = torch.load(run_dir / f"fold{fold}" / "checkpoint.pt", weights_only=False)
        assert {"model", "optimizer", "scheduler", "epoch"} <= set(checkpoint)
        assert not any(k.startswith("module.") for k in checkpoint["model"])  # not DDP's names
    assert (run_dir / "bundle" / "models" / "model.pt").exists()  # rank 0 built the release


@pytest.mark.slow
def test_the_chest_xray_model_trains_on_two_processes(tmp_path: Path) -> None:
    """``torchrun ... -m medcnn train --model chest_xray_pneumonia``: the ranks share each
    member's steps, rank 0 writes the members and a signed, measured release."""
    from test_radiograph_training import xray_folder

    data = xray_folder(tmp_path / "xray")
    release = tmp_path / "release"
    result = torchrun(
        "-m",
        "medcnn",
        "train",
        "--model",
        "chest_xray_pneumonia",
        "--data",
        str(data),
        "--run-dir",
        str(tmp_path / "run"),
        "--release-dir",
        str(release),
        "--epochs",
        "1",
        timeout=600,
    )
    assert result.returncode == 0, why_it_failed(result)
    for fold in range(5):
        assert (tmp_path / "run" / "both" / f"fold{fold}" / "model.pt").is_file()
    assert not list((tmp_path / "run").rglob("checkpoint.pt"))
    verified_weights_path(release)
    metadata = json.loads((release / "configs" / "metadata.json").read_text())
    assert metadata["eval_metrics"]["nih_cv"]["n"] == 10
