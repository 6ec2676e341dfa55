"""The background runner, with the protocol stand-in: progress, reuse, cancel, death, restart.

No MRML needed: the runner is plain Python. The stand-in reads the engine's synthetic chest CT
written as NRRD (and lung1 as an extra case where ../shared/data is). The same checks against
the real worker and model are in ``test_slicer_end_to_end.py``.
"""

from __future__ import annotations

import json
import os
import time

import pytest
from MedCNNLib.Runner import (
    PROTOCOL_VERSION,
    RUNNER_EXIT_CODES,
    STARTING_STAGE,
    AnalysisRequest,
    EngineHello,
    RunnerBusyError,
    WorkerRunner,
)
from slicer_test_support import pid_alive, wait_until

from medcnn.app import worker
from medcnn.errors import EXIT_CODES_BY_NAME, CancelledError, PointOutsideScanError
from medcnn.stages import STAGES

REQUIRED_STAGES = [stage.name for stage in STAGES if stage.name != "done"]


def request_for(scan, tmp_path, point=None, name="out"):
    """A request on a ``Scan`` (at its nodule unless ``point``), or on a file path."""
    image = getattr(scan, "path", scan)
    point = point if point is not None else getattr(scan, "nodule_ras", (0.0, 0.0, 0.0))
    return AnalysisRequest(str(image), point, str(tmp_path / name))


def wait_for_stage(job, stage, timeout=30.0):
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        for event in job.poll():
            seen.append(event)
            if event.kind == "progress" and event.stage == stage:
                return event, seen
            assert not event.final, f"finished before {stage}: {event}"
        time.sleep(0.02)
    raise AssertionError(f"no {stage!r} progress within {timeout} s; saw {seen}")


def test_progress_then_result_and_worker_reused(standin_runner, ct, tmp_path):
    runner = standin_runner()
    first = runner.submit(request_for(ct, tmp_path, name="a")).wait(timeout=60)
    pid = runner.pid
    second = runner.submit(request_for(ct, tmp_path, name="b")).wait(timeout=60)

    stages = [event.stage for event in first if event.kind == "progress"]
    assert stages[0] == STARTING_STAGE  # the worker was started for this request
    assert [s for s in stages if s in REQUIRED_STAGES] == REQUIRED_STAGES
    fractions = [event.fraction for event in first if event.kind == "progress"]
    assert fractions == sorted(fractions) and 0.0 <= fractions[0] and fractions[-1] <= 1.0
    assert first[-1].kind == "result" and first[-1].result["label"] == "malignant"
    assert (tmp_path / "a" / "result.json").exists()

    assert second[0].stage != STARTING_STAGE  # no new worker
    assert second[-1].kind == "result"
    assert runner.pid == pid and pid_alive(pid)


def test_engine_error_keeps_the_worker(standin_runner, ct, tmp_path):
    runner = standin_runner()
    events = runner.submit(request_for(ct, tmp_path, point=(900.0, 0.0, 0.0))).wait(60)
    pid = runner.pid
    assert events[-1].kind == "error"
    assert events[-1].exitCode == PointOutsideScanError.exit_code
    assert "outside" in events[-1].message
    assert runner.submit(request_for(ct, tmp_path)).wait(60)[-1].kind == "result"
    assert runner.pid == pid


def test_second_submit_while_busy_is_refused(standin_runner, phantom_ct, tmp_path):
    runner = standin_runner("hang")
    job = runner.submit(request_for(phantom_ct, tmp_path))
    with pytest.raises(RunnerBusyError):
        runner.submit(request_for(phantom_ct, tmp_path, name="other"))
    job.cancel()


def test_cancel_kills_the_whole_process_tree(standin_runner, phantom_ct, tmp_path):
    runner = standin_runner("hang")
    job = runner.submit(request_for(phantom_ct, tmp_path))
    child_event, _ = wait_for_stage(job, "child")  # the stand-in started a child process
    worker, child = runner.pid, int(child_event.fraction)
    assert pid_alive(worker) and pid_alive(child)

    job.cancel()

    assert job.done
    events = job.poll()
    assert events[-1].kind == "error" and events[-1].exitCode == CancelledError.exit_code
    wait_until(
        lambda: not pid_alive(worker) and not pid_alive(child),
        10.0,
        "the end of the worker and its child",
        lambda: {"worker": pid_alive(worker), "child": pid_alive(child)},
    )
    assert not pid_alive(worker), "the worker survived the cancel"
    assert not pid_alive(child), "the worker's child survived the cancel"
    assert runner.pid is None


def test_restart_after_cancel_and_after_death(standin_runner, ct, tmp_path, monkeypatch):
    runner = standin_runner("die")
    events = runner.submit(request_for(ct, tmp_path)).wait(timeout=60)
    assert events[-1].kind == "error"
    assert "stopped unexpectedly" in events[-1].message
    assert "simulated crash" in events[-1].message  # the last line of its log is quoted
    assert runner.pid is None

    monkeypatch.setenv("STANDIN_MODE", "normal")
    events = runner.submit(request_for(ct, tmp_path, name="again")).wait(timeout=60)
    assert events[0].stage == STARTING_STAGE  # a new worker
    assert events[-1].kind == "result"


def test_engine_that_cannot_start_is_reported(standin_runner, tmp_path):
    runner = standin_runner("fatal")
    events = runner.submit(request_for(tmp_path / "scan.nrrd", tmp_path)).wait(timeout=60)
    assert events[-1].kind == "error"
    assert "cannot start" in events[-1].message


def test_missing_python_is_reported(tmp_path):
    runner = WorkerRunner(command=[str(tmp_path / "no-such-python"), "-m", "medcnn.app.worker"])
    events = runner.submit(request_for(tmp_path / "scan.nrrd", tmp_path)).wait(timeout=10)
    assert events[-1].kind == "error"
    assert "could not be started" in events[-1].message
    runner.shutdown()


def test_shutdown_ends_the_worker(standin_runner, tmp_path):
    runner = standin_runner()
    job = runner.submit(request_for(tmp_path / "missing.nrrd", tmp_path))
    job.wait(timeout=60)
    pid = runner.pid
    runner.shutdown()
    assert runner.pid is None
    assert not pid_alive(pid)


def test_the_engine_says_its_stages_and_exit_codes_first(standin_runner, phantom_ct, tmp_path):
    runner = standin_runner()
    assert runner.hello == EngineHello()  # before any worker: only the runner's own words
    runner.submit(request_for(phantom_ct, tmp_path)).wait(timeout=60)
    assert runner.hello.protocol == PROTOCOL_VERSION == worker.PROTOCOL_VERSION
    assert runner.hello.stages == [stage.name for stage in STAGES]
    assert runner.hello.exitCodes == EXIT_CODES_BY_NAME
    for stage in STAGES:
        assert runner.hello.stageTitle(stage.name) == stage.title
    assert runner.hello.exitCode("not_ct") == 6 and runner.hello.exitCode("no such kind") == 1


def test_the_hello_lists_the_models_before_any_request(standin_runner):
    """``start`` starts the engine ahead of a click; its hello lists the installed models (the
    stand-in lists both, whatever is installed), its ready line the loaded ones."""
    runner = standin_runner()
    assert runner.hello.models == []
    runner.start()
    pid = runner.pid
    wait_until(
        lambda: runner.update() or bool(runner.models), 30.0, "the ready line", lambda: runner.hello
    )
    assert [m.id for m in runner.hello.models] == ["lung_nodule_ct", "chest_xray_pneumonia"]
    assert [m.needsPoint for m in runner.hello.models] == [True, False]
    assert runner.hello.modelById("chest_xray_pneumonia").title == "standin chest X-ray 0.0.2"
    assert runner.hello.modelById("no such model") is None
    assert [m["id"] for m in runner.models] == ["lung_nodule_ct", "chest_xray_pneumonia"]
    assert runner.model == runner.models[0] and len(runner.models[1]["weights_sha256"]) == 64
    runner.start()  # already running: the same worker
    assert runner.pid == pid


def test_a_request_line_omits_an_absent_point_and_names_a_chosen_model():
    ct = AnalysisRequest("/s.nrrd", (1, 2, 3.5), "/o")
    assert ct.toMessage("1") == {
        "id": "1",
        "image": "/s.nrrd",
        "point": [1.0, 2.0, 3.5],
        "lps": False,
        "out": "/o",
    }
    radiograph = AnalysisRequest("/chest.nrrd", None, "/o", model="chest_xray_pneumonia")
    assert radiograph.toMessage("2") == {
        "id": "2",
        "image": "/chest.nrrd",
        "lps": False,
        "out": "/o",
        "model": "chest_xray_pneumonia",
    }
    series = AnalysisRequest("/series", (1, 2, 3.5), "/o", seriesUid="1.2.3", dicom=True)
    assert series.toMessage("4") == {
        "id": "4",
        "image": "/series",
        "point": [1.0, 2.0, 3.5],
        "lps": False,
        "out": "/o",
        "series_uid": "1.2.3",
        "dicom": True,
    }
    # what the worker accepts (medcnn.app.worker.parse_request)
    for request in (ct, radiograph, series):
        assert worker.parse_request(json.dumps(request.toMessage("3")))[0] == "3"
    assert worker.parse_request(json.dumps(series.toMessage("4")))[1]["dicom"] is True


def test_the_runners_own_codes_are_the_engines():
    """What the runner says before any engine has spoken (it could not start one, or it was
    cancelled while starting) means what the engine means by it."""
    assert RUNNER_EXIT_CODES.items() <= EXIT_CODES_BY_NAME.items()
    assert STARTING_STAGE not in {stage.name for stage in STAGES}


def test_a_hello_missing_pieces_keeps_the_runners_own_words():
    hello = EngineHello.fromMessage({"event": "hello", "protocol": 1})
    assert hello.models == []  # a protocol 1 engine lists none: the panel offers Automatic
    assert hello.exitCode("cancelled") == RUNNER_EXIT_CODES["cancelled"]
    assert hello.stageTitle(STARTING_STAGE).startswith("Starting")
    assert hello.stageTitle("unknown") == "Unknown"


def test_the_worker_chooses_its_threading_and_keeps_the_users(standin_runner, monkeypatch):
    """The runner passes Slicer's environment and adds nothing about threads, so the worker
    chooses them at ``import medcnn`` (``medcnn.threads``), keeps what the user set, and its
    ready line says so."""
    from MedCNNLib.Runner import workerEnvironment

    from medcnn.threads import MARKER, VARIABLES

    for name in (*VARIABLES, MARKER):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    added = set(workerEnvironment(["/engine"])) - set(os.environ)
    assert added <= {"PYTHONPATH", "PYTHONUNBUFFERED"}
    runner = standin_runner()
    runner.start()
    wait_until(lambda: runner.update() or bool(runner.threading), 30.0, "the ready line")
    variables = runner.threading["variables"]
    assert variables["OMP_NUM_THREADS"] == {"value": "1", "source": "user"}
    assert variables["GOMP_SPINCOUNT"]["source"] == "medcnn"
    assert runner.threading["threads"] == 1
