"""NoduleMNIST3D as a training and evaluation source, on a small npz written here (the real file
is the user's download), and proof that LIDC training is unchanged by sources without masks."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medcnn.app.cli import main
from medcnn.bundle import default_bundle_dir
from medcnn.errors import GeometryError, InputNotFoundError, UnreadableImageError
from medcnn.nodule.network import DESCRIPTORS, NoduleNet
from medcnn.nodule.preprocessing import (
    PatchSpec,
    context_box,
    network_input,
    normalize_hu,
    resample,
    sample_patch,
)
from medcnn.training.augmentation import Augmentation, random_rotation
from medcnn.training.data import nodulemnist
from medcnn.training.data.lidc import SOFT_MALIGNANCY, NoduleCase
from medcnn.training.data.nodulemnist import (
    OFFICIAL_MD5,
    SPLIT_FOLDS,
    file_md5,
    load_nodulemnist3d,
    to_hu,
)
from medcnn.training.loop import NoduleMNISTTrainer, TrainSettings, training_example
from medcnn.training.losses import case_targets, loss_terms, total_loss
from medcnn.volume import Volume

SIZES = {"train": 6, "val": 2, "test": 2}


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
    splits = load_nodulemnist3d(npz, verify=False)
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
    case = load_nodulemnist3d(npz, verify=False)["test"][1]
    np.testing.assert_array_equal(case.center_ras, [0.0, 0.0, 0.0])
    np.testing.assert_allclose(case.image.spacing, [1.0, 1.0, 1.0])
    np.testing.assert_allclose(case.image.world_to_index(case.center_ras[None])[0], [13.5] * 3)
    corners = case.image.index_to_world(np.array([[0, 0, 0], [27, 27, 27]]))
    np.testing.assert_allclose(corners, [[-13.5] * 3, [13.5] * 3])
    np.testing.assert_allclose(to_hu(np.array([0, 255])), [-1000.0, 400.0])
    spec = PatchSpec()
    patch = sample_patch(case.image, case.center_ras, spec)
    inner = (slice(2, 30),) * 3  # the 32 mm patch's voxels fall on the cube's own voxels
    np.testing.assert_allclose(normalize_hu(patch.hu, spec)[inner], images[1] / 255.0, atol=1e-4)
    assert patch.coverage[inner].all() and patch.coverage.sum() == 28**3


def test_verification_refuses_a_file_that_is_not_the_official_one(npz: Path) -> None:
    with pytest.raises(UnreadableImageError, match="MD5") as error:
        load_nodulemnist3d(npz)
    message = str(error.value)
    assert OFFICIAL_MD5 in message and "6/2/2" in message and "1158/165/310" in message


def test_verification_tells_a_damaged_official_file_and_passes_the_official_one(
    npz: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nodulemnist, "SPLIT_SIZES", dict(SIZES))
    with pytest.raises(UnreadableImageError, match="MD5 .* corrupted or modified"):
        load_nodulemnist3d(npz)
    monkeypatch.setattr(nodulemnist, "OFFICIAL_MD5", file_md5(npz))
    assert len(load_nodulemnist3d(npz)["train"]) == SIZES["train"]


def test_files_that_are_not_nodulemnist3d_are_refused_with_one_sentence(tmp_path: Path) -> None:
    text = tmp_path / "notes.npz"
    text.write_text("not an archive\n")
    with pytest.raises(UnreadableImageError, match="not an npz archive"):
        load_nodulemnist3d(text, verify=False)
    single = tmp_path / "single.npy"
    np.save(single, np.zeros((2, 28, 28, 28), np.uint8))
    with pytest.raises(UnreadableImageError, match="single NumPy array"):
        load_nodulemnist3d(single, verify=False)
    truncated = tmp_path / "truncated.npz"
    write_npz(truncated)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    with pytest.raises(UnreadableImageError, match="not an npz archive"):
        load_nodulemnist3d(truncated, verify=False)
    partial = tmp_path / "partial.npz"
    arrays = write_npz(partial)
    np.savez(partial, train_images=arrays["train_images"], train_labels=arrays["train_labels"])
    with pytest.raises(UnreadableImageError, match="lacks val_images, val_labels"):
        load_nodulemnist3d(partial, verify=False)
    flat = tmp_path / "flat.npz"
    np.savez(flat, **{k: v[:, 0] if k.endswith("images") else v for k, v in arrays.items()})
    with pytest.raises(GeometryError, match=r"\(6, 28, 28\)"):
        load_nodulemnist3d(flat, verify=False)
    with pytest.raises(InputNotFoundError, match="does not exist"):
        load_nodulemnist3d(tmp_path / "absent.npz")
    for error in (UnreadableImageError, GeometryError, InputNotFoundError):
        assert error.exit_code > 1


# LIDC training exactly as it was before the flags: these are the committed originals.


def original_training_example(
    case: NoduleCase, spec: PatchSpec, rng: np.random.Generator | None, aug: Augmentation
) -> tuple[np.ndarray, np.ndarray]:
    center, rotation = case.center_ras, None
    margin, min_inplane = spec.box_margin_mm, spec.box_min_inplane_mm
    if rng is not None:
        center = center + rng.uniform(-aug.max_shift_mm, aug.max_shift_mm, size=3)
        rotation = random_rotation(rng, aug.max_tilt_deg)
        margin = rng.uniform(*aug.box_margin_mm)
        min_inplane = rng.uniform(*aug.box_min_inplane_mm)
    patch = sample_patch(case.image, center, spec, rotation)
    mask = resample(case.mask.array, case.mask.affine, spec.shape, patch.affine)
    box_spec = PatchSpec(**{**asdict(spec), "box_min_inplane_mm": min_inplane})
    box = context_box(mask, box_spec, margin_mm=margin)
    if rng is not None:
        noise = rng.normal(0, aug.hu_noise, size=patch.hu.shape) + rng.uniform(-1, 1) * aug.hu_shift
        patch = type(patch)(
            hu=patch.hu + noise.astype(np.float32), coverage=patch.coverage, affine=patch.affine
        )
    return network_input(patch, box, spec), (mask * box)[None].astype(np.float32)


def original_targets(cases: list[NoduleCase], rating3_weight: float) -> dict[str, torch.Tensor]:
    ratings = np.array([c.rating for c in cases])
    return {
        "soft": torch.tensor([SOFT_MALIGNANCY[r] for r in ratings], dtype=torch.float32)[:, None],
        "weight": torch.tensor(np.where(ratings == 3, rating3_weight, 1.0), dtype=torch.float32)[
            :, None
        ],
        "rating": torch.tensor((ratings - 1) / 4.0, dtype=torch.float32)[:, None],
        "descriptors": torch.tensor(np.stack([c.descriptors for c in cases])),
    }


def original_loss_terms(
    out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    seg_logits, seg_target = out["segmentation"], batch["mask"]
    seg_prob = torch.sigmoid(seg_logits)
    inter = (seg_prob * seg_target).sum((1, 2, 3, 4))
    dice = 1 - (2 * inter + 1) / (seg_prob.sum((1, 2, 3, 4)) + seg_target.sum((1, 2, 3, 4)) + 1)
    return {
        "malignancy": F.binary_cross_entropy_with_logits(
            out["malignancy"], batch["soft"], weight=batch["weight"]
        ),
        "rating": F.mse_loss(torch.sigmoid(out["rating"]), batch["rating"]),
        "descriptors": F.mse_loss(torch.sigmoid(out["descriptors"]), batch["descriptors"]),
        "segmentation": F.binary_cross_entropy_with_logits(seg_logits, seg_target) + dice.mean(),
    }


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
    settings = TrainSettings()
    rng = np.random.default_rng(seed)
    examples = [training_example(c, settings.spec, rng, settings.augmentation) for c in cases]
    batch = dict(targets)
    batch["mask"] = torch.from_numpy(np.stack([e[1] for e in examples]))
    return torch.from_numpy(np.stack([e[0] for e in examples])), batch


def test_lidc_examples_targets_and_loss_are_exactly_as_before() -> None:
    settings = TrainSettings()
    cases = [lidc_style_case(r, radius, seed) for seed, (r, radius) in enumerate([(1, 3), (3, 5)])]
    cases.append(lidc_style_case(5, 8, 2))
    spec, aug = settings.spec, settings.augmentation
    for case in cases:
        new_rng, old_rng = np.random.default_rng(7), np.random.default_rng(7)
        for new, old in zip(
            training_example(case, spec, new_rng, aug),
            original_training_example(case, spec, old_rng, aug),
            strict=True,
        ):
            assert np.array_equal(new, old)
        assert new_rng.random() == old_rng.random()  # the same random draws, no more
    new_targets, old_targets = case_targets(cases, 0.3), original_targets(cases, 0.3)
    for key, value in old_targets.items():
        assert torch.equal(new_targets[key], value), key
    x, batch = batch_of(cases, new_targets, seed=3)
    old_batch = {k: v for k, v in batch.items() if not k.startswith("has_")}
    torch.manual_seed(0)
    net = NoduleNet()
    out = net(x)
    new_terms, old_terms = loss_terms(out, batch, settings), original_loss_terms(out, old_batch)
    assert list(new_terms) == list(old_terms)
    for key in old_terms:
        assert torch.equal(new_terms[key], old_terms[key]), key
    params = list(net.parameters())
    new_grads = torch.autograd.grad(total_loss(new_terms, settings), params, retain_graph=True)
    old_grads = torch.autograd.grad(total_loss(old_terms, settings), params)
    assert all(torch.equal(a, b) for a, b in zip(new_grads, old_grads, strict=True))


def test_a_nodulemnist_case_trains_the_malignancy_head_only(npz: Path) -> None:
    settings = TrainSettings()
    lidc = [lidc_style_case(2, 4, 0), lidc_style_case(4, 7, 1)]
    mnist = load_nodulemnist3d(npz, verify=False)["train"][:2]
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
    lidc_only = original_loss_terms(
        {k: v[rows] for k, v in out.items()}, {k: v[rows] for k, v in batch.items()}
    )
    for key in ("rating", "descriptors", "segmentation"):
        torch.testing.assert_close(terms[key], lidc_only[key], rtol=0, atol=1e-6)
    mnist_only = {k: v[[1, 3]] for k, v in batch.items()}
    terms = loss_terms({k: v[[1, 3]] for k, v in out.items()}, mnist_only, settings)
    assert all(float(terms[k]) == 0.0 for k in ("rating", "descriptors", "segmentation"))
    assert terms["malignancy"] > 0


def test_train_and_evaluate_on_nodulemnist3d_end_to_end(npz: Path, tmp_path: Path) -> None:
    settings = TrainSettings(epochs=1, batch_size=3, max_steps_per_epoch=2)
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
