"""Fold-by-fold training that survives interruption: a checkpoint every epoch, resumed on restart.

Each fold's model learns from the other four folds' patients; its predictions on its own fold
are the honest cross-validated numbers, and the five fold models together are the shipped
ensemble.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medcnn.augmentation import Augmentation, random_rotation
from medcnn.data.lidc import SOFT_MALIGNANCY, NoduleCase, load_cases
from medcnn.network import NoduleNet
from medcnn.preprocessing import PatchSpec, context_box, network_input, resample, sample_patch

log = logging.getLogger(__name__)


@dataclass
class TrainSettings:
    epochs: int = 40
    batch_size: int = 32
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    rating3_weight: float = 0.3
    aux_weight: float = 0.5
    seg_weight: float = 1.0
    seed: int = 0
    max_steps_per_epoch: int | None = None
    threads: int = 2
    spec: PatchSpec = field(default_factory=PatchSpec)
    augmentation: Augmentation = field(default_factory=Augmentation)


def training_example(
    case: NoduleCase, spec: PatchSpec, rng: np.random.Generator | None, aug: Augmentation
) -> tuple[np.ndarray, np.ndarray]:
    """Network input (2, N, N, N) and soft mask target (1, N, N, N) for one nodule."""
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


def _targets(cases: list[NoduleCase], rating3_weight: float) -> dict[str, torch.Tensor]:
    ratings = np.array([c.rating for c in cases])
    return {
        "soft": torch.tensor([SOFT_MALIGNANCY[r] for r in ratings], dtype=torch.float32)[:, None],
        "weight": torch.tensor(np.where(ratings == 3, rating3_weight, 1.0), dtype=torch.float32)[
            :, None
        ],
        "rating": torch.tensor((ratings - 1) / 4.0, dtype=torch.float32)[:, None],
        "descriptors": torch.tensor(np.stack([c.descriptors for c in cases])),
    }


def loss_terms(
    out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], settings: TrainSettings
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


def total_loss(terms: dict[str, torch.Tensor], settings: TrainSettings) -> torch.Tensor:
    return (
        terms["malignancy"]
        + settings.aux_weight * (terms["rating"] + terms["descriptors"])
        + settings.seg_weight * terms["segmentation"]
    )


def train_fold(
    cases: list[NoduleCase], fold: int | None, out_dir: Path, settings: TrainSettings
) -> Path:
    """Train on every case outside ``fold`` (all cases when ``fold`` is None); resumable."""
    torch.set_num_threads(settings.threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final, checkpoint = out_dir / "model.pt", out_dir / "checkpoint.pt"
    if final.exists():
        log.info("fold %s already trained: %s", fold, final)
        return final
    train = [c for c in cases if fold is None or c.fold != fold]
    targets = _targets(train, settings.rating3_weight)
    torch.manual_seed(settings.seed + (fold or 0))
    net = NoduleNet()
    optimizer = torch.optim.AdamW(
        net.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    steps_per_epoch = -(-len(train) // settings.batch_size)
    if settings.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, settings.max_steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=settings.learning_rate,
        total_steps=settings.epochs * steps_per_epoch,
        pct_start=0.1,
    )
    start_epoch = 0
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch = state["epoch"] + 1
        log.info("fold %s: resuming at epoch %d", fold, start_epoch)
    history_path = out_dir / "history.jsonl"
    for epoch in range(start_epoch, settings.epochs):
        rng = np.random.default_rng([settings.seed, fold if fold is not None else 99, epoch])
        order = rng.permutation(len(train))
        net.train()
        started, sums, seen = time.time(), {}, 0
        for step in range(steps_per_epoch):
            index = order[step * settings.batch_size : (step + 1) * settings.batch_size]
            examples = [
                training_example(train[i], settings.spec, rng, settings.augmentation) for i in index
            ]
            batch = {key: value[index] for key, value in targets.items()}
            batch["mask"] = torch.from_numpy(np.stack([e[1] for e in examples]))
            out = net(torch.from_numpy(np.stack([e[0] for e in examples])))
            terms = loss_terms(out, batch, settings)
            loss = total_loss(terms, settings)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach()) * len(index)
            seen += len(index)
        record = {
            "fold": fold,
            "epoch": epoch,
            "seconds": round(time.time() - started, 1),
            **{k: round(v / seen, 4) for k, v in sums.items()},
        }
        log.info(json.dumps(record))
        with open(history_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        tmp = checkpoint.with_suffix(".tmp")
        torch.save(
            {
                "model": net.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch,
            },
            tmp,
        )
        tmp.replace(checkpoint)
    tmp = final.with_suffix(".tmp")
    torch.save(net.state_dict(), tmp)
    tmp.replace(final)
    return final


def train_cross_validation(
    data_dir: Path,
    out_dir: Path,
    folds: list[int] | None = None,
    settings: TrainSettings | None = None,
    limit: int | None = None,
) -> list[Path]:
    """Train one model per patient fold; each is resumable and skipped once finished."""
    settings = settings or TrainSettings()
    out_dir = Path(out_dir)
    cases = load_cases(Path(data_dir), cache_dir=out_dir / "cache", limit=limit)
    folds = sorted({c.fold for c in cases}) if folds is None else folds
    return [train_fold(cases, f, out_dir / f"fold{f}", settings) for f in folds]


class CrossValidationTrainer:
    """``train.json``'s runner: train the fold models, then assemble a release bundle from them.

    The release goes to ``release_dir``, a copy of the shipped bundle's configs with the new
    weights and numbers; copy it over ``monai_bundle/`` to ship it.
    """

    def __init__(
        self,
        data_dir: Path | str,
        run_dir: Path | str,
        folds: list[int],
        settings: TrainSettings,
        release_dir: Path | str,
        bundle_dir: Path | str,
        limit: int | None = None,
    ) -> None:
        self.data_dir, self.run_dir = Path(data_dir), Path(run_dir)
        self.folds, self.settings, self.limit = list(folds), settings, limit
        self.release_dir, self.bundle_dir = Path(release_dir), Path(bundle_dir)

    def run(self) -> dict:
        import shutil

        from medcnn.release import build_release

        train_cross_validation(
            self.data_dir, self.run_dir, self.folds, self.settings, limit=self.limit
        )
        if self.release_dir.resolve() != self.bundle_dir.resolve():
            for part in ("configs", "docs"):
                shutil.copytree(self.bundle_dir / part, self.release_dir / part, dirs_exist_ok=True)
            shutil.copy2(self.bundle_dir / "LICENSE", self.release_dir / "LICENSE")
        return build_release(
            self.run_dir, self.data_dir, self.release_dir, self.folds, limit=self.limit
        )
