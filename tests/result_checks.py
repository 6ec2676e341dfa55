"""``result.json`` held to its schema, the one shipped inside the package, and a sample result
for stand-ins of the analyzer."""

from __future__ import annotations

from dataclasses import replace

import jsonschema

from medcnn.outputs.result import (
    InputImage,
    ModelInfo,
    NoduleFindings,
    OutputFiles,
    Point,
    Result,
    result_schema,
)

# The shipped CT model's task (its bundle's metadata.json says it).
NODULE_TASK = "lung_nodule_malignancy"


def assert_valid_result(data: dict) -> None:
    """Fail with the schema's own message when ``data`` is not a valid ``result.json``."""
    jsonschema.Draft202012Validator(result_schema()).validate(data)


def nodule_result(**changes) -> Result:
    """A valid nodule result, with ``changes`` (dataclass fields) applied."""
    result = Result(
        task=NODULE_TASK,
        probability=0.731,
        uncertainty=0.042,
        probability_interval=(0.69, 0.78),
        member_probabilities=(0.69, 0.78),
        threshold=0.5,
        label="malignant",
        findings=NoduleFindings(
            point=Point((1.0, 2.0, 3.0), (-1.0, -2.0, 3.0), "LPS"),
            diameter_mm=7.25,
            volume_ml=0.1234,
            calcified_share=None,
        ),
        input=InputImage("scan.nrrd", "nrrd", (64, 64, 32), (0.7, 0.7, 2.5)),
        outputs=OutputFiles(heatmap="heatmap.nii.gz", segmentation="segmentation.nii.gz"),
        model=ModelInfo("medcnn", "0.3.4", "a" * 64),
        software={"medcnn": "0.3.4"},
        warnings=("No nodule was segmented at the point; check that it is on a nodule.",),
        timings_s={"read": 0.1, "total": 0.3},
    )
    return replace(result, **changes)
