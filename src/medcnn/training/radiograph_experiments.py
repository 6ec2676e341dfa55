"""The radiograph model's training runs: the release's members and the comparisons the model
card reports, each a set of members trained by ``train_member``.

- ``both``: MedCNN's network on children and adults, one member per patient fold; these five
  members are the released ensemble, and their out-of-fold predictions its cross-validation.
- ``founding``: the founding document's network, same data, folds and recipe: the baseline.
- ``children``: MedCNN's network on Kermany's children only, judged on every NIH adult.
- ``adults``: MedCNN's network on the NIH adults only, per fold, judged on Kermany's test split.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from medcnn.bundle import load_radiograph_spec, network_arguments
from medcnn.training.data.radiographs import build_cache
from medcnn.training.radiograph_training import (
    RadiographAugmentation,
    RadiographRecipe,
    train_member,
)

FOLDS = (0, 1, 2, 3, 4)


@dataclass(frozen=True)
class Experiment:
    architecture: str
    sources: tuple[str, ...]
    folds: tuple[int | None, ...]


EXPERIMENTS = {
    "both": Experiment("medcnn", ("kermany", "nih"), FOLDS),
    "founding": Experiment("founding", ("kermany", "nih"), FOLDS),
    "children": Experiment("medcnn", ("kermany",), (None,)),
    "adults": Experiment("medcnn", ("nih",), FOLDS),
}


def read_config(bundle_dir: Path, name: str) -> dict:
    return json.loads((bundle_dir / "configs" / name).read_text())


def load_recipe(bundle_dir: Path) -> RadiographRecipe:
    settings = dict(read_config(bundle_dir, "train.json")["settings"])
    settings["augmentation"] = RadiographAugmentation(**settings["augmentation"])
    return RadiographRecipe(**settings)


def network_args(bundle_dir: Path) -> dict:
    """A member's arguments: the bundle's ``network_def``'s, less the number of members."""
    values = network_arguments(bundle_dir)
    return {"channels": tuple(values["channels"]), "dropout": float(values["dropout"])}


def member_dir(run_dir: Path, experiment: str, fold: int | None) -> Path:
    return run_dir / experiment / ("all" if fold is None else f"fold{fold}")


def run(data_root: Path, run_dir: Path, bundle_dir: Path, names: list[str]) -> None:
    recipe = load_recipe(bundle_dir)
    spec = load_radiograph_spec(bundle_dir)
    cache = build_cache(data_root, spec, run_dir / f"cache-{spec.size}.npz")
    log_path = run_dir / "train.log"

    def log(line: str) -> None:
        stamped = f"{time.strftime('%H:%M:%S')} {line}"
        print(stamped, flush=True)
        with open(log_path, "a") as handle:
            handle.write(stamped + "\n")

    for name in names:
        experiment = EXPERIMENTS[name]
        for fold in experiment.folds:
            train_member(
                cache,
                member_dir(run_dir, name, fold),
                recipe,
                fold=fold,
                sources=experiment.sources,
                architecture=experiment.architecture,
                log=log,
                **network_args(bundle_dir),
            )
    log("all done")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("experiments", nargs="*", default=list(EXPERIMENTS))
    args = parser.parse_args(argv)
    run(args.data, args.run_dir, args.bundle, args.experiments)
    return 0


if __name__ == "__main__":
    sys.exit(main())
