"""The worker survives any line on its input (issue 26): a line that is not a valid request is
answered with exit code 2 and one sentence, and the worker keeps serving. Every field is
checked for its type before the engine sees it; lines are bounded in size and nesting before
they are parsed. Hypothesis writes lines no one thought of."""

from __future__ import annotations

import errno
import io
import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medcnn.app.worker import (
    MAX_LINE_CHARS,
    Channel,
    parse_request,
    read_lines,
    serve,
)
from medcnn.errors import MedCNNError
from medcnn.volume import MAX_COORDINATE_MM

LINE_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


class TypeCheckingAnalyzer:
    """Stands in for the engine and fails the test if it is ever handed a wrong type."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def analyze_file(self, image, point, out_dir, lps=False, progress=None, **options):
        assert isinstance(image, str) and image.strip() and isinstance(out_dir, str)
        assert isinstance(lps, bool)
        if point is not None:
            assert len(point) == 3
            assert all(isinstance(v, float) and math.isfinite(v) for v in point)
            assert all(abs(v) <= MAX_COORDINATE_MM for v in point)
        for key in ("model", "series_uid"):
            assert options.get(key) is None or isinstance(options[key], str)
        assert isinstance(options.get("dicom", False), bool)
        self.calls.append((image, point, out_dir, lps, options))
        raise MedCNNError("analysed")  # an engine error is answered like any other


def serve_lines(*lines: str) -> tuple[list[dict], TypeCheckingAnalyzer]:
    """Serve the lines (each ended by a newline) and then one valid request; the answers."""
    analyzer = TypeCheckingAnalyzer()
    out = io.StringIO()
    good = json.dumps({"id": "last", "image": "scan.nrrd", "point": [1, 2, 3], "out": "o"})
    text = "".join(line + "\n" for line in (*lines, good))
    status = serve(analyzer, read_lines(io.StringIO(text)), Channel(out), (MedCNNError,))
    assert status == 0
    messages = [json.loads(line) for line in out.getvalue().splitlines()]
    assert messages[-1] == {
        "id": "last",
        "event": "error",
        "message": "analysed",
        "exit_code": 1,
    }  # still serving after every line before
    return messages[:-1], analyzer


def assert_refused(line: str, *phrases: str) -> dict:
    messages, analyzer = serve_lines(line)
    assert len(messages) == 1 and len(analyzer.calls) == 1  # only the valid last request
    message = messages[0]
    assert message["event"] == "error" and message["exit_code"] == 2, message
    text = message["message"]
    assert text.endswith(".") and "\n" not in text and "Traceback" not in text
    for phrase in phrases:
        assert phrase in text, text
    return message


# --- the examples of the issue ------------------------------------------------------------------


def test_a_5000_digit_integer_is_refused() -> None:
    line = '{"id":"x","image":"x","point":[' + "9" * 5000 + ',0,0],"out":"x"}'
    assert assert_refused(line, "point", "finite")["id"] == "x"


def test_200000_nested_brackets_are_refused() -> None:
    assert_refused("[" * 200_000, "longer than")  # the line: too long to parse
    assert_refused("[" * 50_000, "nests deeper")  # short enough, still never parsed
    assert_refused('{"id": "x", "point": ' + "[" * 100 + "]" * 100 + "}", "nests deeper")


@pytest.mark.parametrize("lps", ['"false"', '"true"', "0", "1", "null", "[]"])
def test_lps_must_be_a_json_boolean(lps: str) -> None:
    line = f'{{"id":"x","image":"x","point":[1,2,3],"out":"x","lps":{lps}}}'
    assert_refused(line, "lps", "true or false")


@pytest.mark.parametrize(
    ("field", "value", "phrase"),
    [
        ("point", '["1","2","3"]', "point"),
        ("point", "[1,2]", "point"),
        ("point", "[1,2,true]", "point"),
        ("point", "[1e308,0,0]", "point"),
        ("point", "[NaN,0,0]", "not valid JSON"),
        ("point", "[Infinity,0,0]", "not valid JSON"),
        ("point", "{}", "point"),
        ("image", "7", "image"),
        ("image", '""', "image"),
        ("image", '["a"]', "image"),
        ("image", '"a\\u0000b"', "image"),
        ("image", '"\\ud800"', "image"),
        ("out", "null", "lacks out"),
        ("out", "false", "out"),
        ("model", "7", "model"),
        ("series_uid", "1.2", "series_uid"),
        ("dicom", '"true"', "dicom"),
        ("dicom", "1", "dicom"),
        ("id", "true", "id"),
        ("id", "[1]", "id"),
        ("colour", '"red"', "does not know"),
    ],
)
def test_every_field_has_its_type(field: str, value: str, phrase: str) -> None:
    request = {"id": "x", "image": "scan.nrrd", "point": [1, 2, 3], "out": "o"}
    line = json.dumps(request)[:-1] + f', "{field}": {value}}}'
    if field in request:
        line = line.replace(f'"{field}": {json.dumps(request[field])}, ', "", 1)
    assert_refused(line, phrase)


def test_an_overlong_line_is_refused_without_being_kept_whole() -> None:
    line = '{"id":"x","image":"' + "a" * (10 * MAX_LINE_CHARS) + '","out":"x"}'
    assert_refused(line, "longer than")
    chunks = list(read_lines(io.StringIO(line + "\n{}\n")))
    assert [len(c) for c in chunks] == [MAX_LINE_CHARS + 1, 3]


def test_valid_requests_reach_the_engine_with_their_types() -> None:
    messages, analyzer = serve_lines(
        json.dumps({"id": 7, "image": "a.nrrd", "point": [1, 2.5, -3], "out": "o", "lps": True}),
        json.dumps({"id": "r", "image": "chest.png", "out": "o", "model": "chest_xray_pneumonia"}),
    )
    assert [m["id"] for m in messages] == ["7", "r"]
    assert analyzer.calls[0][1] == [1.0, 2.5, -3.0] and analyzer.calls[0][3] is True
    assert analyzer.calls[1][1] is None and analyzer.calls[1][3] is False


def test_bytes_that_are_not_utf8_do_not_stop_the_worker(tmp_path: Path) -> None:
    raw = tmp_path / "lines"
    raw.write_bytes(b'{"id":"x","image":"\xff\xfe","out":"o"}\n')
    with open(raw, encoding="utf-8", errors="replace") as stream:  # as main() reads stdin
        lines = list(read_lines(stream))
    _, request = parse_request(lines[0])
    assert request["image"] == "\ufffd\ufffd"


# --- hypothesis: any line ----------------------------------------------------------------------

JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
FIELDS = ("id", "command", "image", "point", "lps", "out", "series_uid", "model")


@LINE_SETTINGS
@given(st.text(max_size=300))
def test_any_text_line_gets_one_answer_and_the_worker_goes_on(line: str) -> None:
    line = line.replace("\n", " ").replace("\r", " ")
    if '"quit"' in line:
        return
    messages, _ = serve_lines(line)
    assert len(messages) <= 1 or all(m["event"] in ("progress", "error") for m in messages)
    for message in messages:
        if message["event"] == "error" and message["exit_code"] == 2:
            assert message["message"].endswith(".")


@LINE_SETTINGS
@given(st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=8))
def test_any_request_shaped_object_is_checked_before_the_engine(request: dict) -> None:
    """Objects with the protocol's fields holding any JSON value: the engine gets only
    well-typed requests (``TypeCheckingAnalyzer`` asserts it), everything else exit code 2."""
    if request.get("command") == "quit":
        return
    messages, analyzer = serve_lines(json.dumps(request))
    assert len(messages) == 1
    assert messages[0]["exit_code"] in (1, 2)  # 1: the stand-in engine's own answer
    assert len(analyzer.calls) == 1 + (messages[0]["exit_code"] == 1)


@LINE_SETTINGS
@given(st.lists(st.sampled_from(["[", "{", "]", "}", '"', ",", ":", "1", "\\", " "]), max_size=200))
def test_any_bracket_soup_is_answered(tokens: list[str]) -> None:
    line = "".join(tokens)
    if line.strip():
        assert_refused(line)
    else:  # a blank line is skipped, unanswered
        assert serve_lines(line)[0] == []


def test_a_full_disk_is_exit_13_in_the_worker_too() -> None:
    """ENOSPC anywhere in an analysis is the disk's, not an "unexpected" error."""

    class FullDisk:
        def analyze_file(self, *args: object, **kwargs: object) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

    out = io.StringIO()
    line = json.dumps({"id": "x", "image": "scan.nrrd", "point": [1, 2, 3], "out": "o"})
    serve(FullDisk(), iter([line]), Channel(out), (MedCNNError,))
    message = json.loads(out.getvalue())
    assert message["exit_code"] == 13 and "No space left on device" in message["message"]
