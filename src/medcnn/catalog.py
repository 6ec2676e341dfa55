"""The installed models: where their bundles are and what each says of itself.

Only the standard library: the worker announces the models in its first line, before torch is
imported, and ``medcnn models`` lists them without loading one. A model's facts (its name, its
task, whether it needs a point, the words of its answer) are its bundle's ``metadata.json``,
read here, so a new model brings them in its bundle and no code lists the models.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medcnn.errors import ModelIntegrityError

# The shipped models, each a bundle folder of this name in the bundles folder.
NODULE_MODEL = "lung_nodule_ct"
XRAY_MODEL = "chest_xray_pneumonia"


def bundles_dir() -> Path:
    """The folder of the shipped bundles: inside the package where it is installed (a wheel
    or sdist puts them there, setup.py; so does the Slicer extension's build), else beside
    the source tree of a checkout (``monai_bundle/``, their one copy in the repository)."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "monai_bundle", package.parents[1] / "monai_bundle"):
        if any(candidate.glob("*/configs/metadata.json")):
            return candidate
    raise ModelIntegrityError(
        "The MedCNN model bundles were not found; reinstall MedCNN or set MEDCNN_BUNDLE to a "
        "model's bundle folder."
    )


def installed_models() -> dict[str, Path]:
    """Each shipped model's name and bundle folder, in name order."""
    return {
        folder.name: folder
        for folder in sorted(bundles_dir().iterdir())
        if (folder / "configs" / "metadata.json").exists()
    }


def model_of(bundle_dir: Path) -> str:
    """The model a bundle is (``metadata.json``'s ``medcnn.model``); bundles that do not say
    are of the lung nodule model, the only one before release 0.5."""
    try:
        return str(read_metadata(bundle_dir).get("medcnn", {}).get("model", NODULE_MODEL))
    except ModelIntegrityError:
        return NODULE_MODEL


def default_bundle_dir(model: str = NODULE_MODEL) -> Path:
    """The bundle of ``model``: the shipped one, or ``MEDCNN_BUNDLE`` where that bundle is of
    the same model (for developers: a retrained bundle replaces the shipped one)."""
    override = os.environ.get("MEDCNN_BUNDLE")
    if override and model_of(Path(override)) == model:
        return Path(override).resolve()
    models = installed_models()
    if model not in models:
        raise ModelIntegrityError(
            f"The MedCNN model {model} is not installed (installed: "
            f"{', '.join(models) or 'none'}); reinstall MedCNN."
        )
    return models[model].resolve()


def read_metadata(bundle_dir: Path) -> dict:
    path = Path(bundle_dir) / "configs" / "metadata.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelIntegrityError(
            f"The bundle's metadata {path} cannot be read ({error}); reinstall MedCNN."
        ) from error


def needs_point(bundle_dir: Path) -> bool:
    """Whether the model judges a point of its input (``medcnn.needs_point``)."""
    return bool(read_metadata(bundle_dir).get("medcnn", {}).get("needs_point", True))


def model_list() -> list[dict]:
    """What a front end shows of each installed model, without loading any."""
    listed = []
    for name, folder in installed_models().items():
        metadata = read_metadata(folder)
        own = metadata.get("medcnn", {})
        listed.append(
            {
                "id": name,
                "name": metadata.get("name", name),
                "version": metadata.get("version", "unknown"),
                "task": metadata.get("task", ""),
                "input": own.get("input", ""),
                "needs_point": bool(own.get("needs_point", True)),
            }
        )
    return listed


@dataclass(frozen=True)
class Task:
    """What a model judges, in the words its answers use (``metadata.json``'s ``medcnn``
    section): ``result.json``'s ``task``, the finding its probability is of, the label at or
    above the threshold and below it, the keys of its own a batch's table shows, and the JSON
    Schema rule of its own keys in ``result.json``."""

    name: str
    finding: str
    positive: str
    negative: str
    summary_columns: tuple[str, ...]
    result_schema: dict[str, Any]

    def label(self, probability: float, threshold: float) -> str:
        return self.positive if probability >= threshold else self.negative


def task_of(bundle_dir: Path) -> Task:
    """The task a bundle's model judges, from its ``metadata.json``."""
    own = read_metadata(bundle_dir).get("medcnn", {})
    try:
        positive, negative = own["labels"]
        return Task(
            name=str(own["task"]),
            finding=str(own["finding"]),
            positive=str(positive),
            negative=str(negative),
            summary_columns=tuple(str(key) for key in own.get("summary_columns", ())),
            result_schema=dict(own.get("result_schema", {})),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ModelIntegrityError(
            f"The bundle {bundle_dir} does not say what its model judges (metadata.json's "
            f"medcnn section needs task, finding and two labels; {error!r} is missing or "
            "wrong); reinstall MedCNN or fix the bundle."
        ) from error


def installed_tasks() -> dict[str, Task]:
    """The task of each installed model, by task name, in model order."""
    tasks = (task_of(default_bundle_dir(model)) for model in installed_models())
    return {task.name: task for task in tasks}


def task_named(name: str) -> Task:
    """An installed model's task by its name (``result.json``'s ``task``)."""
    tasks = installed_tasks()
    if name not in tasks:
        raise ModelIntegrityError(
            f"No installed model judges the task {name!r} (installed: {', '.join(tasks)}); "
            "reinstall MedCNN or install that model's bundle."
        )
    return tasks[name]
