"""The lung nodule model's part of ``medcnn demo``, ``medcnn train`` and ``medcnn evaluate``.

The bundle names this class (``inference.json``'s ``commands``), so the command line runs a
model's demo, training and evaluation without knowing the model. Imported by the command line
for its defaults, so it loads nothing heavy until a command runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from medcnn.catalog import model_of
from medcnn.errors import UsageError

if TYPE_CHECKING:
    from medcnn.app.engine import Engine

LIDC_DATA = Path("../shared/data/lidc_voi")


def nodule_data(args: argparse.Namespace) -> Path:
    """The nodules to train on or judge: ``--data``, or lidc_voi where it lies beside a clone."""
    if args.data is not None:
        return Path(args.data)
    if args.source == "nodulemnist3d":
        raise UsageError(
            "--source nodulemnist3d needs --data PATH/TO/nodulemnist3d.npz (download it from "
            "https://medmnist.com)."
        )
    return LIDC_DATA


class NoduleCommands:
    """``medcnn demo``/``train``/``evaluate`` for the lung nodule model."""

    def __init__(self, bundle_dir: Path) -> None:
        self.bundle_dir = Path(bundle_dir)  # the model's installed bundle
        self.model = model_of(self.bundle_dir)

    def demo(self, engine: Engine, out: Path) -> list[str]:
        """Analyse the CT phantom's nodule; the lines that tell what came out."""
        from medcnn.app.demo import ensure_phantom

        phantom = ensure_phantom()
        out = out / "ct_nodule"
        result = engine.analyze_file(
            phantom["dicom_dir"], phantom["nodule_center_ras"], out, overlay=True
        )
        point = [round(v, 1) for v in phantom["nodule_center_ras"]]
        return [
            f"CT phantom, {self.model} model:",
            f"  input (DICOM series): {phantom['dicom_dir']}",
            f"  input (NIfTI):        {phantom['nifti']}",
            f"  point (RAS mm):       {point}",
            f"  {result.answer_line()}",
            f"  outputs: {result.output_paths(out)}",
            "  In 3D Slicer: File > Add Data, choose the phantom NIfTI, heatmap.nii.gz and "
            "segmentation.nii.gz (tick 'LabelMap' for the segmentation); in the slice views set "
            "the heatmap as foreground with the 'Inferno' or 'Hot' colour map.",
        ]

    def train(self, args: argparse.Namespace) -> int:
        from medcnn.training.loop import CrossValidationTrainer, NoduleMNISTTrainer
        from medcnn.training.recipe import load_train_recipe

        options = {"epochs": args.epochs, "max_steps_per_epoch": args.max_steps}
        recipe = load_train_recipe(  # train.json; the options given override it
            self.bundle_dir, {k: v for k, v in options.items() if v is not None}
        )
        settings = recipe.settings
        limit = recipe.limit if args.limit is None else args.limit
        if args.source == "lidc" and args.data is None:
            args.data = recipe.data_dir
        data = nodule_data(args)
        if args.source == "nodulemnist3d":
            run_dir = args.run_dir or Path("runs/nodulemnist3d")
            release_dir = args.release_dir or run_dir / "bundle"
            summary = NoduleMNISTTrainer(
                data,
                run_dir,
                settings,
                release_dir=release_dir,
                bundle_dir=self.bundle_dir,
                limit=limit,
                verify=not args.no_verify,
            ).run()
            print(json.dumps(summary["validation"], indent=2))
            print(
                f"validation split above; for the test split: medcnn evaluate --source "
                f"nodulemnist3d --data {data} --bundle {release_dir} --trust-bundle"
            )
            return 0
        run_dir = args.run_dir or recipe.run_dir
        trainer = CrossValidationTrainer(
            data,
            run_dir,
            recipe.folds if args.folds is None else args.folds,
            settings,
            release_dir=args.release_dir or run_dir / "bundle",
            bundle_dir=self.bundle_dir,
            limit=limit,
            seeds=recipe.seeds if args.seeds is None else args.seeds,
        )
        summary = trainer.run()
        print(json.dumps(summary["nested"], indent=2))
        return 0

    def evaluate(self, args: argparse.Namespace) -> int:
        from medcnn.training.evaluation import BundleEvaluator, json_safe

        summary = BundleEvaluator(
            nodule_data(args),
            args.out,
            args.bundle,
            every=args.every,
            trusted=args.trust_bundle,
            source=args.source,
            verify=not args.no_verify,
            held_out=args.held_out,
        ).run()
        print(json.dumps(json_safe(summary), indent=2))
        if args.source == "nodulemnist3d":
            print(f"metrics.json and predictions.csv in {args.out}")
        else:
            print(f"metrics, predictions, roc.png and reliability.png in {args.out}")
        return 0
