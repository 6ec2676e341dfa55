"""The training recipe: the bundle's ``configs/train.json``, the one place its numbers live.

MONAI runs ``train.json`` itself (``python -m monai.bundle run --config_file train.json``);
``medcnn train`` reads the same file as plain JSON (``load_train_recipe``), never running its
``$`` expressions, and its options override single entries. ``TrainSettings`` and
``Augmentation`` have no defaults, so a number cannot be kept both in the file and in the code.
The patch geometry and HU window are not part of the recipe: they are the bundle's
``inference.json`` ``preprocessing`` (``medcnn.bundle.load_patch_spec``), which a click uses too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from medcnn.bundle import default_bundle_dir, load_patch_spec
from medcnn.errors import ModelIntegrityError, UsageError
from medcnn.nodule.preprocessing import PatchSpec
from medcnn.training.augmentation import Augmentation


@dataclass
class TrainSettings:
    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    rating3_weight: float
    aux_weight: float
    seg_weight: float
    # Off in the shipped recipe: on folds 0 and 1 it gave better descriptor estimates but a
    # weaker malignancy logit and Dice (monai_bundle/lung_nodule_ct/docs/README.md, Training).
    scaled_aux: bool
    # The malignancy loss sees the logit plus what the consensus mask's measurements say
    # (medcnn.training.residual_logit), so the logit learns what they miss. Release 0.3.0 on.
    measured_offset: bool
    seed: int
    max_steps_per_epoch: int | None
    # None (the shipped recipe): the threads the process has (medcnn.threads: MedCNN's choice
    # or the user's OMP_NUM_THREADS); a number fixes training's count, shared among ranks.
    threads: int | None
    spec: PatchSpec
    augmentation: Augmentation

    def __post_init__(self) -> None:
        """Refuse, before anything trains, counts that could not work (`--epochs 0`, say)."""
        least = {
            "epochs": (1, " (--epochs)"),
            "batch_size": (2, ""),
            "seed": (0, " (--seeds)"),
            "threads": (1, ""),
            "max_steps_per_epoch": (1, " (--max-steps)"),
        }
        for name, (smallest, option) in least.items():
            value = getattr(self, name)
            if value is not None and value < smallest:
                raise UsageError(
                    f"Training's {name}{option} must be {smallest} or more, not {value}."
                )


@dataclass(frozen=True)
class TrainRecipe:
    """``train.json`` as ``medcnn train`` uses it: the settings and what to train on."""

    settings: TrainSettings
    folds: list[int]
    seeds: list[int]
    limit: int | None
    data_dir: Path
    run_dir: Path


# The JSON types each annotation accepts; bool is not a number here, though Python says it is.
_ACCEPTS: dict[str, tuple[str, ...]] = {
    "int": ("int",),
    "float": ("int", "float"),
    "bool": ("bool",),
    "int | None": ("int", "None"),
    "tuple[float, float]": ("pair",),
    "list[int]": ("ints",),
}


def _kind(value: object) -> str:
    if value is None:
        return "None"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, list) and all(_kind(v) == "int" for v in value) and value:
        return "ints"
    if (
        isinstance(value, list)
        and len(value) == 2
        and all(_kind(v) in ("int", "float") for v in value)
    ):
        return "pair"
    return type(value).__name__


def _entries(section: object, names: dict[str, str], where: str, path: Path) -> dict[str, Any]:
    """Each named entry of a section, after checking it is there and of its type."""
    if not isinstance(section, dict):
        raise ModelIntegrityError(f"The bundle's {path} has no {where} section; restore it.")
    values = {}
    for name, annotation in names.items():
        if name not in section:
            raise ModelIntegrityError(
                f"The bundle's {path} lacks {where}{name}; write it there (the shipped "
                "bundle's train.json has every entry)."
            )
        value = section[name]
        if _kind(value) not in _ACCEPTS[annotation]:
            raise ModelIntegrityError(
                f"The bundle's {path} gives {where}{name} as {value!r}, not {annotation}; "
                "write that there."
            )
        values[name] = tuple(value) if annotation.startswith("tuple") else value
    return values


def load_train_recipe(
    bundle_dir: Path | str | None = None, overrides: dict[str, Any] | None = None
) -> TrainRecipe:
    """The bundle's ``train.json`` read as plain JSON: every entry must be there, as a literal
    of its type (a ``$`` expression is refused, not run); the spec is the bundle's
    preprocessing. ``overrides`` replace settings (``{"epochs": 1}``, a command-line option)
    before they are checked, so an option can stand in for a number that could not train."""
    bundle_dir = Path(bundle_dir) if bundle_dir else default_bundle_dir()
    path = bundle_dir / "configs" / "train.json"
    try:
        config = json.loads(path.read_text())
        if not isinstance(config, dict):
            raise TypeError("it is not a section of entries")
    except (OSError, json.JSONDecodeError, TypeError) as error:
        raise ModelIntegrityError(
            f"The bundle's {path} cannot be read ({error}); reinstall MedCNN."
        ) from error
    section = config.get("settings")
    plain = {
        f.name: str(f.type) for f in fields(TrainSettings) if f.name not in ("spec", "augmentation")
    }
    settings = _entries(section, plain, "settings.", path)
    augmentation = _entries(
        section.get("augmentation"),  # type: ignore[union-attr]
        {f.name: str(f.type) for f in fields(Augmentation)},
        "settings.augmentation.",
        path,
    )
    top = _entries(
        config,
        {"folds": "list[int]", "seeds": "list[int]", "limit": "int | None"},
        "",
        path,
    )
    for name in ("data_dir", "run_dir"):
        if not isinstance(config.get(name), str):
            raise ModelIntegrityError(
                f"The bundle's {path} gives {name} as {config.get(name)!r}, not a folder; "
                "write the folder's path there."
            )
    return TrainRecipe(
        settings=TrainSettings(
            **{
                **settings,
                "spec": load_patch_spec(bundle_dir),
                "augmentation": Augmentation(**augmentation),
                **(overrides or {}),
            }
        ),
        folds=top["folds"],
        seeds=top["seeds"],
        limit=top["limit"],
        data_dir=Path(config["data_dir"]),
        run_dir=Path(config["run_dir"]),
    )


def load_train_settings(bundle_dir: Path | str | None = None, **overrides: Any) -> TrainSettings:
    """The bundle's training settings, with some entries overridden (``epochs=1``, say)."""
    return load_train_recipe(bundle_dir, overrides).settings
