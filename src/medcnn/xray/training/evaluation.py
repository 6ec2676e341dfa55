"""Judging chest radiographs through the click's own path: reader, preprocessing, ensemble.

Used by the release (Kermany's test split, the NIH folds) and by
``medcnn evaluate --model chest_xray_pneumonia --data DIR [--held-out]``, where ``DIR`` is laid
out like ``xray/nih``: ``labels.csv`` with ``image`` (relative to ``DIR``), ``label``
(``pneumonia``, or anything else for no pneumonia; 1/0 also read), optional ``patient_id`` and
``fold``. Without ``--held-out`` each radiograph is judged by the member that never saw its
fold (cross-validation of the training data: ``xray/nih`` itself); with it, by the whole
ensemble, as a click (radiographs of other patients).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medcnn.catalog import read_metadata
from medcnn.errors import InputNotFoundError, MedCNNError, UsageError
from medcnn.outputs.render import save_figure
from medcnn.reading.radiograph import read_radiograph
from medcnn.training.metrics import (
    bootstrap_interval,
    brier_score,
    expected_calibration_error,
    reliability_bins,
    roc_auc,
    roc_curve,
    threshold_metrics,
)
from medcnn.xray.inference import predict_radiographs
from medcnn.xray.network import RadiographEnsemble
from medcnn.xray.preprocessing import RadiographSpec

BATCH = 32
POSITIVE = ("pneumonia", "1", "true", "yes")


@dataclass(frozen=True)
class LabelledRadiograph:
    path: Path
    label: int
    patient: str
    fold: int = -1


def read_labels(data_dir: Path) -> list[LabelledRadiograph]:
    """The radiographs of a folder's ``labels.csv``."""
    path = Path(data_dir) / "labels.csv"
    if not path.is_file():
        raise InputNotFoundError(
            f"{path} does not exist; a radiograph folder needs labels.csv with the columns "
            "image and label (and optionally patient_id)."
        )
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"image", "label"} <= set(rows[0]):
        raise UsageError(f"{path} needs the columns image and label; add them.")
    return [
        LabelledRadiograph(
            path=Path(data_dir) / row["image"],
            label=int(row["label"].strip().lower() in POSITIVE),
            patient=row.get("patient_id") or row["image"],
            fold=int(row["fold"]) if row.get("fold", "").strip().isdigit() else -1,
        )
        for row in rows
    ]


def member_probabilities(
    model: RadiographEnsemble, spec: RadiographSpec, records: list[LabelledRadiograph]
) -> tuple[np.ndarray, list[str]]:
    """(images, members) calibrated probabilities through the click's path, and per image the
    error that stopped it ("" if none; its row is NaN)."""
    out = np.full((len(records), len(model.members)), np.nan)
    errors = [""] * len(records)
    for start in range(0, len(records), BATCH):
        chunk = list(range(start, min(start + BATCH, len(records))))
        read = []
        for i in chunk:
            try:
                read.append((i, read_radiograph(records[i].path)))
            except MedCNNError as error:
                errors[i] = str(error)
        if read:
            predictions = predict_radiographs(model, [r for _, r in read], spec)
            for (i, _), prediction in zip(read, predictions, strict=True):
                out[i] = prediction.member_probabilities
    return out, errors


def judged(
    members: np.ndarray, records: list[LabelledRadiograph], member_folds: list[int] | None
) -> np.ndarray:
    """Each radiograph's probability: the ensemble's mean, or with ``member_folds`` (the fold
    each member was held out of) the one member that never saw the radiograph's fold."""
    if member_folds is None:
        return members.mean(axis=1)
    column = {fold: index for index, fold in enumerate(member_folds)}
    return np.array([row[column[r.fold]] for row, r in zip(members, records, strict=True)])


def per_fold(labels: np.ndarray, probabilities: np.ndarray, folds: np.ndarray) -> dict:
    """ROC AUC per patient fold and the worst, as cross-validation reports them."""
    aucs = {
        str(f): roc_auc(labels[folds == f].astype(bool), probabilities[folds == f])
        for f in sorted(set(folds.tolist()))
    }
    return {"auc_per_fold": aucs, "auc_worst_fold": min(aucs.values())}


def summarize(
    labels: np.ndarray, probabilities: np.ndarray, patients: list[str], threshold: float
) -> dict:
    """AUC with a 95 % patient-bootstrap interval, the calls at the threshold, calibration."""
    labels = np.asarray(labels, bool)
    return {
        "n": int(len(labels)),
        "n_pneumonia": int(labels.sum()),
        "auc": roc_auc(labels, probabilities),
        "auc_ci95": bootstrap_interval(labels, probabilities, roc_auc, patients),
        "threshold": threshold,
        **threshold_metrics(labels, probabilities, threshold),
        "brier": brier_score(labels, probabilities),
        "ece": expected_calibration_error(labels, probabilities),
    }


def plot_curves(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], out_dir: Path, threshold: float
) -> list[Path]:
    """``roc.png`` and ``reliability.png`` of one or more labelled sets (name to labels and
    probabilities)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(4.8, 4.5), dpi=120)
    for name, (labels, probs) in curves.items():
        fpr, tpr = roc_curve(labels.astype(bool), probs)
        ax.plot(fpr, tpr, lw=2, label=f"{name} (AUC {roc_auc(labels.astype(bool), probs):.3f})")
        at = threshold_metrics(labels, probs, threshold)
        ax.plot(1 - at["specificity"], at["sensitivity"], "o", color="black", ms=4)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.5)
    ax.set(
        xlabel="1 - specificity",
        ylabel="sensitivity",
        title=f"ROC (dots: threshold {threshold:.2f})",
    )
    ax.legend(loc="lower right", fontsize=7)
    roc_path = save_figure(fig, out_dir / "roc.png")
    fig, ax = plt.subplots(figsize=(4.8, 4.5), dpi=120)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.5, label="perfect calibration")
    for name, (labels, probs) in curves.items():
        bins = [b for b in reliability_bins(labels, probs) if b["count"]]
        ax.plot(
            [b["predicted"] for b in bins],
            [b["observed"] for b in bins],
            "o-",
            label=f"{name} (Brier {brier_score(labels.astype(bool), probs):.3f})",
        )
    ax.set(
        xlabel="predicted probability of pneumonia",
        ylabel="observed fraction pneumonia",
        title="Reliability",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.legend(loc="upper left", fontsize=7)
    reliability_path = save_figure(fig, out_dir / "reliability.png")
    return [roc_path, reliability_path]


def evaluate_folder(
    data_dir: Path,
    out_dir: Path,
    model: RadiographEnsemble,
    spec: RadiographSpec,
    threshold: float,
    member_folds: list[int] | None = None,
) -> dict:
    """The ensemble on a labelled folder, or with ``member_folds`` each radiograph judged by
    the member held out of its fold (cross-validation): ``metrics.json``, ``predictions.csv``,
    ``roc.png`` and ``reliability.png`` in ``out_dir``."""
    records = read_labels(data_dir)
    if member_folds is not None:
        unknown = sorted({r.fold for r in records} - set(member_folds))
        if unknown:
            raise UsageError(
                f"{Path(data_dir) / 'labels.csv'} has radiographs of folds {unknown}, of which "
                "no member was held out; give the training folds in its fold column, or "
                "--held-out for radiographs of other patients."
            )
    members, errors = member_probabilities(model, spec, records)
    probability = judged(members, records, member_folds)
    finite = np.isfinite(probability)
    labels = np.array([r.label for r in records])
    metrics = summarize(
        labels[finite],
        probability[finite],
        [r.patient for r, j in zip(records, finite, strict=True) if j],
        threshold,
    )
    metrics["not_judged"] = int((~finite).sum())
    metrics["judged_by"] = "ensemble" if member_folds is None else "out_of_fold_member"
    if member_folds is not None:
        folds = np.array([r.fold for r in records])
        metrics.update(per_fold(labels[finite], probability[finite], folds[finite]))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "predictions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "patient_id", "label", "probability", "uncertainty", "error"])
        for record, row, value, error in zip(records, members, probability, errors, strict=True):
            finite = bool(np.isfinite(value))
            writer.writerow(
                [
                    record.path.relative_to(data_dir),
                    record.patient,
                    record.label,
                    f"{value:.6f}" if finite else "",
                    f"{row.std():.6f}" if finite else "",
                    error,
                ]
            )
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    name = "whole ensemble" if member_folds is None else "out-of-fold members"
    plot_curves({name: (labels[finite], probability[finite])}, out_dir, threshold)
    return metrics


class FolderEvaluator:
    """``evaluate.json``'s runner and ``medcnn evaluate --model chest_xray_pneumonia``: the
    shipped ensemble on a labelled folder, as a click judges each radiograph."""

    def __init__(
        self,
        data_dir: Path | str,
        output_dir: Path | str,
        bundle_dir: Path | str | None = None,
        trusted: bool = False,
        held_out: bool = False,
    ) -> None:
        self.data_dir, self.output_dir = Path(data_dir), Path(output_dir)
        self.bundle_dir, self.trusted, self.held_out = bundle_dir, trusted, held_out

    def run(self) -> dict:
        from medcnn.xray.analysis import RadiographAnalyzer

        analyzer = RadiographAnalyzer(self.bundle_dir, trusted=self.trusted)
        folds = None
        if not self.held_out:
            folds = read_metadata(analyzer.bundle_dir)["medcnn"]["member_folds"]
        return evaluate_folder(
            self.data_dir,
            self.output_dir,
            analyzer.model,
            analyzer.spec,
            analyzer.threshold,
            folds,
        )
