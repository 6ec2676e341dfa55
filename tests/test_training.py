"""Training as a user runs it: a smoke run through the command line on a few real nodules,
interrupted and resumed, ending in a complete bundle (never the real training in CI)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from nodule_tables import copy_nodules

from medcnn.bundle import default_bundle_dir, load_patch_spec
from medcnn.errors import ModelIntegrityError, UsageError
from medcnn.nodule.network import NoduleNet
from medcnn.training import loop as training
from medcnn.training import losses
from medcnn.training.data.lidc import load_cases
from medcnn.training.loop import epoch_batches, train_fold
from medcnn.training.recipe import load_train_recipe, load_train_settings


def medcnn_train(data: Path, run_dir: Path, *options: str) -> subprocess.CompletedProcess:
    """``medcnn train --data DATA --run-dir RUN_DIR OPTIONS`` in a new process, as users run it."""
    command = ["train", "--data", str(data), "--run-dir", str(run_dir), *options]
    return subprocess.run(
        [sys.executable, "-m", "medcnn", *command], capture_output=True, text=True
    )


@pytest.mark.data
def test_train_command_makes_a_complete_bundle(shared_data: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = medcnn_train(
        shared_data / "lidc_voi",
        run_dir,
        *("--folds", "0", "1", "--epochs", "1", "--max-steps", "1"),
        *("--limit", "40", "--seeds", "0"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    bundle = run_dir / "bundle"
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert metadata["medcnn"]["member_folds"] == [0, 1]
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    assert inference["network_def"]["n_members"] == 2
    assert len(metadata["medcnn"]["weights_sha256"]) == 64
    assert {"auc", "ece", "dice_mean"} <= set(metadata["eval_metrics"])
    for name in ("roc.png", "reliability.png"):
        assert (bundle / "docs" / "images" / name).stat().st_size > 1000
    for fold in (0, 1):
        assert (run_dir / f"fold{fold}" / "model.pt").exists()


@pytest.mark.data
def test_training_one_fold_is_refused_before_it_starts(shared_data: Path, tmp_path: Path) -> None:
    """A release's head is fitted on other folds' predictions: one fold could train for
    minutes and then fail, so it is refused up front, with the fix, and nothing is written."""
    run_dir = tmp_path / "run"
    done = medcnn_train(shared_data / "lidc_voi", run_dir, "--folds", "4")
    assert done.returncode == 2
    assert "at least two folds" in done.stderr and "--folds" in done.stderr
    assert "Traceback" not in done.stderr
    assert not run_dir.exists()


@pytest.mark.data
def test_folds_without_nodules_are_refused_before_training(
    shared_data: Path, tmp_path: Path
) -> None:
    """lidc_voi's first two rows are of folds 4 and 3: folds 0 and 1 would train on them and
    then have nothing to be judged on, so the release could not be built."""
    run_dir = tmp_path / "run"
    done = medcnn_train(shared_data / "lidc_voi", run_dir, "--folds", "0", "1", "--limit", "2")
    assert done.returncode == 2
    assert "Folds 0, 1 have no nodule" in done.stderr and "--folds" in done.stderr
    assert "(3 4)" in done.stderr and "Traceback" not in done.stderr
    assert not run_dir.exists()


@pytest.mark.data
@pytest.mark.parametrize(
    ("option", "says"),
    [
        (("--epochs", "0"), "epochs (--epochs) must be 1 or more, not 0"),
        (("--max-steps", "0"), "(--max-steps) must be 1 or more, not 0"),
        (("--seeds", "0", "-1"), "seed (--seeds) must be 0 or more, not -1"),
        (("--limit", "0"), "(--limit) must be 1 or more, not 0"),
    ],
)
def test_counts_that_cannot_train_are_refused_before_anything_is_written(
    shared_data: Path, tmp_path: Path, option: tuple[str, ...], says: str
) -> None:
    run_dir = tmp_path / "run"
    done = medcnn_train(shared_data / "lidc_voi", run_dir, "--folds", "3", "4", *option)
    assert done.returncode == 2
    assert says in done.stderr and "Traceback" not in done.stderr
    assert not run_dir.exists()


@pytest.mark.data
def test_training_resumes_where_it_stopped(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cases = load_cases(shared_data / "lidc_voi", limit=12)
    settings = load_train_settings(epochs=2, max_steps_per_epoch=1, batch_size=4, threads=1)
    straight = torch.load(train_fold(cases, 0, tmp_path / "straight", settings), weights_only=True)
    # the same run, interrupted in its second epoch
    calls = {"n": 0}
    original = training.training_example

    def interrupted(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] > 4:  # one step of 4 examples per epoch
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(training, "training_example", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_fold(cases, 0, tmp_path / "resumed", settings)
    assert not (tmp_path / "resumed" / "model.pt").exists()
    monkeypatch.setattr(training, "training_example", original)
    resumed = torch.load(train_fold(cases, 0, tmp_path / "resumed", settings), weights_only=True)
    lines = (tmp_path / "resumed" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1]
    for key, value in straight.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=0)
    # the measurements' offset trains beside the network and is not shipped
    assert set(resumed) == set(NoduleNet().state_dict())
    assert "offset" in torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)


@pytest.mark.data
def test_a_run_begun_without_the_offset_is_not_resumed_with_it(
    shared_data: Path, tmp_path: Path
) -> None:
    cases = load_cases(shared_data / "lidc_voi", limit=8)
    plain = load_train_settings(
        epochs=1, max_steps_per_epoch=1, batch_size=4, threads=1, measured_offset=False
    )
    (tmp_path / "fold0").mkdir()
    train_fold(cases, 0, tmp_path / "fold0", plain).unlink()  # as if stopped after epoch 0
    longer = load_train_settings(epochs=2, max_steps_per_epoch=1, batch_size=4, threads=1)
    with pytest.raises(UsageError, match="measured_offset=False"):
        train_fold(cases, 0, tmp_path / "fold0", longer)


def test_scaled_auxiliary_losses_weigh_a_mean_predictor_as_one() -> None:
    # ratings and descriptors on their 0-1 scale; the third case has no descriptors, so its
    # placeholder must not enter the descriptors' variance
    targets = {
        "rating": torch.tensor([[0.0], [0.5], [1.0]]),
        "descriptors": torch.tensor([[0.2] * 8, [0.6] * 8, [0.0] * 8]),
        "has_rating": torch.tensor([True, True, True]),
        "has_descriptors": torch.tensor([True, True, False]),
    }
    assert losses.aux_scales(targets, scaled=False) == {"rating": 1.0, "descriptors": 1.0}
    scales = losses.aux_scales(targets, scaled=True)
    assert scales["rating"] == pytest.approx(1 / 6)
    assert scales["descriptors"] == pytest.approx(0.04)
    # a network that always predicts the mean has an MSE equal to the variance: a term of 1
    mean = torch.full((2, 8), 0.4)
    mse = losses.probability_mse(torch.logit(mean), targets["descriptors"][:2])
    assert float(mse) / scales["descriptors"] == pytest.approx(1.0, rel=1e-4)
    terms = {
        "malignancy": torch.tensor(0.0),
        "rating": torch.tensor(1 / 6),
        "descriptors": mse,
        "segmentation": torch.tensor(0.0),
    }
    settings = load_train_settings(aux_weight=0.5)
    assert float(losses.total_loss(terms, settings, scales)) == pytest.approx(1.0, rel=1e-4)
    unscaled = losses.total_loss(terms, settings)
    assert float(unscaled) == pytest.approx(0.5 * (1 / 6 + 0.04), rel=1e-4)


@pytest.mark.data
def test_a_nodule_whose_point_a_click_refuses_is_left_out_of_training(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lidc_voi's LIDC-IDRI-0332_R_1 has its centre outside its own volume: its patch would
    show the network lung labelled malignant, so every fold trains without it."""
    source = shared_data / "lidc_voi"
    with open(source / "nodules.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    picked = [r for r in rows if "LIDC-IDRI-0332_R_1" in r["image"]] + rows[:2]
    data = copy_nodules(source, tmp_path / "data", picked, list(rows[0]))
    seen = []
    monkeypatch.setattr(
        training, "train_fold", lambda cases, fold, out, settings: seen.append(cases) or out
    )
    training.train_cross_validation(data, tmp_path / "run", folds=[0])
    assert [c.name for c in seen[0]] == [Path(r["image"]).name[: -len(".nii.gz")] for r in rows[:2]]


def test_no_batch_is_left_with_a_single_nodule() -> None:
    """Batch norm cannot standardise one example: a lone last nodule joins the batch before."""
    order = np.random.default_rng(0).permutation(673)  # lidc_voi's fold 2 trains on 21 x 32 + 1
    batches = epoch_batches(order, 32, smallest=2)
    assert [len(b) for b in batches] == [32] * 20 + [33]
    np.testing.assert_array_equal(np.concatenate(batches), order)
    assert [len(b) for b in epoch_batches(np.arange(658), 32, smallest=2)] == [32] * 20 + [18]
    # two processes under torchrun: each takes half of a batch, so two a process is four
    assert [len(b) for b in epoch_batches(np.arange(67), 32, smallest=4)] == [32, 35]
    assert [len(b) for b in epoch_batches(np.arange(3), 32, smallest=2)] == [3]


@pytest.mark.data
def test_a_fold_whose_last_batch_would_hold_one_nodule_trains(
    shared_data: Path, tmp_path: Path
) -> None:
    """Once the refused nodule was left out, fold 2 of the shipped recipe ended every epoch on
    one nodule and the measurements' offset stopped the training; 9 nodules in batches of 4
    end the same way."""
    cases = load_cases(shared_data / "lidc_voi", limit=9)
    settings = load_train_settings(epochs=1, batch_size=4, threads=1)
    weights = train_fold(cases, None, tmp_path / "fold", settings)
    assert set(torch.load(weights, weights_only=True)) == set(NoduleNet().state_dict())


@pytest.mark.data
def test_too_few_nodules_to_train_on_are_refused_before_anything_is_written(
    shared_data: Path, tmp_path: Path
) -> None:
    cases = load_cases(shared_data / "lidc_voi", limit=3)
    held_out = [c for c in cases if c.fold == cases[0].fold]
    others = [c for c in cases if c.fold != cases[0].fold][:1]
    with pytest.raises(UsageError, match="at least 2 nodules outside fold"):
        train_fold(
            held_out + others, cases[0].fold, tmp_path / "fold", load_train_settings(threads=1)
        )
    assert not (tmp_path / "fold").exists()


BUNDLE = default_bundle_dir()


@pytest.mark.parametrize(
    "configs", [["train.json"], ["train.json", "multi_gpu_train.json"]], ids=["one", "torchrun"]
)
def test_monai_and_medcnn_train_read_one_recipe(configs: list[str]) -> None:
    """train.json is the recipe: MONAI's run (one process or torchrun) and ``medcnn train``
    (plain JSON, ``load_train_recipe``) get the same settings, folds and seeds from it."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / name) for name in configs])
    recipe = load_train_recipe(BUNDLE)
    assert parser.get_parsed_content("settings") == recipe.settings
    assert recipe.settings.spec == load_patch_spec(BUNDLE)  # the bundle's one preprocessing
    for name in ("folds", "seeds", "limit"):
        assert parser.get_parsed_content(name) == getattr(recipe, name), name
    assert Path(parser.get_parsed_content("data_dir")) == recipe.data_dir
    assert Path(parser.get_parsed_content("run_dir")) == recipe.run_dir


def bundle_with_recipe(tmp_path: Path, edit: Callable[[dict], None]) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(BUNDLE, copy)
    path = copy / "configs" / "train.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))
    return copy


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (lambda c: c["settings"].pop("epochs"), "lacks settings.epochs; write it there"),
        (lambda c: c["settings"]["augmentation"].pop("hu_noise"), "settings.augmentation.hu_noise"),
        (
            lambda c: c["settings"].update(learning_rate="$__import__('os').getpid()"),
            "gives settings.learning_rate as \"$__import__('os').getpid()\", not float",
        ),
        (lambda c: c["settings"].update(measured_offset=1), "measured_offset as 1, not bool"),
        (lambda c: c.update(folds="0 1"), "gives folds as '0 1', not list[int]"),
        (lambda c: c.pop("settings"), "has no settings. section"),
    ],
    ids=["missing", "augmentation", "expression", "not a bool", "folds", "no settings"],
)
def test_a_broken_recipe_is_refused_with_one_sentence(
    tmp_path: Path, edit: Callable[[dict], None], says: str
) -> None:
    with pytest.raises(ModelIntegrityError) as error:
        load_train_recipe(bundle_with_recipe(tmp_path, edit))
    assert says in str(error.value) and "\n" not in str(error.value)
    assert error.value.exit_code == 9


def test_medcnn_train_reads_train_json_and_its_options_override_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refusals that come before any data is read show which numbers ``medcnn train`` used."""
    from medcnn.app.cli import main

    def recipe(config: dict) -> None:
        config["folds"] = [4]
        config["settings"]["epochs"] = 0

    monkeypatch.setenv("MEDCNN_BUNDLE", str(bundle_with_recipe(tmp_path, recipe)))
    run = ["train", "--data", str(tmp_path / "data"), "--run-dir", str(tmp_path / "run")]
    assert main(run) == 2
    assert "epochs (--epochs) must be 1 or more, not 0" in capsys.readouterr().err
    assert main([*run, "--epochs", "1"]) == 2  # the option stands in for train.json's 0
    assert "at least two folds, not [4]" in capsys.readouterr().err
    assert main([*run, "--epochs", "1", "--folds", "3", "4", "--seeds", "-1"]) == 2
    assert "seed (--seeds) must be 0 or more, not -1" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
