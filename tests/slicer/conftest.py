"""Fixtures for the 3D Slicer extension's tests.

The extension's library (``MedCNNExtension/MedCNN/MedCNNLib``) is put on ``sys.path`` as Slicer
does (by ``slicer_test_support``). Tests of the scene side need Slicer's MRML, which the
``slicer-core`` package provides without the application; their modules skip, with the reason,
when it is not installed. The runner, installer, worker and layout tests need neither.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

import pytest
from slicer_test_support import STANDIN_WORKER


@pytest.fixture
def standin_runner(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable]:
    """Factory of ``WorkerRunner``s running the protocol stand-in in a given mode."""
    from MedCNNLib.Runner import WorkerRunner

    runners = []

    def make(mode: str = "normal") -> WorkerRunner:
        monkeypatch.setenv("STANDIN_MODE", mode)
        runner = WorkerRunner(command=[sys.executable, str(STANDIN_WORKER)])
        runners.append(runner)
        return runner

    yield make
    for runner in runners:
        runner.shutdown()
