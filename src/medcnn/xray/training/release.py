"""The radiograph model's numbers and release, from the members ``experiments``
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

from medcnn.bundle import load_radiograph_spec, network_arguments, sign_weights
from medcnn.training.calibration import fit_logistic
from medcnn.training.metrics import (
    threshold_metrics,
)
from medcnn.xray.network import RadiographEnsemble
from medcnn.xray.training.data import RadiographCache, all_records, build_cache
from medcnn.xray.training.evaluation import (
    LabelledRadiograph,
    judged,
    member_probabilities,
    per_fold,
    plot_curves,
    summarize,
)
from medcnn.xray.training.experiments import EXPERIMENTS, member_dir

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
        result["kermany_test"] = summarize(
            labels[test], ensemble[test], list(cache.patient[test]), threshold
        )
        if "nih" in experiment.sources:
            result["nih_cv"] = {
                **summarize(
                    labels[nih], calibrate(oof[nih], ab), list(cache.patient[nih]), threshold
                ),
                **per_fold(labels[nih], calibrate(oof[nih], ab), cache.fold[nih]),
            }
        else:
            result["nih_external"] = summarize(
                labels[nih], ensemble[nih], list(cache.patient[nih]), threshold
            )
        if "kermany" in experiment.sources and None not in experiment.folds:
            result["kermany_cv"] = summarize(
                labels[kermany_train],
                calibrate(oof[kermany_train], ab),
                list(cache.patient[kermany_train]),
                threshold,
            )
        report["experiments"][name] = result
    return report


@torch.no_grad()
def heatmap_border_share(
    model: RadiographEnsemble, cache: RadiographCache, index: np.ndarray
) -> dict:
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


def write_report(report: dict, path: Path) -> None:
    path.write_text(json.dumps(report, indent=2) + "\n")


CHECK_EVERY = 10  # the fixed subset (every 10th test radiograph) that the tests re-evaluate


def round_floats(value: object, digits: int = 4) -> object:
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: round_floats(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [round_floats(v, digits) for v in value]
    return value


def assemble(
    run_dir: Path, bundle_dir: Path, calibration: tuple[float, float]
) -> RadiographEnsemble:
    """The ``both`` experiment's fold members as the shipped ensemble, calibration installed."""
    arguments = network_arguments(bundle_dir)
    folds = EXPERIMENTS["both"].folds
    model = RadiographEnsemble(len(folds), tuple(arguments["channels"]), arguments["dropout"])
    for member, fold in zip(model.members, folds, strict=True):
        path = member_dir(run_dir, "both", fold) / "model.pt"
        member.load_state_dict(torch.load(path, weights_only=True))
    model.calibration.copy_(torch.tensor(calibration))  # type: ignore[operator]
    return model.eval()


def build_release(run_dir: Path, data_root: Path, bundle_dir: Path) -> dict:
    """Evaluate every experiment, assemble and sign the shipped ensemble, and write its
    numbers into ``metadata.json`` and its plots into ``docs/images``."""
    spec = load_radiograph_spec(bundle_dir)
    cache = build_cache(data_root, spec, run_dir / f"cache-{spec.size}.npz")
    report = evaluate(run_dir, cache)
    both = report["experiments"]["both"]
    threshold = both["threshold"]
    model = assemble(run_dir, bundle_dir, tuple(both["calibration"]))
    records = all_records(data_root)
    test = [LabelledRadiograph(r.path, r.label, r.patient) for r in records if r.split == "test"]
    nih = [
        LabelledRadiograph(r.path, r.label, r.patient, r.fold) for r in records if r.source == "nih"
    ]
    # Shipped numbers through the click's own path: the ensemble on Kermany's test split; on
    # NIH, each radiograph judged by the member that never saw its fold.
    test_members, _ = member_probabilities(model, spec, test)
    test_probability = test_members.mean(axis=1)
    test_labels = np.array([r.label for r in test])
    nih_members, _ = member_probabilities(model, spec, nih)
    nih_probability = judged(
        nih_members, nih, [f for f in EXPERIMENTS["both"].folds if f is not None]
    )
    nih_labels = np.array([r.label for r in nih])
    eval_metrics = {
        "kermany_test": summarize(
            test_labels, test_probability, [r.patient for r in test], threshold
        ),
        "nih_cv": {
            **summarize(nih_labels, nih_probability, [r.patient for r in nih], threshold),
            **per_fold(nih_labels, nih_probability, np.array([r.fold for r in nih])),
        },
        "uncertainty_mean_kermany_test": float(test_members.std(axis=1).mean()),
    }
    border = {
        "kermany_test": heatmap_border_share(model, cache, np.flatnonzero(cache.split == "test")),
        "nih": heatmap_border_share(model, cache, np.flatnonzero(cache.source == "nih")),
    }
    checked = list(range(0, len(test), CHECK_EVERY))
    check_subset = {
        "every": CHECK_EVERY,
        "images": [str(test[i].path.relative_to(data_root)) for i in checked],
        **summarize(
            test_labels[checked],
            test_probability[checked],
            [test[i].patient for i in checked],
            threshold,
        ),
        "mean_probability": float(test_probability[checked].mean()),
    }
    metadata_path = bundle_dir / "configs" / "metadata.json"
    draft = bundle_dir / "configs" / "metadata.json.draft"
    metadata = json.loads((draft if draft.exists() else metadata_path).read_text())
    metadata["eval_metrics"] = round_floats(eval_metrics)
    metadata["medcnn"].update(
        {
            "threshold": threshold,
            "calibration": round_floats(list(both["calibration"]), 6),
            "member_folds": list(EXPERIMENTS["both"].folds),
            "check_subset": round_floats(check_subset),
            "heatmap_border": round_floats(border),
            "experiments": round_floats(report["experiments"]),
        }
    )
    metadata_path.write_text(json.dumps(metadata, indent=4) + "\n")
    draft.unlink(missing_ok=True)
    sign_weights(bundle_dir, model.state_dict())
    founding = report["experiments"].get("founding")
    curves = {
        "MedCNN, Kermany test": (test_labels, test_probability),
        "MedCNN, NIH 5-fold CV": (nih_labels, nih_probability),
    }
    if founding is not None:
        founding_logits = member_logits(run_dir, "founding")
        calibrated = np.mean(
            [calibrate(v, tuple(founding["calibration"])) for v in founding_logits.values()], axis=0
        )
        test_mask = cache.split == "test"
        curves["founding CNN, Kermany test"] = (
            cache.labels.numpy()[test_mask],
            calibrated[test_mask],
        )
    plot_curves(curves, bundle_dir / "docs" / "images", threshold)
    write_report(
        {"eval_metrics": eval_metrics, **report, "heatmap_border": border},
        run_dir / "release_report.json",
    )
    return json.loads(metadata_path.read_text())  # as signed
