"""The chest X-ray bundle is a complete MONAI bundle, its weights are the ones signed, and its
TorchScript export, derived from them on demand, answers as they do."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from medcnn.bundle import load_network, sha256_of
from medcnn.catalog import XRAY_MODEL, installed_models
from medcnn.errors import ModelIntegrityError

pytestmark = pytest.mark.skipif(
    XRAY_MODEL not in installed_models(), reason="the chest X-ray bundle is not installed"
)


@pytest.fixture(scope="module")
def bundle() -> Path:
    return installed_models()[XRAY_MODEL]


def test_metadata_is_complete(bundle: Path) -> None:
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    for key in (
        "version",
        "changelog",
        "monai_version",
        "pytorch_version",
        "task",
        "description",
        "authors",
        "copyright",
        "network_data_format",
        "intended_use",
        "data_source",
        "references",
        "eval_metrics",
        "required_packages_version",
    ):
        assert metadata.get(key), key
    assert "not for clinical use" in metadata["intended_use"].lower()
    own = metadata["medcnn"]
    assert own["model"] == XRAY_MODEL and own["needs_point"] is False
    assert own["weights_sha256"] == sha256_of(bundle / "models" / "model.pt")
    for split in ("kermany_test", "nih_cv"):
        assert 0.5 < metadata["eval_metrics"][split]["auc"] <= 1.0, split
    assert (bundle / "models" / "model.pt").stat().st_size < 25 * 1024 * 1024
    for name in ("LICENSE", "docs/README.md", "configs/train.json", "configs/evaluate.json"):
        assert (bundle / name).is_file(), name


def test_the_torchscript_export_is_the_shipped_model(bundle: Path, tmp_path: Path) -> None:
    """Derived on demand (``medcnn export``), not shipped."""
    from medcnn.training.release import export_torchscript

    model, _ = load_network(bundle)
    scripted = torch.jit.load(str(export_torchscript(bundle, tmp_path / "model.ts")))
    x = torch.rand(3, 1, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))
        torch.testing.assert_close(scripted.explain(x)[1], model.explain(x)[1])


def test_verify_net_in_out_runs_offline(bundle: Path) -> None:
    from monai.bundle import verify_net_in_out

    verify_net_in_out(
        net_id="network_def",
        meta_file=str(bundle / "configs" / "metadata.json"),
        config_file=str(bundle / "configs" / "inference.json"),
        device="cpu",
    )


def test_tampered_weights_and_untrusted_copies_are_refused(bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    with pytest.raises(ModelIntegrityError, match="--trust-bundle"):
        load_network(copy)
    load_network(copy, trusted=True)
    weights = copy / "models" / "model.pt"
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ModelIntegrityError, match="do not match the SHA-256") as refused:
        load_network(copy, trusted=True)
    assert refused.value.exit_code == 9


def test_the_click_runs_the_same_ensemble_folded(bundle: Path) -> None:
    """Batch norms folded and channels-last (``for_inference``): the same answers."""
    from medcnn.xray.network import for_inference

    model, _ = load_network(bundle)
    fast = for_inference(model)
    x = torch.rand(4, 1, 128, 128)
    with torch.no_grad():
        slow_members, slow_heat = model.explain(x)
        fast_members, fast_heat = fast.explain(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(fast_members, slow_members, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fast_heat, slow_heat, atol=1e-4, rtol=1e-4)
