"""What each member is taught: per-case targets from the readers' labels, and the loss terms.

Malignancy is a soft label from the rating (rating 3 at a lower weight); the rating and the eight
descriptors are auxiliary regressions on a 0-1 scale; the consensus mask is learned by BCE plus a
soft Dice. A case trains only the outputs it has targets for, so sources without masks or
ratings (NoduleMNIST3D) share the same loss.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from medcnn.nodule.network import DESCRIPTORS
from medcnn.training.data.lidc import SOFT_MALIGNANCY, NoduleCase


class LossWeights(Protocol):
    """How much the auxiliary and segmentation terms weigh (training's settings have both)."""

    aux_weight: float
    seg_weight: float


def _soft_label(case: NoduleCase) -> float:
    """The readers' rating as a soft label; the source's own 0/1 where there is no rating."""
    if case.rating is not None:
        return SOFT_MALIGNANCY[case.rating]
    if case.binary_label is None:
        raise ValueError(f"{case.name} has neither a rating nor a label")
    return float(case.binary_label)


def case_targets(cases: list[NoduleCase], rating3_weight: float) -> dict[str, torch.Tensor]:
    """Per-case targets; one a case lacks is a placeholder that its ``has_*`` flag turns off."""
    ratings = np.array([c.rating if c.has_rating else 1 for c in cases])
    no_descriptors = np.zeros(len(DESCRIPTORS), dtype=np.float32)
    return {
        "soft": torch.tensor([_soft_label(c) for c in cases], dtype=torch.float32)[:, None],
        "weight": torch.tensor(np.where(ratings == 3, rating3_weight, 1.0), dtype=torch.float32)[
            :, None
        ],
        "rating": torch.tensor((ratings - 1) / 4.0, dtype=torch.float32)[:, None],
        "descriptors": torch.tensor(
            np.stack([no_descriptors if c.descriptors is None else c.descriptors for c in cases])
        ),
        **{
            flag: torch.tensor([getattr(c, flag) for c in cases])
            for flag in ("has_rating", "has_descriptors", "has_mask")
        },
    }


def _mean_where_present(
    batch: dict[str, torch.Tensor],
    flag: str,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    output: torch.Tensor,
    target: torch.Tensor,
) -> torch.Tensor:
    """``loss`` over the batch's samples that have the target ``flag`` names; 0 if none has.

    A batch whose samples all have it (every LIDC batch) goes in untouched, so its loss and
    gradients are exactly what they were before sources without these targets existed.
    """
    present = batch.get(flag)
    if present is None or bool(present.all()):
        return loss(output, target)
    if not bool(present.any()):
        return output.new_zeros(())
    return loss(output[present], target[present])


def probability_mse(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(torch.sigmoid(logits), target)


UNSCALED = {"rating": 1.0, "descriptors": 1.0}


def aux_scales(targets: dict[str, torch.Tensor], scaled: bool) -> dict[str, float]:
    """What each auxiliary loss is divided by: 1, or with ``scaled`` the variance of its
    targets over the training cases (the descriptors' mean variance for their block).

    The rating and descriptors are on a 0-1 scale, where a network that always predicts the mean
    already has an MSE of only 0.04-0.09; scaled, that network's term is 1, the scale of the
    malignancy and segmentation losses.
    """
    if not scaled:
        return dict(UNSCALED)

    def variance(values: torch.Tensor, present: torch.Tensor) -> float:
        chosen = values[present]
        return max(float(chosen.var(0, unbiased=False).mean()), 1e-3) if len(chosen) else 1.0

    return {
        "rating": variance(targets["rating"], targets["has_rating"]),
        "descriptors": variance(targets["descriptors"], targets["has_descriptors"]),
    }


def _segmentation_loss(seg_logits: torch.Tensor, seg_target: torch.Tensor) -> torch.Tensor:
    seg_prob = torch.sigmoid(seg_logits)
    inter = (seg_prob * seg_target).sum((1, 2, 3, 4))
    dice = 1 - (2 * inter + 1) / (seg_prob.sum((1, 2, 3, 4)) + seg_target.sum((1, 2, 3, 4)) + 1)
    return F.binary_cross_entropy_with_logits(seg_logits, seg_target) + dice.mean()


def loss_terms(
    out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], settings: LossWeights
) -> dict[str, torch.Tensor]:
    """Each auxiliary term is the mean over the samples that have its target."""
    return {
        "malignancy": F.binary_cross_entropy_with_logits(
            out["malignancy"], batch["soft"], weight=batch["weight"]
        ),
        "rating": _mean_where_present(
            batch, "has_rating", probability_mse, out["rating"], batch["rating"]
        ),
        "descriptors": _mean_where_present(
            batch, "has_descriptors", probability_mse, out["descriptors"], batch["descriptors"]
        ),
        "segmentation": _mean_where_present(
            batch, "has_mask", _segmentation_loss, out["segmentation"], batch["mask"]
        ),
    }


def total_loss(
    terms: dict[str, torch.Tensor],
    settings: LossWeights,
    scales: dict[str, float] | None = None,
) -> torch.Tensor:
    scales = scales or UNSCALED
    return (
        terms["malignancy"]
        + settings.aux_weight
        * (terms["rating"] / scales["rating"] + terms["descriptors"] / scales["descriptors"])
        + settings.seg_weight * terms["segmentation"]
    )
