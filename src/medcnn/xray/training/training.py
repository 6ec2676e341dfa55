"""Training the radiograph members, one per patient fold, resumably.

A member of fold ``k`` learns from every training-split radiograph of the chosen sources outside
fold ``k`` and is judged on fold ``k`` of both sources: its out-of-fold predictions are what the
calibration and the threshold are fitted on, and what cross-validation reports. The NIH adults
are few beside Kermany's children, so each epoch repeats them ``nih_repeat`` times.

After training, a member predicts every radiograph of the cache once (``predictions.npz``); what
is honest to read from it (out-of-fold, Kermany's test split, a source it never saw) is the
evaluation's business, not training's.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medcnn import distributed
from medcnn.xray.network import FoundingCNN, RadiographNet
from medcnn.xray.training.data import RadiographCache

ARCHITECTURES = ("medcnn", "founding")


@dataclass(frozen=True)
class RadiographAugmentation:
    """How far a training radiograph may vary (``train.json``'s ``settings.augmentation``)."""

    max_rotation_deg: float
    max_scale: float
    max_shift: float
    max_gamma: float
    contrast: float
    cutout_probability: float
    cutout_size: float


@dataclass(frozen=True)
class RadiographRecipe:
    """The numbers of a training run; ``train.json``'s ``settings``, with no defaults here."""

    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    nih_repeat: int
    seed: int
    threads: int | None  # None: as medcnn.threads set them for this process
    augmentation: RadiographAugmentation


def augment(
    images: torch.Tensor, spec: RadiographAugmentation, generator: torch.Generator
) -> torch.Tensor:
    """Random rotation, scale and shift in one resampling, then gamma, contrast and cut-outs.

    The cut-outs blank random rectangles, often over the edges and corners where film markers
    and text sit, so that no single region can carry the answer."""
    batch = images.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(batch, generator=generator)

    angle = torch.deg2rad(uniform(-spec.max_rotation_deg, spec.max_rotation_deg))
    scale = torch.exp(uniform(-math.log(spec.max_scale), math.log(spec.max_scale)))
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0] = torch.cos(angle) / scale
    theta[:, 0, 1] = -torch.sin(angle) / scale
    theta[:, 1, 0] = torch.sin(angle) / scale
    theta[:, 1, 1] = torch.cos(angle) / scale
    theta[:, 0, 2] = uniform(-spec.max_shift, spec.max_shift) * 2
    theta[:, 1, 2] = uniform(-spec.max_shift, spec.max_shift) * 2
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    gamma = torch.exp(uniform(-math.log(spec.max_gamma), math.log(spec.max_gamma)))
    out = out.clamp(0, 1) ** gamma[:, None, None, None]
    contrast = uniform(1 - spec.contrast, 1 + spec.contrast)[:, None, None, None]
    out = ((out - 0.5) * contrast + 0.5).clamp(0, 1)
    size = images.shape[-1]
    side = max(1, int(spec.cutout_size * size))
    for i in torch.nonzero(torch.rand(batch, generator=generator) < spec.cutout_probability)[
        :, 0
    ].tolist():
        top, left = torch.randint(-side // 2, size - side // 2, (2,), generator=generator).tolist()
        out[i, :, max(0, top) : top + side, max(0, left) : left + side] = float(out[i].mean())
    return out


def network_input(images: torch.Tensor, architecture: str) -> torch.Tensor:
    """What each architecture takes: MedCNN's the (B, 1, 128, 128) grey input; the founding
    network's the same radiograph at 64 x 64 in three channels."""
    if architecture == "medcnn":
        return images
    small = F.interpolate(
        images, size=(64, 64), mode="bilinear", antialias=True, align_corners=False
    )
    return small.expand(-1, 3, -1, -1)


def build_network(architecture: str, channels: tuple[int, ...], dropout: float) -> torch.nn.Module:
    if architecture == "medcnn":
        return RadiographNet(channels, dropout)
    if architecture == "founding":
        return FoundingCNN()
    raise ValueError(f"Unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}.")


def training_indices(
    cache: RadiographCache, fold: int | None, sources: tuple[str, ...], nih_repeat: int
) -> np.ndarray:
    """The epoch's radiographs: training split of ``sources`` outside ``fold`` (all of them when
    ``fold`` is None), NIH repeated."""
    chosen = (cache.split == "train") & np.isin(cache.source, sources)
    if fold is not None:
        chosen &= cache.fold != fold
    index = np.flatnonzero(chosen)
    nih = index[cache.source[index] == "nih"]
    return np.concatenate([index] + [nih] * (nih_repeat - 1))


def train_member(
    cache: RadiographCache,
    out_dir: Path,
    recipe: RadiographRecipe,
    *,
    fold: int | None,
    sources: tuple[str, ...],
    architecture: str,
    channels: tuple[int, ...],
    dropout: float,
    log: Callable[[str], None] = print,
) -> Path:
    """Train one member, resuming from ``checkpoint.pt``; returns its ``model.pt``.

    Under ``torchrun`` the network is wrapped in ``DistributedDataParallel``: every rank draws
    and augments the same whole batch (one random stream, as a single process has) and computes
    its share of it, so a step is the single process's step with the work divided; rank 0
    writes the checkpoints and the member."""
    here = distributed.world()
    out_dir.mkdir(parents=True, exist_ok=True)
    final, checkpoint = out_dir / "model.pt", out_dir / "checkpoint.pt"
    if final.exists():
        return final
    if recipe.threads is not None:
        torch.set_num_threads(recipe.threads)
    seed = recipe.seed + (fold if fold is not None else 99)
    torch.manual_seed(seed)
    net = build_network(architecture, channels, dropout)
    optimizer = torch.optim.AdamW(
        net.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay
    )
    index = training_indices(cache, fold, sources, recipe.nih_repeat)
    steps_per_epoch = max(1, len(index) // recipe.batch_size)  # a small smoke run: one step
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        recipe.learning_rate,
        total_steps=recipe.epochs * steps_per_epoch,
        pct_start=0.15,
    )
    generator = torch.Generator().manual_seed(seed)
    start = 0
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        net.load_state_dict(state["net"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        start = state["epoch"]
    labels = cache.labels.float()
    model: torch.nn.Module = net
    if here.size > 1:
        model = torch.nn.parallel.DistributedDataParallel(net)
    mine = slice(here.rank, None, here.size)
    for epoch in range(start, recipe.epochs):
        began = time.time()
        net.train()
        order = index[torch.randperm(len(index), generator=generator).numpy()]
        total = 0.0
        for step in range(steps_per_epoch):
            batch = order[step * recipe.batch_size : (step + 1) * recipe.batch_size]
            images = augment(cache.images[batch].float()[:, None], recipe.augmentation, generator)
            loss = F.binary_cross_entropy_with_logits(
                model(network_input(images[mine], architecture)), labels[batch][mine]
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach())
        if here.is_main:
            log(
                f"{out_dir.name} epoch {epoch + 1}/{recipe.epochs} loss "
                f"{total / steps_per_epoch:.4f} {time.time() - began:.0f} s"
            )
            partial = checkpoint.with_suffix(".tmp")
            torch.save(
                {
                    "net": net.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "generator": generator.get_state(),
                    "epoch": epoch + 1,
                },
                partial,
            )
            partial.replace(checkpoint)
        distributed.barrier()
    if not here.is_main:
        distributed.barrier()  # rank 0 writes the member
        return final
    logits = predict_logits(net, cache, architecture)
    np.savez(out_dir / "predictions.npz", logits=logits)
    partial = final.with_suffix(".tmp")
    torch.save(net.state_dict(), partial)
    partial.replace(final)
    (out_dir / "member.json").write_text(
        json.dumps({"fold": fold, "sources": list(sources), "architecture": architecture}, indent=2)
        + "\n"
    )
    checkpoint.unlink(missing_ok=True)
    distributed.barrier()
    return final


@torch.no_grad()
def predict_logits(
    net: torch.nn.Module, cache: RadiographCache, architecture: str, batch_size: int = 256
) -> np.ndarray:
    """The member's logit for every radiograph of the cache."""
    net.eval()
    out = []
    for start in range(0, len(cache.labels), batch_size):
        images = cache.images[start : start + batch_size].float()[:, None]
        out.append(net(network_input(images, architecture)))
    return torch.cat(out).numpy()
