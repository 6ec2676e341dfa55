"""Cross-validated evaluation: each nodule judged by the fold model that never saw its patient.

The numbers come from the same inference path a user's click takes (the checks, the patch, the
context-box passes), on the volumes of interest, so what is reported is what is shipped. A
nodule whose point a click would refuse (``medcnn.nodule.checks``: outside its scan, say) is not
judged but listed with the reason: scoring it would count a prediction no user can get.
NoduleMNIST3D's test split goes through the same path, for the MedMNIST table's AUC and accuracy.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medcnn.errors import UsageError
from medcnn.nodule.grouped import GroupedEnsemble
from medcnn.nodule.inference import predict
from medcnn.nodule.measure import longest_axial_diameter_mm, nodule_on_scan, volume_ml
from medcnn.nodule.preprocessing import PatchSpec, patch_to_scan, sample_patch
from medcnn.outputs.writing import check_output_folder, output_folder
from medcnn.training.data.lidc import NO_FOLD, NoduleCase, split_refused
from medcnn.training.metrics import (
    bootstrap_interval,
    brier_score,
    dice,
    expected_calibration_error,
    log_loss,
    reliability_bins,
    roc_auc,
    roc_curve,
    threshold_metrics,
)
from medcnn.volume import Volume

if TYPE_CHECKING:
    from medcnn.app.analysis import Analyzer

EPS = 1e-6
log = logging.getLogger(__name__)


def evaluate_case(engine: GroupedEnsemble, case: NoduleCase, spec: PatchSpec) -> dict:
    """Probability, logit and segmentation quality for one nodule."""
    patch = sample_patch(case.image, case.center_ras, spec)
    prediction = predict(engine, patch, spec)
    seg = patch_to_scan(prediction.segmentation, patch, case.image, spec)
    nodule = nodule_on_scan(seg, case.image, seg.world_to_index(case.center_ras[None])[0])
    full = np.zeros(case.image.shape, dtype=bool)
    full[case.image.block_slices(seg)] = nodule
    p = float(np.clip(prediction.probability, EPS, 1 - EPS))
    return {
        "name": case.name,
        "patient_id": case.patient_id,
        "fold": case.fold,
        "rating": case.rating,
        "label": case.binary_label,
        "probability": p,
        "uncertainty": prediction.uncertainty,
        "logit": float(np.log(p / (1 - p))),
        "member_features": prediction.member_features.tolist(),
        "dice": None if case.mask is None else dice(full, case.mask.array > 0),
        "diameter_mm": longest_axial_diameter_mm(Volume(full.astype(np.uint8), case.image.affine)),
        "reader_diameter_mm": case.diameter_mm,
        "volume_ml": volume_ml(Volume(full.astype(np.uint8), case.image.affine)),
    }


def _with_progress(cases: list[NoduleCase], progress: bool) -> Iterable[NoduleCase]:
    if not progress:
        return cases
    from tqdm import tqdm

    return tqdm(cases, desc="evaluating", unit="nodule")


def out_of_fold(
    engine: GroupedEnsemble,
    member_folds: list[int],
    cases: list[NoduleCase],
    spec: PatchSpec,
    progress: bool = False,
) -> list[dict]:
    """Every case judged by the members whose training left out the case's fold."""
    rows = []
    iterator = _with_progress(cases, progress)
    views = {
        fold: engine.subset([i for i, f in enumerate(member_folds) if f == fold])
        for fold in set(member_folds)
    }
    for case in iterator:
        if case.fold not in views:
            continue
        rows.append(evaluate_case(views[case.fold], case, spec))
    return rows


def evaluate_cases(
    engine: GroupedEnsemble,
    cases: list[NoduleCase],
    spec: PatchSpec,
    progress: bool = False,
) -> list[dict]:
    """Every case judged by the whole model: for a held-out split that no member has seen."""
    return [evaluate_case(engine, case, spec) for case in _with_progress(cases, progress)]


def summarize_benchmark(rows: list[dict], threshold: float) -> dict:
    """A held-out split's numbers as the MedMNIST table reports them (AUC, accuracy), and more."""
    labels = np.array([r["label"] for r in rows], bool)
    probs = np.array([r["probability"] for r in rows])
    return {
        "n_nodules": len(rows),
        "n_malignant": int(labels.sum()),
        "auc": roc_auc(labels, probs),
        "threshold": threshold,
        **threshold_metrics(labels, probs, threshold),
        "ece": expected_calibration_error(labels, probs),
        "brier": brier_score(labels, probs),
        "log_loss": log_loss(labels, probs),
        **mean_uncertainty(rows),
    }


def mean_uncertainty(rows: list[dict]) -> dict:
    """The members' mean spread, where more than one member judged each nodule.

    Out of fold, one member judges each nodule, so its spread is zero by construction: reporting
    that would read as a model that is always sure.
    """
    if not rows or any(len(r["member_features"]) < 2 for r in rows):
        return {}
    return {"mean_uncertainty": float(np.mean([r["uncertainty"] for r in rows]))}


def summarize(rows: list[dict], threshold: float) -> dict:
    """The bundle's reported metrics for the binary task (ratings 1-2 against 4-5).

    The AUC and the Brier score come with 95 % intervals over patients resampled; the ECE does
    not, since resampling adds binning noise of its own and its bootstrap sits above the ECE.
    """
    binary = [r for r in rows if r["label"] is not None]
    labels = np.array([r["label"] for r in binary], bool)
    probs = np.array([r["probability"] for r in binary])
    folds = sorted({r["fold"] for r in binary} - {NO_FOLD})
    per_fold = {
        str(f): roc_auc(
            labels[[r["fold"] == f for r in binary]], probs[[r["fold"] == f for r in binary]]
        )
        for f in folds
    }
    diam = np.array([r["reader_diameter_mm"] for r in binary], float)
    dices = [r["dice"] for r in rows if r["dice"] is not None]
    patients = [r["patient_id"] for r in binary]
    return {
        "n_nodules": len(rows),
        "n_binary": len(binary),
        "auc": roc_auc(labels, probs),
        "auc_ci95": bootstrap_interval(labels, probs, roc_auc, patients),
        "auc_per_fold": per_fold,
        "auc_worst_fold": min(per_fold.values()) if per_fold else None,
        "auc_reader_diameter": roc_auc(labels, diam) if np.isfinite(diam).all() else None,
        "threshold": threshold,
        **threshold_metrics(labels, probs, threshold),
        "ece": expected_calibration_error(labels, probs),
        "brier": brier_score(labels, probs),
        "brier_ci95": bootstrap_interval(labels, probs, brier_score, patients),
        "log_loss": log_loss(labels, probs),
        "dice_mean": float(np.mean(dices)) if dices else None,
        "dice_median": float(np.median(dices)) if dices else None,
        **mean_uncertainty(rows),
    }


def write_rows(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        {**r, "member_features": json.dumps(r["member_features"])} if "member_features" in r else r
        for r in rows
    ]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot_roc_and_reliability(
    rows: list[dict], out_dir: Path, threshold: float, held_out: bool = False
) -> list[Path]:
    """``roc.png`` and ``reliability.png`` for the README and the bundle's docs; the readers'
    diameter's curve beside the model's where every nodule has it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    binary = [r for r in rows if r["label"] is not None]
    labels = np.array([r["label"] for r in binary], bool)
    probs = np.array([r["probability"] for r in binary])
    diam = np.array([r["reader_diameter_mm"] for r in binary], float)
    judged = "held-out nodules, whole model" if held_out else "cross-validated"
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    fpr, tpr = roc_curve(labels, probs)
    ax.plot(fpr, tpr, lw=2, label=f"MedCNN (AUC {roc_auc(labels, probs):.3f})")
    if np.isfinite(diam).all():
        fpr_d, tpr_d = roc_curve(labels, diam)
        diameter_auc = roc_auc(labels, diam)
        ax.plot(fpr_d, tpr_d, lw=1, ls="--", label=f"readers' diameter ({diameter_auc:.3f})")
    at_threshold = threshold_metrics(labels, probs, threshold)
    ax.plot(
        1 - at_threshold["specificity"],
        at_threshold["sensitivity"],
        "o",
        color="black",
        label=f"threshold {threshold:.2f}",
    )
    ax.plot([0, 1], [0, 1], color="grey", lw=0.5)
    ax.set(
        xlabel="1 - specificity",
        ylabel="sensitivity",
        title="ROC (held-out nodules, whole model)"
        if held_out
        else "5-fold cross-validated ROC (LIDC-IDRI)",
    )
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    roc_path = out_dir / "roc.png"
    fig.savefig(roc_path)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    bins = [b for b in reliability_bins(labels, probs) if b["count"]]
    ax.plot([0, 1], [0, 1], color="grey", lw=0.5, label="perfect calibration")
    ax.plot(
        [b["predicted"] for b in bins],
        [b["observed"] for b in bins],
        "o-",
        label=(
            f"MedCNN (ECE {expected_calibration_error(labels, probs):.3f}, "
            f"Brier {brier_score(labels, probs):.3f})"
        ),
    )
    for b in bins:
        ax.annotate(
            str(b["count"]),
            (b["predicted"], b["observed"]),
            fontsize=7,
            textcoords="offset points",
            xytext=(4, -10),
        )
    ax.set(
        xlabel="predicted probability of malignancy",
        ylabel="observed fraction malignant",
        title=f"Reliability ({judged})",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    rel_path = out_dir / "reliability.png"
    fig.savefig(rel_path)
    plt.close(fig)
    return [roc_path, rel_path]


def json_safe(value: object) -> object:
    """NaN (a metric the nodules cannot give, as an AUC of one class) as null: strict JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and value != value:
        return None
    return value


def write_summary(summary: dict, path: Path) -> None:
    path.write_text(json.dumps(json_safe(summary), indent=2, allow_nan=False) + "\n")


def every_nth(cases: list[NoduleCase], every: int | None) -> list[NoduleCase]:
    """A fixed, reproducible subset (every n-th nodule of the table) for quick checks."""
    return cases if not every or every <= 1 else cases[::every]


class BundleEvaluator:
    """``evaluate.json``'s runner: the shipped model's cross-validated numbers and plots.

    ``held_out=True`` judges every nodule of a lidc_voi-style folder with the whole ensemble,
    as a click would: the test for nodules of patients that no member saw (another set, or a
    group's own data). ``source="nodulemnist3d"`` judges NoduleMNIST3D's test split
    (``data_dir`` is then the ``nodulemnist3d.npz``) with the whole model instead, and writes
    its AUC and accuracy.
    """

    def __init__(
        self,
        data_dir: Path | str,
        output_dir: Path | str,
        bundle_dir: Path | str | None = None,
        every: int | None = None,
        trusted: bool = False,
        progress: bool = True,
        source: str = "lidc",
        verify: bool = True,
        held_out: bool = False,
    ) -> None:
        self.data_dir, self.output_dir = Path(data_dir), Path(output_dir)
        self.bundle_dir, self.every, self.trusted = bundle_dir, every, trusted
        self.progress, self.source, self.verify = progress, source, verify
        self.held_out = held_out

    def run(self) -> dict:
        from medcnn.app.analysis import Analyzer
        from medcnn.training.data.lidc import load_cases

        analyzer = Analyzer(self.bundle_dir, trusted=self.trusted)
        if self.source == "nodulemnist3d":
            return self._run_nodulemnist3d(analyzer)
        cases, refused = split_refused(every_nth(load_cases(self.data_dir), self.every))
        for case in refused:
            log.warning("not judged: %s: %s", case["name"], case["reason"])
        check_output_folder(self.output_dir)
        if self.held_out:
            rows = evaluate_cases(analyzer.model, cases, analyzer.spec, progress=self.progress)
        else:
            rows = self._out_of_fold(analyzer, cases)
        summary: dict[str, Any] = {
            "judged_by": "ensemble" if self.held_out else "out_of_fold_member"
        }
        summary.update(summarize(rows, analyzer.threshold))
        summary["n_refused"], summary["refused"] = len(refused), refused
        output_folder(self.output_dir)
        write_rows(rows, self.output_dir / "predictions.csv")
        write_summary(summary, self.output_dir / "metrics.json")
        plot_roc_and_reliability(rows, self.output_dir, analyzer.threshold, self.held_out)
        return summary

    def _out_of_fold(self, analyzer: Analyzer, cases: list[NoduleCase]) -> list[dict]:
        from medcnn.bundle import read_metadata

        folds = read_metadata(analyzer.bundle_dir)["medcnn"]["member_folds"]
        if not folds:
            raise UsageError(
                f"The bundle {analyzer.bundle_dir} was not trained on lidc_voi's patient folds, "
                "so it has no cross-validated LIDC numbers; evaluate it on its own source "
                "(--source nodulemnist3d for a NoduleMNIST3D model) or with --held-out."
            )
        if not any(case.fold in folds for case in cases):
            raise UsageError(
                f"No nodule in {self.data_dir} belongs to the patient folds the members were "
                f"trained on ({', '.join(map(str, sorted(set(folds))))}); for nodules of other "
                "patients, judge them with the whole model: add --held-out."
            )
        return out_of_fold(analyzer.model, folds, cases, analyzer.spec, progress=self.progress)

    def _run_nodulemnist3d(self, analyzer: Analyzer) -> dict:
        from medcnn.bundle import read_metadata
        from medcnn.training.data.nodulemnist import load_nodulemnist3d

        splits = load_nodulemnist3d(self.data_dir, analyzer.spec, verify=self.verify)
        cases = every_nth(splits["test"], self.every)
        check_output_folder(self.output_dir)
        rows = evaluate_cases(analyzer.model, cases, analyzer.spec, progress=self.progress)
        summary = {
            "source": "nodulemnist3d",
            "split": "test",
            **summarize_benchmark(rows, analyzer.threshold),
        }
        trained_on = read_metadata(analyzer.bundle_dir)["medcnn"].get("training_source", "lidc")
        if trained_on != "nodulemnist3d":
            summary["warning"] = (
                "This model was trained on LIDC-IDRI, which NoduleMNIST3D is cut from: its test "
                "nodules may be among the model's training nodules, so this is not an independent "
                "test."
            )
        output_folder(self.output_dir)
        write_rows(rows, self.output_dir / "predictions.csv")
        write_summary(summary, self.output_dir / "metrics.json")
        return summary
