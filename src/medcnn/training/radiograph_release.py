"""The radiograph model's numbers and release, from the members ``radiograph_experiments``
trained.

Everything chosen here is chosen on out-of-fold predictions of the training split: the Platt
calibration (fitted on the members' pooled out-of-fold logits), the threshold (the one with the
best balanced accuracy on them). Kermany's test split is only measured, once, at the end.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from medcnn.training.calibration import fit_logistic
from medcnn.training.data.radiographs import RadiographCache
from medcnn.training.metrics import (
    bootstrap_interval,
    brier_score,
    expected_calibration_error,
    reliability_bins,
    roc_auc,
    roc_curve,
    threshold_metrics,
)
from medcnn.training.radiograph_experiments import EXPERIMENTS, member_dir

# The heatmap's border band: the outer cells of the network's 16 x 16 map on each side, where
# film markers, text and collimation edges sit. Its share of the heatmap is compared with its
# share of the image's area.
BORDER_CELLS = 2


def member_logits(run_dir: Path, name: str) -> dict[int | None, np.ndarray]:
    """Each trained member's logits for every radiograph of the cache, by fold."""
    return {
        fold: np.load(member_dir(run_dir, name, fold) / "predictions.npz")["logits"]
        for fold in EXPERIMENTS[name].folds
        if (member_dir(run_dir, name, fold) / "predictions.npz").exists()
    }


def out_of_fold(cache: RadiographCache, logits: dict[int | None, np.ndarray]) -> np.ndarray:
    """Each training-split radiograph's logit from the member that did not see its fold; NaN
    elsewhere."""
    out = np.full(len(cache.labels), np.nan)
    for fold, values in logits.items():
        if fold is None:
            continue
        here = (cache.split == "train") & (cache.fold == fold)
        out[here] = values[here]
    return out


def platt(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(a, b) of p = sigmoid(a * logit + b), fitted by logistic regression."""
    head = fit_logistic(logits[:, None], labels, l2=1e-3)
    a = float(head["weight"][0] / head["std"][0])
    return a, float(head["bias"][0] - a * head["mean"][0])


def calibrate(logits: np.ndarray, ab: tuple[float, float]) -> np.ndarray:
    return 1 / (1 + np.exp(-(ab[0] * logits + ab[1])))


def best_balanced_threshold(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The threshold of the best sensitivity + specificity (Youden), rounded to 0.01."""
    candidates = np.round(np.arange(0.05, 0.96, 0.01), 2)
    scores = [
        sum(threshold_metrics(labels, probabilities, t)[k] for k in ("sensitivity", "specificity"))
        for t in candidates
    ]
    return float(candidates[int(np.argmax(scores))])


def discrimination(
    labels: np.ndarray, probabilities: np.ndarray, groups: np.ndarray, threshold: float | None
) -> dict:
    """AUC with a patient bootstrap interval, Brier, ECE and, at a threshold, the calls."""
    labels = labels.astype(bool)
    out = {
        "n": int(len(labels)),
        "n_positive": int(labels.sum()),
        "auc": roc_auc(labels, probabilities),
        "auc_ci95": bootstrap_interval(labels, probabilities, roc_auc, list(groups)),
        "brier": brier_score(labels, probabilities),
        "ece": expected_calibration_error(labels, probabilities),
    }
    if threshold is not None:
        out.update(threshold_metrics(labels, probabilities, threshold))
    return out


def evaluate(run_dir: Path, cache: RadiographCache) -> dict:
    """Every experiment's honest numbers; the ``both`` members' calibration and threshold."""
    labels = cache.labels.numpy()
    train = cache.split == "train"
    test = cache.split == "test"
    nih = cache.source == "nih"
    kermany_train = train & (cache.source == "kermany")
    report: dict = {"experiments": {}}
    for name, experiment in EXPERIMENTS.items():
        logits = member_logits(run_dir, name)
        if len(logits) < len(experiment.folds):
            continue
        oof = out_of_fold(cache, logits)
        fitted = np.isfinite(oof)
        ab = platt(oof[fitted], labels[fitted]) if fitted.any() else (1.0, 0.0)
        threshold = (
            best_balanced_threshold(labels[fitted], calibrate(oof[fitted], ab))
            if fitted.any()
            else 0.5
        )
        ensemble = np.mean([calibrate(v, ab) for v in logits.values()], axis=0)
        result: dict = {
            "architecture": experiment.architecture,
            "sources": list(experiment.sources),
            "calibration": list(ab),
            "threshold": threshold,
        }
        result["kermany_test"] = discrimination(
            labels[test], ensemble[test], cache.patient[test], threshold
        )
        if "nih" in experiment.sources:
            per_fold = {
                str(f): roc_auc(labels[nih & (cache.fold == f)], oof[nih & (cache.fold == f)])
                for f in experiment.folds
            }
            result["nih_cv"] = {
                **discrimination(
                    labels[nih], calibrate(oof[nih], ab), cache.patient[nih], threshold
                ),
                "auc_per_fold": per_fold,
                "auc_worst_fold": min(per_fold.values()),
            }
        else:
            result["nih_external"] = discrimination(
                labels[nih], ensemble[nih], cache.patient[nih], threshold
            )
        if "kermany" in experiment.sources and None not in experiment.folds:
            result["kermany_cv"] = discrimination(
                labels[kermany_train],
                calibrate(oof[kermany_train], ab),
                cache.patient[kermany_train],
                threshold,
            )
        report["experiments"][name] = result
    return report


@torch.no_grad()
def heatmap_border_share(model: torch.nn.Module, cache: RadiographCache, index: np.ndarray) -> dict:
    """How much of the heatmap falls in the border band, against the band's share of the area:
    a model that read film markers or collimation edges would put its weight there."""
    shares = []
    for start in range(0, len(index), 128):
        chosen = index[start : start + 128]
        _, heatmaps = model.explain(cache.images[chosen].float()[:, None])
        total = heatmaps.sum(dim=(1, 2)).clamp_min(1e-12)
        inner = heatmaps[:, BORDER_CELLS:-BORDER_CELLS, BORDER_CELLS:-BORDER_CELLS].sum(dim=(1, 2))
        shares.append((1 - inner / total).numpy())
    grid = heatmaps.shape[-1]
    return {
        "border_cells": BORDER_CELLS,
        "area_share": 1 - ((grid - 2 * BORDER_CELLS) / grid) ** 2,
        "heatmap_share_mean": float(np.concatenate(shares).mean()),
        "n": int(len(index)),
    }


def curves(labels: np.ndarray, probabilities: np.ndarray) -> dict:
    fpr, tpr = roc_curve(labels.astype(bool), probabilities)
    return {
        "fpr": fpr.tolist(),
        "tpr": tpr.tolist(),
        "reliability": reliability_bins(labels, probabilities),
    }


def write_report(report: dict, path: Path) -> None:
    path.write_text(json.dumps(report, indent=2) + "\n")
