"""What one analysis found, typed: the content of ``result.json`` for every task.

Common to every task: the probability with its uncertainty, the decision, the input, the files
written, the model and the software. A task's own findings are a part of their own
(``NoduleFindings`` for ``lung_nodule_malignancy``: the point, the diameter, the volume, the
calcified share), absent for a task that has none (a chest radiograph classifier has no point
and no segmentation). In the JSON a task's findings sit at the top level beside the common
keys, so ``result.json`` reads flat. The schema (``result_schema()``) is the package's common part
and each installed model's rule for its own keys and labels; a task's words (what its
probability is of, its labels, its table columns) are its bundle's (``medcnn.catalog.Task``).

The analysis builds a ``Result``; ``outputs.writing`` writes ``to_json()``; the batch table, the
overlay's title and the worker read it; ``from_json`` reads a written one back.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from medcnn.catalog import installed_tasks, task_named
from medcnn.threads import Threading

SCHEMA_VERSION = 2
SCHEMA_FILE = "result.schema.json"

# The columns of a batch's table common to every task, after its own identifying columns: the
# answer; each task's own measurements follow (its bundle's ``summary_columns``).
_COMMON_SUMMARY = ("probability", "uncertainty", "label")


@cache
def _common_schema() -> dict:
    text = resources.files("medcnn").joinpath("schemas").joinpath(SCHEMA_FILE).read_text("utf-8")
    return json.loads(text)


def result_schema() -> dict:
    """The JSON Schema of ``result.json`` (draft 2020-12): the keys common to every task, as
    shipped inside the package, and each installed model's rule for its own keys and labels,
    as its bundle states it."""
    schema = copy.deepcopy(_common_schema())
    for task in installed_tasks().values():
        rule = copy.deepcopy(task.result_schema)
        rule.setdefault("properties", {})["label"] = {"enum": [task.positive, task.negative]}
        schema["allOf"].append({"if": {"properties": {"task": {"const": task.name}}}, "then": rule})
    return schema


def summary_columns(task: str) -> tuple[str, ...]:
    """The keys of ``result.json`` that a batch's table shows for ``task``."""
    return _COMMON_SUMMARY + task_named(task).summary_columns


def table_columns() -> tuple[str, ...]:
    """The summary columns of a table that holds results of any task (``medcnn batch``'s):
    the common ones, then each installed task's own in model order; a task without a column
    leaves it empty."""
    own = [key for task in installed_tasks().values() for key in task.summary_columns]
    return _COMMON_SUMMARY + tuple(dict.fromkeys(own))


@dataclass(frozen=True)
class Point:
    """The point analysed, in world millimetres, and the convention it was given in."""

    ras: tuple[float, float, float]
    lps: tuple[float, float, float]
    given_as: str = "RAS"

    def to_json(self) -> dict[str, Any]:
        return {"ras": list(self.ras), "lps": list(self.lps), "given_as": self.given_as}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Point:
        return cls(tuple(data["ras"]), tuple(data["lps"]), data.get("given_as", "RAS"))


@dataclass(frozen=True)
class NoduleFindings:
    """What ``lung_nodule_malignancy`` measures at its point; ``calcified_share`` is None when
    nothing is segmented."""

    point: Point
    diameter_mm: float
    volume_ml: float
    calcified_share: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "diameter_mm": self.diameter_mm,
            "volume_ml": self.volume_ml,
            "calcified_share": self.calcified_share,
            "point": self.point.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NoduleFindings:
        return cls(
            point=Point.from_json(data["point"]),
            diameter_mm=data["diameter_mm"],
            volume_ml=data["volume_ml"],
            calcified_share=data.get("calcified_share"),
        )


@dataclass(frozen=True)
class InputImage:
    """The image analysed: the path given, how it was read and its voxel grid."""

    path: str | None
    format: str | None
    shape: tuple[int, ...]
    spacing_mm: tuple[float, ...]
    series_instance_uid: str | None = None
    series_choice: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "series_instance_uid": self.series_instance_uid,
            "series_choice": self.series_choice,
            "shape": list(self.shape),
            "spacing_mm": list(self.spacing_mm),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InputImage:
        return cls(
            path=data.get("path"),
            format=data.get("format"),
            shape=tuple(data["shape"]),
            spacing_mm=tuple(data["spacing_mm"]),
            series_instance_uid=data.get("series_instance_uid"),
            series_choice=data.get("series_choice"),
        )


@dataclass(frozen=True)
class OutputFiles:
    """The names of the files written beside ``result.json``, in the same folder; a task
    without a heatmap or a segmentation, or an analysis without an overlay, has None there."""

    result: str = "result.json"
    heatmap: str | None = None
    segmentation: str | None = None
    overlay: str | None = None
    # The heatmap as a grey picture of the input's width and height (PNG and JPEG inputs).
    heatmap_png: str | None = None
    # --dicom: DICOM Segmentation, Parametric Map (the heatmap) and Structured Report.
    dicom_segmentation: str | None = None
    dicom_heatmap: str | None = None
    dicom_report: str | None = None

    def to_json(self) -> dict[str, str]:
        names = {
            "result": self.result,
            "heatmap": self.heatmap,
            "segmentation": self.segmentation,
            "overlay": self.overlay,
            "heatmap_png": self.heatmap_png,
            "dicom_segmentation": self.dicom_segmentation,
            "dicom_heatmap": self.dicom_heatmap,
            "dicom_report": self.dicom_report,
        }
        return {key: name for key, name in names.items() if name is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OutputFiles:
        return cls(
            result=data.get("result", "result.json"),
            heatmap=data.get("heatmap"),
            segmentation=data.get("segmentation"),
            overlay=data.get("overlay"),
            heatmap_png=data.get("heatmap_png"),
            dicom_segmentation=data.get("dicom_segmentation"),
            dicom_heatmap=data.get("dicom_heatmap"),
            dicom_report=data.get("dicom_report"),
        )


@dataclass(frozen=True)
class ModelInfo:
    """The model that answered: its description, version and weights, and, where MedCNN chose
    it among the installed models, which one (``id``, its bundle's name) and why."""

    name: str
    version: str
    weights_sha256: str
    id: str | None = None
    chosen_because: str | None = None

    def to_json(self) -> dict[str, str]:
        data = {"name": self.name, "version": self.version, "weights_sha256": self.weights_sha256}
        if self.id is not None:
            data["id"] = self.id
        if self.chosen_because is not None:
            data["chosen_because"] = self.chosen_because
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelInfo:
        return cls(
            data["name"],
            data["version"],
            data["weights_sha256"],
            data.get("id"),
            data.get("chosen_because"),
        )


@dataclass(frozen=True)
class Result:
    """One analysis's answer. ``findings`` is the task's own part (``NoduleFindings`` for
    ``lung_nodule_malignancy``); ``timings_s`` is filled in as the files are written;
    ``threading`` is what the process computed with (``medcnn.threads.in_force()``)."""

    task: str
    probability: float
    uncertainty: float
    probability_interval: tuple[float, float]
    member_probabilities: tuple[float, ...]
    threshold: float
    label: str
    input: InputImage
    outputs: OutputFiles
    model: ModelInfo
    software: dict[str, str]
    findings: NoduleFindings | None = None
    warnings: tuple[str, ...] = ()
    timings_s: dict[str, float] | None = None
    threading: Threading | None = None
    schema_version: int = field(default=SCHEMA_VERSION)

    @property
    def label_positive(self) -> str:
        """The label of the task's positive class ("malignant", "pneumonia")."""
        return task_named(self.task).positive

    @property
    def finding(self) -> str:
        """What the probability is of, in words ("malignancy", "pneumonia")."""
        return task_named(self.task).finding

    @property
    def nodule(self) -> NoduleFindings:
        """The nodule findings of a ``lung_nodule_malignancy`` result."""
        if not isinstance(self.findings, NoduleFindings):
            raise AttributeError(f"A {self.task} result has no nodule findings.")
        return self.findings

    def answer_line(self) -> str:
        """The answer in one line: the label, the probability, the members' range and a
        nodule's size."""
        low, high = self.probability_interval
        line = (
            f"{self.label}: probability of {self.finding} {self.probability:.3f} "
            f"(members {low:.3f}-{high:.3f})"
        )
        if self.findings is not None:
            nodule = self.nodule
            line += f", diameter {nodule.diameter_mm:.1f} mm, volume {nodule.volume_ml:.3f} mL"
        return line

    def output_paths(self, out_dir: Path) -> str:
        """The files written, as paths in ``out_dir``, comma-separated."""
        return ", ".join(str(Path(out_dir) / name) for name in self.outputs.to_json().values())

    def to_json(self) -> dict[str, Any]:
        """``result.json``'s content: plain JSON types, the task's findings at the top level."""
        data: dict[str, Any] = {
            "schema_version": self.schema_version,
            "task": self.task,
            "probability": self.probability,
            "uncertainty": self.uncertainty,
            "probability_interval": list(self.probability_interval),
            "member_probabilities": list(self.member_probabilities),
            "threshold": self.threshold,
            "label": self.label,
        }
        if self.findings is not None:
            data.update(self.findings.to_json())
        data.update(
            {
                "input": self.input.to_json(),
                "outputs": self.outputs.to_json(),
                "model": self.model.to_json(),
                "software": dict(self.software),
                "warnings": list(self.warnings),
            }
        )
        if self.timings_s is not None:
            data["timings_s"] = dict(self.timings_s)
        if self.threading is not None:
            data["threading"] = self.threading.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Result:
        """A ``Result`` from ``result.json``'s content (schema version 2)."""
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(
                f"result.json has schema version {version!r}; this MedCNN reads {SCHEMA_VERSION}."
            )
        task = data["task"]
        findings = NoduleFindings.from_json(data) if "point" in data else None
        return cls(
            task=task,
            probability=data["probability"],
            uncertainty=data["uncertainty"],
            probability_interval=tuple(data["probability_interval"]),
            member_probabilities=tuple(data["member_probabilities"]),
            threshold=data["threshold"],
            label=data["label"],
            input=InputImage.from_json(data["input"]),
            outputs=OutputFiles.from_json(data["outputs"]),
            model=ModelInfo.from_json(data["model"]),
            software=dict(data["software"]),
            findings=findings,
            warnings=tuple(data.get("warnings", ())),
            timings_s=dict(data["timings_s"]) if "timings_s" in data else None,
            threading=Threading.from_json(data["threading"]) if "threading" in data else None,
            schema_version=version,
        )

    def summary(self) -> dict[str, Any]:
        """The values of ``table_columns()``, for a batch's table: this task's summary, the
        other tasks' columns empty."""
        data = self.to_json()
        own = summary_columns(self.task)
        return {key: data[key] if key in own else "" for key in table_columns()}
