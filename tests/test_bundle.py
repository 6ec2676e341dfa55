"""The shipped MONAI bundle: complete metadata, verified weights, MONAI's own checks, offline."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medcnn.bundle import (
    default_bundle_dir,
    load_engine,
    load_patch_spec,
    sha256_of,
    sign_weights,
)
from medcnn.errors import ModelIntegrityError
from medcnn.nodule.features import NAMES
from medcnn.nodule.network import NoduleEnsemble, ensemble_from_state_dict
from medcnn.nodule.preprocessing import PatchSpec, normalize_hu

BUNDLE = default_bundle_dir()
METADATA = json.loads((BUNDLE / "configs" / "metadata.json").read_text())


def shipped_ensemble() -> NoduleEnsemble:
    """The shipped weights in ``medcnn.nodule.network``'s definition, as training exports it."""
    state = torch.load(BUNDLE / "models" / "model.pt", weights_only=True)
    return ensemble_from_state_dict(state, load_patch_spec(BUNDLE).hu_window)


REPORTED = (
    "auc",
    "accuracy",
    "sensitivity",
    "specificity",
    "ece",
    "brier",
    "log_loss",
    "dice_mean",
)


def test_metadata_is_complete() -> None:
    for key in (
        "version",
        "changelog",
        "monai_version",
        "pytorch_version",
        "numpy_version",
        "required_packages_version",
        "task",
        "description",
        "authors",
        "copyright",
        "network_data_format",
        "intended_use",
        "data_source",
        "references",
        "eval_metrics",
    ):
        assert METADATA.get(key), key
    assert "not for clinical use" in METADATA["intended_use"].lower()
    assert "medcnn" in METADATA["required_packages_version"]
    for key in REPORTED:
        assert 0.0 <= METADATA["eval_metrics"][key] <= 1.0, key
    assert METADATA["medcnn"]["weights_sha256"] == sha256_of(BUNDLE / "models" / "model.pt")


def test_weights_are_small_enough_to_commit() -> None:
    assert (BUNDLE / "models" / "model.pt").stat().st_size < 25 * 1024 * 1024


def test_verify_net_in_out_runs_offline() -> None:
    from monai.bundle import verify_net_in_out

    verify_net_in_out(
        net_id="network_def",
        meta_file=str(BUNDLE / "configs" / "metadata.json"),
        config_file=str(BUNDLE / "configs" / "inference.json"),
        device="cpu",
    )


def test_the_torchscript_export_is_the_shipped_model(tmp_path: Path) -> None:
    """``models/model.ts`` is derived, not shipped: MONAI's ckpt_export (offline) of the
    shipped weights answers as they do, the measurements' input and ``member_outputs`` too."""
    from medcnn.training.release import export_torchscript

    scripted = torch.jit.load(str(export_torchscript(BUNDLE, tmp_path / "model.ts")))
    model = shipped_ensemble()
    x = torch.rand(2, 2, 32, 32, 32)
    x[1, 0] *= 1.6  # above the CNN's window: calcium, read by the measurements only
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))
        torch.testing.assert_close(
            scripted.member_outputs(x)["features"], model.member_outputs(x)["features"]
        )


def tampered_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(BUNDLE, copy)
    weights = copy / "models" / "model.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    return copy


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    from medcnn.training.release import export_torchscript

    copy = tampered_copy(tmp_path)
    with pytest.raises(ModelIntegrityError, match="SHA-256"):
        load_engine(copy, trusted=True)
    with pytest.raises(ModelIntegrityError, match="SHA-256"):  # nor exported
        export_torchscript(copy, tmp_path / "model.ts")
    assert not (tmp_path / "model.ts").exists()


def resigned_copy(tmp_path: Path, state: dict) -> Path:
    """A bundle copy whose weights are ``state``, with its SHA-256 written into the metadata."""
    copy = tmp_path / "bundle"
    shutil.copytree(BUNDLE, copy)
    sign_weights(copy, state)
    return copy


def test_signing_writes_the_weights_and_their_checksum_together(tmp_path: Path) -> None:
    state = torch.load(BUNDLE / "models" / "model.pt", weights_only=True)
    copy = resigned_copy(tmp_path, {k: v + 0.0 for k, v in state.items()})
    metadata = json.loads((copy / "configs" / "metadata.json").read_text())
    assert metadata["medcnn"]["weights_sha256"] == sha256_of(copy / "models" / "model.pt")
    assert {k: v for k, v in metadata.items() if k != "medcnn"} == {
        k: v for k, v in METADATA.items() if k != "medcnn"
    }
    _, info = load_engine(copy, trusted=True)
    assert info["weights_sha256"] == metadata["medcnn"]["weights_sha256"]
    assert not list((copy / "models").glob("*.tmp"))


@pytest.mark.parametrize("broken", ["shape", "missing"])
def test_weights_that_are_not_the_network_are_refused_with_a_sentence(
    tmp_path: Path, broken: str
) -> None:
    """The loader refuses a signed file that is not a MedCNN ensemble."""
    state = dict(torch.load(BUNDLE / "models" / "model.pt", weights_only=True))
    if broken == "shape":
        state["members.2.dec1.conv.weight"] = state["members.2.dec1.conv.weight"][:, :8]
    else:
        del state["members.1.dec2.adn.N.running_var"]
    with pytest.raises(ModelIntegrityError, match="cannot be loaded.*reinstall"):
        load_engine(resigned_copy(tmp_path, state), trusted=True)


def test_the_engine_runs_the_shipped_ensemble(tmp_path: Path) -> None:
    engine, info = load_engine(BUNDLE)
    model = shipped_ensemble()
    assert info["weights_sha256"] == METADATA["medcnn"]["weights_sha256"]
    assert engine.n_members == len(model.members) == len(METADATA["medcnn"]["member_folds"])
    x = torch.rand(1, 2, 32, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(
            engine(x).probability, model.member_outputs(x)["probability"], atol=1e-5, rtol=0
        )


def test_preprocessing_that_is_not_a_number_is_refused(tmp_path: Path) -> None:
    """The click reads inference.json's preprocessing as plain numbers, never as code."""
    copy = tmp_path / "bundle"
    shutil.copytree(BUNDLE, copy)
    config = json.loads((copy / "configs" / "inference.json").read_text())
    config["preprocessing"]["spacing_mm"] = "$__import__('os').system('true')"
    (copy / "configs" / "inference.json").write_text(json.dumps(config))
    with pytest.raises(ModelIntegrityError, match="spacing_mm.*not a number"):
        load_patch_spec(copy)
    assert load_patch_spec(BUNDLE) == PatchSpec(**_numbers(BUNDLE))


def test_preprocessing_with_a_missing_number_is_refused_with_exit_code_9(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """PatchSpec has no defaults: a bundle without its window does not run on someone else's."""
    from medcnn.app.cli import main

    copy = tmp_path / "bundle"
    shutil.copytree(BUNDLE, copy)
    config = json.loads((copy / "configs" / "inference.json").read_text())
    del config["preprocessing"]["hu_max"]
    (copy / "configs" / "inference.json").write_text(json.dumps(config))
    with pytest.raises(ModelIntegrityError, match=r"lacks preprocessing\.hu_max; write"):
        load_patch_spec(copy)
    argv = ["analyze", "x.nii.gz", "--point", "0", "0", "0", "--out", str(tmp_path / "out")]
    assert main([*argv, "--bundle", str(copy), "--trust-bundle"]) == 9
    assert "preprocessing.hu_max" in capsys.readouterr().err


def test_the_measurements_follow_the_bundles_window(tmp_path: Path) -> None:
    """Edit the window in a copy of the bundle: the network's input and its measurements change
    together, in the engine, the MONAI network and the network MONAI builds from the config, so
    a solid 100 HU reads as 100 HU with either window."""
    from monai.bundle import ConfigParser

    copy = tmp_path / "bundle"
    shutil.copytree(BUNDLE, copy)
    config = json.loads((copy / "configs" / "inference.json").read_text())
    config["preprocessing"]["hu_max"] = 600.0
    (copy / "configs" / "inference.json").write_text(json.dumps(config))
    hu = np.full((32, 32, 32), 100.0, dtype=np.float32)
    mean_hu = 2 + 8 + NAMES.index("mean_hu")  # after the logit, rating and descriptors
    inputs = []
    for bundle in (BUNDLE, copy):
        spec = load_patch_spec(bundle)
        x = torch.from_numpy(np.stack([normalize_hu(hu, spec), np.ones_like(hu)]))[None]
        inputs.append(x)
        engine, _ = load_engine(bundle, trusted=True)
        state = torch.load(bundle / "models" / "model.pt", weights_only=True)
        model = ensemble_from_state_dict(state, spec.hu_window)
        parser = ConfigParser()
        parser.read_config(str(bundle / "configs" / "inference.json"))
        assert parser.get_parsed_content("network_def").hu_window == spec.hu_window
        with torch.no_grad():
            for features in (engine(x).features, model.member_outputs(x)["features"]):
                measured = features[0, :, mean_hu]
                torch.testing.assert_close(
                    measured, torch.full_like(measured, 100.0), atol=0.05, rtol=0
                )
    assert spec.hu_window == (-1000.0, 600.0)
    assert not torch.equal(inputs[0], inputs[1])  # the network's input changed too


def _numbers(bundle: Path) -> dict:
    section = json.loads((bundle / "configs" / "inference.json").read_text())["preprocessing"]
    return {k: v for k, v in section.items() if k != "_target_"}


def test_another_bundle_needs_an_explicit_trust_flag(tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(BUNDLE, copy)
    with pytest.raises(ModelIntegrityError, match="trust"):
        load_engine(copy)
    _, info = load_engine(copy, trusted=True)
    assert info["weights_sha256"] == METADATA["medcnn"]["weights_sha256"]


def test_cli_refuses_tampered_bundle_with_exit_code_9(tmp_path: Path) -> None:
    copy = tampered_copy(tmp_path)
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "medcnn",
            "analyze",
            "x.nii.gz",
            "--point",
            "0",
            "0",
            "0",
            "--out",
            str(out),
            "--bundle",
            str(copy),
            "--trust-bundle",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 9
    assert "SHA-256" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()


@pytest.mark.data
def test_shipped_cross_validated_numbers_reproduce_on_a_fixed_subset(
    shared_data: Path, tmp_path: Path
) -> None:
    """Every 8th nodule, each judged by the member that never saw its patient, through the
    click's inference path: the numbers recorded at release time come out again."""
    from medcnn.training.evaluation import BundleEvaluator

    expected = METADATA["medcnn"]["check_subset"]
    summary = BundleEvaluator(
        shared_data / "lidc_voi", tmp_path, every=expected["every"], progress=False
    ).run()
    assert summary["n_nodules"] == expected["n_nodules"]
    for key in REPORTED:
        assert summary[key] == pytest.approx(expected[key], abs=2e-3), key
    # and they are those of a model worth shipping, not of a broken one
    assert summary["auc"] > 0.85 and summary["dice_mean"] > 0.7
    assert "mean_uncertainty" not in summary  # one member a nodule: no spread to report
    assert (tmp_path / "roc.png").exists() and (tmp_path / "reliability.png").exists()
