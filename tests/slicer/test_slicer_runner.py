"""The background runner, with the protocol stand-in: progress, reuse, cancel, death, restart.

No MRML needed: the runner is plain Python. The same checks against the real worker and model
are in ``test_end_to_end.py``.
"""

from __future__ import annotations

import time

import pytest
from MedCNNLib.Runner import (
    CANCELLED_EXIT_CODE,
    AnalysisRequest,
    RunnerBusyError,
    WorkerRunner,
)
from slicer_test_support import pid_alive

REQUIRED_STAGES = ["reading", "preprocessing", "network", "heatmap", "writing"]


@pytest.fixture(scope="module")
def lung1_nrrd(shared_data):
    return shared_data / "ct" / "lung1" / "lung1_image.nrrd"


def request_for(image, tmp_path, point=(21.86, 120.54, -611.50), name="out"):
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


@pytest.mark.data
def test_progress_then_result_and_worker_reused(standin_runner, lung1_nrrd, tmp_path):
    runner = standin_runner()
    first = runner.submit(request_for(lung1_nrrd, tmp_path, name="a")).wait(timeout=60)
    pid = runner.pid
    second = runner.submit(request_for(lung1_nrrd, tmp_path, name="b")).wait(timeout=60)

    stages = [event.stage for event in first if event.kind == "progress"]
    assert stages[0] == "starting"  # the worker was started for this request
    assert [s for s in stages if s in REQUIRED_STAGES] == REQUIRED_STAGES
    fractions = [event.fraction for event in first if event.kind == "progress"]
    assert fractions == sorted(fractions) and 0.0 <= fractions[0] and fractions[-1] <= 1.0
    assert first[-1].kind == "result" and first[-1].result["label"] == "malignant"
    assert (tmp_path / "a" / "result.json").exists()

    assert second[0].stage != "starting"  # no new worker
    assert second[-1].kind == "result"
    assert runner.pid == pid and pid_alive(pid)


@pytest.mark.data
def test_engine_error_keeps_the_worker(standin_runner, lung1_nrrd, tmp_path):
    runner = standin_runner()
    events = runner.submit(request_for(lung1_nrrd, tmp_path, point=(900.0, 0.0, 0.0))).wait(60)
    pid = runner.pid
    assert events[-1].kind == "error"
    assert events[-1].exitCode == 8
    assert "outside" in events[-1].message
    assert runner.submit(request_for(lung1_nrrd, tmp_path)).wait(60)[-1].kind == "result"
    assert runner.pid == pid


@pytest.mark.data
def test_second_submit_while_busy_is_refused(standin_runner, lung1_nrrd, tmp_path):
    runner = standin_runner("hang")
    job = runner.submit(request_for(lung1_nrrd, tmp_path))
    with pytest.raises(RunnerBusyError):
        runner.submit(request_for(lung1_nrrd, tmp_path, name="other"))
    job.cancel()


@pytest.mark.data
def test_cancel_kills_the_whole_process_tree(standin_runner, lung1_nrrd, tmp_path):
    runner = standin_runner("hang")
    job = runner.submit(request_for(lung1_nrrd, tmp_path))
    child_event, _ = wait_for_stage(job, "child")  # the stand-in started a child process
    worker, child = runner.pid, int(child_event.fraction)
    assert pid_alive(worker) and pid_alive(child)

    job.cancel()

    assert job.done
    events = job.poll()
    assert events[-1].kind == "error" and events[-1].exitCode == CANCELLED_EXIT_CODE
    deadline = time.monotonic() + 10
    while (pid_alive(worker) or pid_alive(child)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(worker), "the worker survived the cancel"
    assert not pid_alive(child), "the worker's child survived the cancel"
    assert runner.pid is None


@pytest.mark.data
def test_restart_after_cancel_and_after_death(standin_runner, lung1_nrrd, tmp_path, monkeypatch):
    runner = standin_runner("die")
    events = runner.submit(request_for(lung1_nrrd, tmp_path)).wait(timeout=60)
    assert events[-1].kind == "error"
    assert "stopped unexpectedly" in events[-1].message
    assert "simulated crash" in events[-1].message  # the last line of its log is quoted
    assert runner.pid is None

    monkeypatch.setenv("STANDIN_MODE", "normal")
    events = runner.submit(request_for(lung1_nrrd, tmp_path, name="again")).wait(timeout=60)
    assert events[0].stage == "starting"  # a new worker
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
