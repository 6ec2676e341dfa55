"""The radiograph model's training runs: the release's members and the comparisons the model
card reports, each a set of members trained by ``train_member``.

- ``both``: MedCNN's network on children and adults, one member per patient fold; these five
  members are the released ensemble, and their out-of-fold predictions its cross-validation.
- ``founding``: the founding document's network, same data, folds and recipe: the baseline.
- ``children``: MedCNN's network on Kermany's children only, judged on every NIH adult.
- ``adults``: MedCNN's network on the NIH adults only, per fold, judged on Kermany's test split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from medcnn.bundle import network_arguments
from medcnn.xray.training.training import (
    RadiographAugmentation,
    RadiographRecipe,
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


def load_recipe(bundle_dir: Path, overrides: dict | None = None) -> RadiographRecipe:
    """``train.json``'s ``settings``, single entries overridden (``--epochs``)."""
    settings = {**read_config(bundle_dir, "train.json")["settings"], **(overrides or {})}
    settings["augmentation"] = RadiographAugmentation(**settings["augmentation"])
    return RadiographRecipe(**settings)


def network_args(bundle_dir: Path) -> dict:
    """A member's arguments: the bundle's ``network_def``'s, less the number of members."""
    values = network_arguments(bundle_dir)
    return {"channels": tuple(values["channels"]), "dropout": float(values["dropout"])}


def member_dir(run_dir: Path, experiment: str, fold: int | None) -> Path:
    return run_dir / experiment / ("all" if fold is None else f"fold{fold}")
