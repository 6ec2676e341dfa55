"""Turn the five trained fold models into the shipped bundle: ensemble, combining head,
weights, SHA-256 and the measured numbers in ``metadata.json``, ROC and reliability plots."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from medcnn.bundle import load_patch_spec, sign_weights, verified_weights_path
from medcnn.nodule.grouped import GroupedEnsemble
from medcnn.nodule.network import NoduleEnsemble
from medcnn.nodule.preprocessing import PatchSpec
from medcnn.training.calibration import (
    ensemble_probabilities,
    fit_logistic,
    install_head,
    member_rows,
    nested_head_probabilities,
)
from medcnn.training.data.lidc import load_cases, split_refused
from medcnn.training.evaluation import (
    every_nth,
    out_of_fold,
    plot_roc_and_reliability,
    summarize,
    write_rows,
)

log = logging.getLogger(__name__)
THRESHOLD = 0.5
CHECK_EVERY = 8  # the fixed subset (every 8th nodule) that the tests re-evaluate


def assemble(
    run_dirs: list[Path], folds: list[int], spec: PatchSpec
) -> tuple[NoduleEnsemble, list[int]]:
    """All fold models of all runs (seeds) as one ensemble, and each member's held-out fold."""
    paths = [(Path(d) / f"fold{f}" / "model.pt", f) for d in run_dirs for f in folds]
    model = NoduleEnsemble(n_members=len(paths), hu_window=spec.hu_window)
    for member, (path, _) in zip(model.members, paths, strict=True):
        member.load_state_dict(torch.load(path, weights_only=True))
    return model.eval(), [f for _, f in paths]


def rounded(summary: dict) -> dict:
    return {
        k: (
            round(v, 4)
            if isinstance(v, float)
            else {kk: round(vv, 4) for kk, vv in v.items()}
            if isinstance(v, dict)
            else [round(vv, 4) for vv in v]
            if isinstance(v, list) and all(isinstance(vv, float) for vv in v)
            else v
        )
        for k, v in summary.items()
    }


def export_torchscript(bundle_dir: Path, target: Path | None = None) -> Path:
    """``models/model.ts`` (or ``target``) from ``models/model.pt``, MONAI's way (the bundle's
    ``network_def`` scripted), so the two never drift apart.

    The one TorchScript export (``medcnn export``): nothing MedCNN runs needs it, so bundles
    ship ``model.pt`` alone and ``model.ts`` is derived on demand, from verified weights only.
    """
    from monai.bundle import ckpt_export

    verified_weights_path(bundle_dir)
    target = target or bundle_dir / "models" / "model.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(target),
        ckpt_file=str(bundle_dir / "models" / "model.pt"),
        meta_file=str(bundle_dir / "configs" / "metadata.json"),
        config_file=str(bundle_dir / "configs" / "inference.json"),
    )
    return target


def build_release(
    run_dir: Path,
    data_dir: Path,
    bundle_dir: Path,
    folds: list[int] | None = None,
    limit: int | None = None,
    extra_run_dirs: list[Path] | None = None,
) -> dict:
    """``extra_run_dirs``: further trainings of the same folds (other seeds) to ensemble."""
    run_dir, bundle_dir = Path(run_dir), Path(bundle_dir)
    folds = folds or [0, 1, 2, 3, 4]
    spec = load_patch_spec(bundle_dir)
    model, member_folds = assemble([run_dir, *(extra_run_dirs or [])], folds, spec)
    cases = load_cases(Path(data_dir), cache_dir=None if limit else run_dir / "cache", limit=limit)
    checked = {c.name for c in every_nth(cases, CHECK_EVERY)}
    cases, refused = split_refused(cases)  # what a click refuses is neither judged nor fitted
    rows = out_of_fold(GroupedEnsemble.of(model), member_folds, cases, spec, progress=True)
    write_rows(rows, run_dir / "oof_raw.csv")
    nested = nested_head_probabilities(rows)
    binary = [r for r in rows if r["label"] is not None]
    head = fit_logistic(*member_rows(binary))
    install_head(model, head)
    shipped = [
        {**r, "probability": float(p)}
        for r, p in zip(rows, ensemble_probabilities(head, rows), strict=True)
    ]
    sign_weights(bundle_dir, model.state_dict())
    summary = {
        "shipped": rounded(summarize(shipped, THRESHOLD)),
        "nested": rounded(summarize(nested, THRESHOLD)),
        "head": {k: np.round(v, 4).tolist() for k, v in head.items()},
        "refused": refused,
    }
    metadata_path = bundle_dir / "configs" / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    metadata.setdefault("medcnn", {}).update({"member_folds": member_folds, "threshold": THRESHOLD})
    metadata["medcnn"]["check_subset"] = {
        "every": CHECK_EVERY,
        **rounded(summarize([r for r in shipped if r["name"] in checked], THRESHOLD)),
    }
    inference_path = bundle_dir / "configs" / "inference.json"
    inference = json.loads(inference_path.read_text())
    inference["network_def"]["n_members"] = len(member_folds)
    inference_path.write_text(json.dumps(inference, indent=4) + "\n")
    metadata["eval_metrics"] = summary["shipped"]
    metadata["eval_metrics_nested_head"] = summary["nested"]
    metadata["medcnn"]["not_judged"] = [{k: r[k] for k in ("name", "reason")} for r in refused]
    metadata_path.write_text(json.dumps(metadata, indent=4) + "\n")
    plot_roc_and_reliability(nested, bundle_dir / "docs" / "images", THRESHOLD)
    write_rows(nested, run_dir / "oof_nested.csv")
    (run_dir / "release_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
