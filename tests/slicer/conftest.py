"""Fixtures for the 3D Slicer extension's tests.

The extension's library (``MedCNNExtension/MedCNN/MedCNNLib``) is put on ``sys.path`` as Slicer
does. Tests of the scene side need Slicer's MRML, which the ``slicer-core`` package provides
without the application; their modules skip, with the reason, when it is not installed. The
runner, installer and layout tests need neither.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXTENSION = REPO / "MedCNNExtension" / "MedCNN"
STANDIN_WORKER = Path(__file__).resolve().parent / "standin_worker.py"
LUNG1_NODULE_RAS = (21.86, 120.54, -611.50)
# Deep in the right lung of chest_ct_dicom (no nodule there: the check is placement, not finding)
CHEST_LUNG_RAS = (85.9, -11.8, -32.5)

if str(EXTENSION) not in sys.path:
    sys.path.insert(0, str(EXTENSION))

SLICER_CORE_MISSING = (
    "Slicer's MRML is not importable: install slicer-core (pip install slicer-core==5.11.0.6)"
)


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


def pid_alive(pid: int) -> bool:
    """True while a process exists and is not a zombie (killed, awaiting its reaper)."""
    stat = Path(f"/proc/{pid}/stat")
    if Path("/proc").is_dir():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (FileNotFoundError, ProcessLookupError):
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
