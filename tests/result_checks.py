"""``result.json`` held to its schema, the one shipped inside the package."""

from __future__ import annotations

import jsonschema

from medcnn.outputs.result import result_schema


def assert_valid_result(data: dict) -> None:
    """Fail with the schema's own message when ``data`` is not a valid ``result.json``."""
    jsonschema.Draft202012Validator(result_schema()).validate(data)
