"""The chest X-ray model's part of ``medcnn demo``, ``medcnn train`` and ``medcnn evaluate``.

The bundle names this class (``inference.json``'s ``commands``), so the command line runs a
model's demo, training and evaluation without knowing the model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medcnn.app.engine import Engine
from medcnn.catalog import model_of
from medcnn.outputs.result import Result
from medcnn.xray.phantom import ensure_radiograph_phantom
from medcnn.xray.training.experiments import read_config


class RadiographCommands:
    """``medcnn demo``/``train``/``evaluate`` for the chest X-ray model."""

    def __init__(self, bundle_dir: Path) -> None:
        self.bundle_dir = Path(bundle_dir)  # the model's installed bundle
        self.model = model_of(self.bundle_dir)

    def demo(self, engine: Engine, out: Path) -> list[str]:
        """Analyse the synthetic radiograph; the lines that tell what came out."""
        image = ensure_radiograph_phantom()
        result: Result = engine.analyze_file(image, None, out / "chest_xray", overlay=True)
        return [
            f"Synthetic chest radiograph, {self.model} model (a drawing: its answer shows the",
            "  mechanics, not the model's accuracy):",
            f"  input (PNG): {image}",
            f"  {result.answer_line()}",
            f"  outputs: {result.output_paths(out / 'chest_xray')}",
        ]

    def train(self, args: argparse.Namespace) -> int:
        from medcnn.xray.training.trainer import RadiographTraining

        bundle = self.bundle_dir
        config = read_config(bundle, "train.json")
        overrides = {"epochs": args.epochs} if args.epochs is not None else {}
        run_dir = args.run_dir or Path(config["run_dir"])
        metadata = RadiographTraining(
            args.data or Path(config["data_root"]),
            run_dir,
            bundle,
            args.release_dir or run_dir / "bundle",
            args.experiments or (),
            overrides,
        ).run()
        if metadata:  # under torchrun, rank 0 releases and reports
            print(json.dumps(metadata["eval_metrics"], indent=2))
        return 0

    def evaluate(self, args: argparse.Namespace) -> int:
        from medcnn.training.evaluation import json_safe
        from medcnn.xray.training.evaluation import FolderEvaluator

        data = args.data or Path(read_config(self.bundle_dir, "evaluate.json")["data_dir"])
        metrics = FolderEvaluator(
            data, args.out, args.bundle, args.trust_bundle, held_out=args.held_out
        ).run()
        print(json.dumps(json_safe(metrics), indent=2))
        print(f"metrics.json, predictions.csv, roc.png and reliability.png in {args.out}")
        return 0
