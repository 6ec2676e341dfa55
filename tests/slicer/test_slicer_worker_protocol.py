"""``medcnn.app.worker``: the JSON-lines protocol, without Slicer and (but for the last test)
without the model. ``serve`` gets a stand-in analyzer; the process-level test starts the real
module."""

from __future__ import annotations

import io
import json
import subprocess
import sys

from result_checks import NODULE_TASK

from medcnn.app.worker import PROTOCOL_VERSION, Channel, hello, serve
from medcnn.catalog import model_list
from medcnn.errors import EXIT_CODES, EXIT_CODES_BY_NAME, MedCNNError, PointOutsideScanError
from medcnn.outputs.result import (
    InputImage,
    ModelInfo,
    NoduleFindings,
    OutputFiles,
    Point,
    Result,
)
from medcnn.stages import STAGES


class StandInAnalyzer:
    """Answers like ``Analyzer.analyze_file``: progress through the callback, then a result."""

    def __init__(self) -> None:
        self.calls = []

    def analyze_file(self, image, point, out_dir, lps=False, progress=None, **options):
        self.calls.append((image, point, out_dir, lps, options))
        point = point if point is not None else (0.0, 0.0, 0.0)
        if image == "outside.nrrd":
            raise PointOutsideScanError("The point lies outside the scan.")
        if image == "bug.nrrd":
            raise ZeroDivisionError("division by zero")
        for stage, fraction in (("reading", 0.0), ("network", 0.3), ("writing", 0.9)):
            progress(stage, fraction)
        return Result(
            task=NODULE_TASK,
            probability=0.25,
            uncertainty=0.01,
            probability_interval=(0.24, 0.26),
            member_probabilities=(0.24, 0.26),
            threshold=0.5,
            label="benign",
            findings=NoduleFindings(Point(tuple(point), tuple(point)), 6.0, 0.1, 0.0),
            input=InputImage(image, "nrrd", (8, 8, 8), (1.0, 1.0, 1.0)),
            outputs=OutputFiles(heatmap="heatmap.nii.gz", segmentation="segmentation.nii.gz"),
            model=ModelInfo("standin", "0.0.1", "0" * 64),
            software={"medcnn": "0.0.0"},
        )


def run(lines: list[str], analyzer=None) -> tuple[int, list[dict], StandInAnalyzer]:
    analyzer = analyzer or StandInAnalyzer()
    out = io.StringIO()
    status = serve(analyzer, iter(lines), Channel(out), (MedCNNError,))
    messages = [json.loads(line) for line in out.getvalue().splitlines()]
    return status, messages, analyzer


def request(rid: str, image: str = "scan.nrrd", **extra) -> str:
    return json.dumps(
        {"id": rid, "image": image, "point": [1.0, 2.0, 3.0], "out": f"/tmp/{rid}", **extra}
    )


def test_progress_then_result_each_with_the_request_id():
    status, messages, analyzer = run([request("a"), request("b", lps=True)])
    assert status == 0
    a = [m for m in messages if m["id"] == "a"]
    assert [m["event"] for m in a] == ["progress", "progress", "progress", "result"]
    assert [m["stage"] for m in a[:3]] == ["reading", "network", "writing"]
    assert a[-1]["result"]["label"] == "benign"
    assert a[-1]["result"]["task"] == NODULE_TASK  # result.json's content
    assert analyzer.calls[1][3] is True  # lps passed through
    assert messages[-1] == {**messages[-1], "id": "b", "event": "result"}


def test_engine_errors_become_error_events_with_their_exit_code():
    _, messages, _ = run([request("x", image="outside.nrrd"), request("y")])
    error = next(m for m in messages if m["id"] == "x")
    assert error == {
        "id": "x",
        "event": "error",
        "message": "The point lies outside the scan.",
        "exit_code": PointOutsideScanError.exit_code,
    }
    assert messages[-1]["id"] == "y" and messages[-1]["event"] == "result"  # still serving


def test_unexpected_exception_is_exit_code_1_and_the_worker_keeps_serving():
    _, messages, _ = run([request("x", image="bug.nrrd"), request("y")])
    error = next(m for m in messages if m["id"] == "x")
    assert error["event"] == "error" and error["exit_code"] == 1
    assert "ZeroDivisionError" in error["message"]
    assert messages[-1]["event"] == "result"


def test_bad_lines_are_answered_and_quit_stops():
    lines = [
        "not json",
        json.dumps([1, 2]),
        json.dumps({"id": "m", "image": "scan.nrrd"}),
        json.dumps({"id": "n", "image": "s", "out": "o", "model": 7}),
        json.dumps({"id": "p", "image": "s", "point": [1, 2], "out": "o"}),
        json.dumps({"id": "c", "command": "dance"}),
        "",
        json.dumps({"id": "q", "command": "quit"}),
        request("never"),
    ]
    status, messages, analyzer = run(lines)
    assert status == 0
    assert [m["exit_code"] for m in messages] == [2, 2, 2, 2, 2, 2]
    assert [m["id"] for m in messages] == [None, None, "m", "n", "p", "c"]
    assert "lacks out" in messages[2]["message"]  # protocol 2: a radiograph has no point
    assert "model must be a model's name" in messages[3]["message"]
    assert "absent for a radiograph" in messages[4]["message"]
    assert analyzer.calls == []  # nothing after quit


def test_series_uid_is_passed_on():
    _, _, analyzer = run([request("s", series_uid="1.2.3")])
    assert analyzer.calls[0][4] == {"series_uid": "1.2.3", "model": None, "dicom": False}


def test_dicom_asks_the_engine_for_dicom_results_and_must_be_a_boolean():
    """``dicom``: the command line's ``--dicom``, for the panel's Save as DICOM."""
    status, messages, analyzer = run(
        [request("d", image="/series", series_uid="1.2.3", dicom=True), request("e", dicom=1)]
    )
    assert analyzer.calls[0][0] == "/series"
    assert analyzer.calls[0][4] == {"series_uid": "1.2.3", "model": None, "dicom": True}
    assert len(analyzer.calls) == 1
    refused = [m for m in messages if m["id"] == "e"]
    assert refused == [
        {
            "id": "e",
            "event": "error",
            "message": "The request's dicom must be true or false (a JSON boolean).",
            "exit_code": 2,
        }
    ]


def test_a_radiograph_request_has_no_point_and_may_name_its_model():
    """Protocol 2: ``point`` may be left out (a radiograph) and ``model`` names the model."""
    lines = [
        json.dumps({"id": "r", "image": "chest.nrrd", "out": "/tmp/r"}),
        request("m", model="lung_nodule_ct"),
    ]
    _, messages, analyzer = run(lines)
    assert [m["event"] for m in messages if m["id"] == "r"][-1] == "result"
    assert analyzer.calls[0][1] is None
    assert analyzer.calls[0][4] == {"model": None, "dicom": False}
    assert analyzer.calls[1][4] == {"model": "lung_nodule_ct", "dicom": False}


def test_worker_process_reports_a_bundle_it_cannot_load(tmp_path):
    """The real module, started as Slicer starts it: the hello, then a fatal line on stdout, only
    JSON there, the error's exit code as the process status."""
    completed = subprocess.run(
        [sys.executable, "-m", "medcnn.app.worker", "--bundle", str(tmp_path), "--trust-bundle"],
        input="",
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = completed.stdout.splitlines()
    assert len(lines) == 2, completed.stdout
    assert json.loads(lines[0]) == hello()
    message = json.loads(lines[1])
    assert message["event"] == "fatal"
    assert message["exit_code"] == completed.returncode != 0
    assert message["message"]


def test_hello_states_the_engines_stages_and_exit_codes():
    """What a client that does not import the engine (the Slicer extension) learns first."""
    message = json.loads(json.dumps(hello()))  # as it travels
    assert message["event"] == "hello" and message["protocol"] == PROTOCOL_VERSION
    assert message["stages"] == [{"name": s.name, "title": s.title} for s in STAGES]
    assert message["exit_codes"] == EXIT_CODES_BY_NAME
    assert set(EXIT_CODES_BY_NAME.values()) == set(EXIT_CODES)  # every code has one name
    assert EXIT_CODES_BY_NAME["not_ct"] == 6 and EXIT_CODES_BY_NAME["cancelled"] == 130
    # protocol 2: the installed models, so that a panel can offer them before any is loaded
    assert message["models"] == model_list()
    assert message["models"] and all(
        set(model) == {"id", "name", "version", "task", "input", "needs_point"}
        for model in message["models"]
    )
