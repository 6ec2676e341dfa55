"""``result.json``: one typed result (``medcnn.outputs.result``), its JSON Schema shipped inside
the package, the README's table of keys and the batch table's columns held to that schema."""

from __future__ import annotations

import re
from pathlib import Path

import jsonschema
import pytest
from readme_tables import readme_table
from result_checks import NODULE_TASK, assert_valid_result, nodule_result

from medcnn.app.batch import PREDICTION_COLUMNS
from medcnn.errors import ModelIntegrityError
from medcnn.outputs.result import (
    SCHEMA_VERSION,
    InputImage,
    OutputFiles,
    Result,
    result_schema,
    summary_columns,
)


def test_the_schema_is_a_valid_json_schema_shipped_inside_the_package() -> None:
    schema = result_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["properties"]["schema_version"]["const"] == SCHEMA_VERSION
    assert (
        Path(__import__("medcnn").__file__)
        .parent.joinpath("schemas", "result.schema.json")
        .is_file()
    )


def test_a_nodule_result_round_trips_and_is_valid() -> None:
    result = nodule_result()
    data = result.to_json()
    assert_valid_result(data)
    assert Result.from_json(data) == result
    assert data["point"] == {"ras": [1.0, 2.0, 3.0], "lps": [-1.0, -2.0, 3.0], "given_as": "LPS"}
    assert "overlay" not in data["outputs"]  # absent, not null, when none was drawn


def test_the_threading_in_force_round_trips_and_is_valid() -> None:
    """``threading`` (``medcnn.threads.in_force()``) is optional, typed and held to the schema."""
    from medcnn.threads import Threading, in_force

    result = nodule_result(threading=in_force())
    data = result.to_json()
    assert_valid_result(data)
    assert Result.from_json(data) == result
    assert "threading" not in nodule_result().to_json()  # absent, not null, when not known
    user = Threading(1, "user", 2, {"OMP_NUM_THREADS": {"value": "1", "source": "user"}})
    assert_valid_result(nodule_result(threading=user).to_json())
    for broken in (
        {**user.to_json(), "threads": 0},
        {**user.to_json(), "threads_source": "somebody"},
        {**user.to_json(), "variables": {"GOMP_SPINCOUNT": {"value": 10000, "source": "medcnn"}}},
        {k: v for k, v in user.to_json().items() if k != "cpus"},
    ):
        with pytest.raises(jsonschema.ValidationError):
            assert_valid_result({**data, "threading": broken})


def test_a_nodule_result_needs_its_findings() -> None:
    data = nodule_result().to_json()
    for key in ("point", "diameter_mm", "volume_ml", "calcified_share"):
        broken = {k: v for k, v in data.items() if k != key}
        with pytest.raises(jsonschema.ValidationError):
            assert_valid_result(broken)
    with pytest.raises(jsonschema.ValidationError):
        assert_valid_result({**data, "label": "uncertain"})
    with pytest.raises(jsonschema.ValidationError):
        assert_valid_result({**data, "outputs": {"result": "result.json"}})


def test_another_task_carries_no_point_no_measurements_and_no_segmentation() -> None:
    """What a chest radiograph classifier will write: the common keys only."""
    result = nodule_result(
        task="chest_radiograph_classification",
        label="abnormal",
        findings=None,
        outputs=OutputFiles(heatmap="heatmap.nii.gz"),
        input=InputImage("cxr.dcm", "dicom", (2048, 2048), (0.14, 0.14)),
    )
    data = result.to_json()
    assert not {"point", "diameter_mm", "volume_ml", "calcified_share"} & set(data)
    assert_valid_result(data)
    assert Result.from_json(data) == result
    with pytest.raises(AttributeError):
        result.nodule  # noqa: B018


def test_an_unknown_key_or_an_older_schema_version_is_refused() -> None:
    data = nodule_result().to_json()
    with pytest.raises(jsonschema.ValidationError):
        assert_valid_result({**data, "probabilty": 0.5})
    with pytest.raises(ValueError, match="schema version 1"):
        Result.from_json({**data, "schema_version": 1})


def test_the_batch_tables_columns_are_the_tasks_summary_of_the_result() -> None:
    columns = summary_columns(NODULE_TASK)
    assert PREDICTION_COLUMNS == ("id", "image", "r", "a", "s", *columns, "output_dir", "error")
    schema = result_schema()
    (nodule_rule,) = [
        rule["then"]
        for rule in schema["allOf"]
        if rule["if"]["properties"]["task"]["const"] == NODULE_TASK
    ]
    assert set(columns) <= set(schema["required"]) | set(nodule_rule["required"])
    assert nodule_result().summary() == {
        "probability": 0.731,
        "uncertainty": 0.042,
        "label": "malignant",
        "diameter_mm": 7.25,
        "volume_ml": 0.1234,
    }
    with pytest.raises(ModelIntegrityError, match="No installed model judges"):
        summary_columns("chest_radiograph_classification")


def test_the_readmes_table_of_result_keys_is_the_schemas() -> None:
    """Every key the schema allows, common or a shipped task's own, is in the README's table
    and the table names no other; an object's row names its fixed keys."""
    full = result_schema()
    schema = dict(full["properties"])
    for rule in full["allOf"]:
        own = {k: v for k, v in rule["then"]["properties"].items() if k not in schema}
        schema.update(own)
    rows = readme_table("## Outputs: `result.json`")
    listed: dict[str, str] = {}
    for key_cell, meaning in rows:
        for key in re.findall(r"`([^`]+)`", key_cell):
            listed[key] = meaning
    assert set(listed) == set(schema)
    for key, rule in schema.items():
        named = set(re.findall(r"`([^`]+)`", listed[key]))
        assert set(rule.get("properties", {})) <= named, key
