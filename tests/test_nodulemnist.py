"""NoduleMNIST3D as a training and evaluation source, on a small npz written here (the real file
is the user's download), and proof that LIDC training is unchanged by sources without masks."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medcnn.app.cli import main
from medcnn.bundle import default_bundle_dir, load_patch_spec
from medcnn.errors import GeometryError, InputNotFoundError, UnreadableImageError
from medcnn.nodule.network import DESCRIPTORS, NoduleNet
from medcnn.nodule.preprocessing import (
    normalize_hu,
    sample_patch,
)
from medcnn.training.data import nodulemnist
from medcnn.training.data.lidc import SOFT_MALIGNANCY, NoduleCase
from medcnn.training.data.nodulemnist import (
    OFFICIAL_MD5,
    SPLIT_FOLDS,
    file_md5,
    load_nodulemnist3d,
    to_hu,
)
from medcnn.training.loop import NoduleMNISTTrainer, training_example
from medcnn.training.losses import case_targets, loss_terms, total_loss
from medcnn.training.recipe import load_train_settings
from medcnn.volume import Volume

SIZES = {"train": 6, "val": 2, "test": 2}
SPEC = load_patch_spec()  # the shipped bundle's preprocessing


def write_npz(path: Path, sizes: dict[str, int] = SIZES, seed: int = 0) -> dict[str, np.ndarray]:
    """Bright spheres on a dark, noisy background: 3 mm radius benign, 7 mm malignant."""
    rng = np.random.default_rng(seed)
    radius = np.sqrt(((np.indices((28, 28, 28)) - 13.5) ** 2).sum(0))
    arrays = {}
    for split, n in sizes.items():
        labels = np.arange(n) % 2
        images = [
            np.where(radius <= (7 if label else 3), 200, 20) + rng.integers(0, 10, radius.shape)
            for label in labels
        ]
        arrays[f"{split}_images"] = np.stack(images).astype(np.uint8)
        arrays[f"{split}_labels"] = labels[:, None].astype(np.uint8)
    np.savez_compressed(path, **arrays)
    return arrays


@pytest.fixture()
def npz(tmp_path: Path) -> Path:
    path = tmp_path / "nodulemnist3d.npz"
    write_npz(path)
    return path


def test_each_split_is_read_with_the_files_labels_and_no_other_targets(npz: Path) -> None:
    arrays = dict(np.load(npz))
    splits = load_nodulemnist3d(npz, SPEC, verify=False)
    assert list(splits) == ["train", "val", "test"]
    for split, cases in splits.items():
        assert [c.binary_label for c in cases] == arrays[f"{split}_labels"][:, 0].tolist()
        assert {c.fold for c in cases} == {SPLIT_FOLDS[split]}
        assert len({c.name for c in cases}) == len(cases)
        for case in cases:
            assert not (case.has_mask or case.has_rating or case.has_descriptors)
            assert case.mask is None and case.rating is None and case.descriptors is None


def test_each_cube_is_1mm_centred_on_the_origin_and_the_network_sees_the_file(npz: Path) -> None:
    images = np.load(npz)["test_images"]
    case = load_nodulemnist3d(npz, SPEC, verify=False)["test"][1]
    np.testing.assert_array_equal(case.center_ras, [0.0, 0.0, 0.0])
    np.testing.assert_allclose(case.image.spacing, [1.0, 1.0, 1.0])
    np.testing.assert_allclose(case.image.world_to_index(case.center_ras[None])[0], [13.5] * 3)
    corners = case.image.index_to_world(np.array([[0, 0, 0], [27, 27, 27]]))
    np.testing.assert_allclose(corners, [[-13.5] * 3, [13.5] * 3])
    np.testing.assert_allclose(to_hu(np.array([0, 255]), SPEC), SPEC.hu_window)
    spec = SPEC
    patch = sample_patch(case.image, case.center_ras, spec)
    inner = (slice(2, 30),) * 3  # the 32 mm patch's voxels fall on the cube's own voxels
    np.testing.assert_allclose(normalize_hu(patch.hu, spec)[inner], images[1] / 255.0, atol=1e-4)
    assert patch.coverage[inner].all() and patch.coverage.sum() == 28**3


def test_verification_refuses_a_file_that_is_not_the_official_one(npz: Path) -> None:
    with pytest.raises(UnreadableImageError, match="MD5") as error:
        load_nodulemnist3d(npz, SPEC)
    message = str(error.value)
    assert OFFICIAL_MD5 in message and "6/2/2" in message and "1158/165/310" in message


def test_verification_tells_a_damaged_official_file_and_passes_the_official_one(
    npz: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nodulemnist, "SPLIT_SIZES", dict(SIZES))
    with pytest.raises(UnreadableImageError, match="MD5 .* corrupted or modified"):
        load_nodulemnist3d(npz, SPEC)
    monkeypatch.setattr(nodulemnist, "OFFICIAL_MD5", file_md5(npz))
    assert len(load_nodulemnist3d(npz, SPEC)["train"]) == SIZES["train"]


def test_files_that_are_not_nodulemnist3d_are_refused_with_one_sentence(tmp_path: Path) -> None:
    text = tmp_path / "notes.npz"
    text.write_text("not an archive\n")
    with pytest.raises(UnreadableImageError, match="not an npz archive"):
        load_nodulemnist3d(text, SPEC, verify=False)
    single = tmp_path / "single.npy"
    np.save(single, np.zeros((2, 28, 28, 28), np.uint8))
    with pytest.raises(UnreadableImageError, match="single NumPy array"):
        load_nodulemnist3d(single, SPEC, verify=False)
    truncated = tmp_path / "truncated.npz"
    write_npz(truncated)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    with pytest.raises(UnreadableImageError, match="not an npz archive"):
        load_nodulemnist3d(truncated, SPEC, verify=False)
    partial = tmp_path / "partial.npz"
    arrays = write_npz(partial)
    np.savez(partial, train_images=arrays["train_images"], train_labels=arrays["train_labels"])
    with pytest.raises(UnreadableImageError, match="lacks val_images, val_labels"):
        load_nodulemnist3d(partial, SPEC, verify=False)
    flat = tmp_path / "flat.npz"
    np.savez(flat, **{k: v[:, 0] if k.endswith("images") else v for k, v in arrays.items()})
    with pytest.raises(GeometryError, match=r"\(6, 28, 28\)"):
        load_nodulemnist3d(flat, SPEC, verify=False)
    with pytest.raises(InputNotFoundError, match="does not exist"):
        load_nodulemnist3d(tmp_path / "absent.npz", SPEC)
    for error in (UnreadableImageError, GeometryError, InputNotFoundError):
        assert error.exit_code > 1


# LIDC training: what an example, its targets and its loss are.


def lidc_style_case(rating: int, radius_mm: float, seed: int) -> NoduleCase:
    """A volume of interest as lidc_voi has them: anisotropic voxels, a mask, every label."""
    affine = np.diag([0.7, 0.7, 1.25, 1.0])
    affine[:3, 3] = [-120.0, 40.0, -300.0]
    shape = (48, 48, 28)
    centre = affine[:3, :3] @ (np.array(shape) - 1) / 2 + affine[:3, 3]
    world = np.einsum("ij,j...->...i", affine[:3, :3], np.indices(shape)) + affine[:3, 3]
    inside = np.linalg.norm(world - centre, axis=-1) <= radius_mm
    noise = np.random.default_rng(seed).normal(0, 30, shape)
    return NoduleCase(
        name=f"lidc_style_{seed}",
        patient_id=f"P{seed}",
        fold=seed % 5,
        center_ras=centre,
        rating=rating,
        diameter_mm=2 * radius_mm,
        descriptors=np.random.default_rng(seed).random(len(DESCRIPTORS)).astype(np.float32),
        image=Volume(np.where(inside, 40.0, -850.0) + noise, affine),
        mask=Volume(inside.astype(np.uint8), affine),
    )


def batch_of(cases: list[NoduleCase], targets: dict, seed: int) -> tuple[torch.Tensor, dict]:
    settings = load_train_settings()
    rng = np.random.default_rng(seed)
    examples = [training_example(c, settings.spec, rng, settings.augmentation) for c in cases]
    batch = dict(targets)
    batch["mask"] = torch.from_numpy(np.stack([e[1] for e in examples]))
    return torch.from_numpy(np.stack([e[0] for e in examples])), batch


def test_a_lidc_example_is_the_windowed_nodule_its_mask_and_its_box() -> None:
    settings = load_train_settings()
    spec, aug = settings.spec, settings.augmentation
    case = lidc_style_case(5, 6.0, 0)
    x, target = training_example(case, spec, None, aug)
    assert x.shape == (2, *spec.shape) and target.shape == (1, *spec.shape)
    box, mask = x[1], target[0]
    assert set(np.unique(box)) == {0.0, 1.0}
    assert not (x[0] * (1 - box)).any() and not (mask * (1 - box)).any()  # nothing outside it
    # the ball of 6 mm radius at 1 mm voxels, its tissue and the lung around it in the window
    assert abs(mask.sum() - 4 / 3 * np.pi * 6.0**3) < 0.1 * 4 / 3 * np.pi * 6.0**3
    tissue, lung = normalize_hu(np.array([40.0, -850.0]), spec)
    assert abs(x[0][mask > 0.99].mean() - tissue) < 0.02
    assert abs(x[0][(box > 0) & (mask == 0)].mean() - lung) < 0.02
    inside = np.argwhere(box > 0)
    width = inside.max(0) - inside.min(0) + 1  # the box is at least this wide in-plane
    assert min(width[:2]) >= spec.box_min_inplane_mm / spec.spacing_mm
    # augmented: the same draws give the same example, other draws another; the mask stays
    same = [training_example(case, spec, np.random.default_rng(7), aug) for _ in range(2)]
    other = training_example(case, spec, np.random.default_rng(8), aug)
    assert all(np.array_equal(a, b) for a, b in zip(*same, strict=True))
    assert not np.array_equal(same[0][0], other[0])
    assert abs(same[0][1].sum() - mask.sum()) < 0.1 * mask.sum()


def test_lidc_targets_and_loss_train_every_head() -> None:
    settings = load_train_settings()
    cases = [lidc_style_case(r, radius, seed) for seed, (r, radius) in enumerate([(1, 3), (3, 5)])]
    cases.append(lidc_style_case(5, 8, 2))
    targets = case_targets(cases, settings.rating3_weight)
    expected_soft = [SOFT_MALIGNANCY[r] for r in (1, 3, 5)]
    np.testing.assert_allclose(targets["soft"][:, 0], expected_soft)
    np.testing.assert_allclose(targets["weight"][:, 0], [1.0, settings.rating3_weight, 1.0])
    np.testing.assert_allclose(targets["rating"][:, 0], [0.0, 0.5, 1.0])
    np.testing.assert_allclose(targets["descriptors"], np.stack([c.descriptors for c in cases]))
    x, batch = batch_of(cases, targets, seed=3)
    torch.manual_seed(0)
    net = NoduleNet()
    terms = loss_terms(net(x), batch, settings)
    assert list(terms) == ["malignancy", "rating", "descriptors", "segmentation"]
    assert all(torch.isfinite(v) and float(v.detach()) > 0 for v in terms.values())
    total_loss(terms, settings).backward()
    for head in (net.malignancy, net.rating, net.descriptors, net.seg_out):
        assert float(head.weight.grad.abs().sum()) > 0


def test_a_nodulemnist_case_trains_the_malignancy_head_only(npz: Path) -> None:
    settings = load_train_settings()
    lidc = [lidc_style_case(2, 4, 0), lidc_style_case(4, 7, 1)]
    mnist = load_nodulemnist3d(npz, settings.spec, verify=False)["train"][:2]
    cases = [lidc[0], mnist[1], lidc[1], mnist[0]]
    targets = case_targets(cases, 0.3)
    np.testing.assert_allclose(targets["soft"][:, 0], [0.1, 1.0, 0.9, 0.0])  # MNIST: the file
    x, batch = batch_of(cases, targets, seed=5)
    assert not batch["mask"][[1, 3]].any()
    torch.manual_seed(0)
    net = NoduleNet().eval()
    out = net(x)
    terms = loss_terms(out, batch, settings)
    rows = [0, 2]
    lidc_only = loss_terms(
        {k: v[rows] for k, v in out.items()}, {k: v[rows] for k, v in batch.items()}, settings
    )
    for key in ("rating", "descriptors", "segmentation"):  # the cubes add nothing to these
        torch.testing.assert_close(terms[key], lidc_only[key], rtol=0, atol=1e-6)
    mnist_only = {k: v[[1, 3]] for k, v in batch.items()}
    terms = loss_terms({k: v[[1, 3]] for k, v in out.items()}, mnist_only, settings)
    assert all(float(terms[k]) == 0.0 for k in ("rating", "descriptors", "segmentation"))
    assert terms["malignancy"] > 0


def test_train_and_evaluate_on_nodulemnist3d_end_to_end(npz: Path, tmp_path: Path) -> None:
    settings = load_train_settings(epochs=1, batch_size=3, max_steps_per_epoch=2)
    run_dir, bundle = tmp_path / "run", tmp_path / "bundle"
    summary = NoduleMNISTTrainer(
        npz, run_dir, settings, bundle, default_bundle_dir(), verify=False
    ).run()
    assert summary["validation"]["n_nodules"] == SIZES["val"]
    history = [json.loads(line) for line in (run_dir / "model" / "history.jsonl").open()]
    assert len(history) == 1
    assert history[0]["segmentation"] == history[0]["rating"] == history[0]["descriptors"] == 0
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert metadata["medcnn"]["training_source"] == "nodulemnist3d"

    out = tmp_path / "evaluation"
    argv = ["evaluate", "--source", "nodulemnist3d", "--data", str(npz), "--out", str(out)]
    assert main([*argv, "--bundle", str(bundle), "--trust-bundle", "--no-verify"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["source"] == "nodulemnist3d" and metrics["split"] == "test"
    assert metrics["n_nodules"] == SIZES["test"] and 0.0 <= metrics["auc"] <= 1.0
    assert 0.0 <= metrics["accuracy"] <= 1.0 and "warning" not in metrics
    with open(out / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["label"]) for r in rows] == np.load(npz)["test_labels"][:, 0].tolist()
    # A model that never saw a mask segments nothing, so inference keeps the whole cube.
    assert all(float(r["volume_ml"]) == 0.0 for r in rows)


def test_the_command_line_asks_for_the_file_and_refuses_an_unofficial_one(
    npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--source", "nodulemnist3d"]) == 2
    assert "--data" in capsys.readouterr().err
    run = ["--run-dir", str(tmp_path / "run")]
    assert main(["train", "--source", "nodulemnist3d", "--data", str(npz), *run]) == 4
    assert "MD5" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
