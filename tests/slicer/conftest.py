"""Fixtures for the 3D Slicer extension's tests.

The extension's library (``MedCNNExtension/MedCNN/MedCNNLib``) is put on ``sys.path`` as Slicer
does (by ``slicer_test_support``). Tests of the scene side need Slicer's MRML, which the
``slicer-core`` package provides without the application; their modules skip, with the reason,
when it is not installed. The runner, installer, worker and layout tests need neither.

The fast tests run on ``phantom_ct``, the engine's synthetic chest CT written as NRRD, so a
fresh clone tests the extension; ``ct`` gives the phantom and, as an extra ``data`` case, lung1
from ../shared/data (skipped without it).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

import pytest
from slicer_test_support import LUNG1_NODULE_RAS, STANDIN_WORKER, Scan, write_nrrd

from medcnn.phantom import NODULE_CENTER_RAS, synthetic_chest


@pytest.fixture(scope="session")
def phantom_ct(tmp_path_factory: pytest.TempPathFactory) -> Scan:
    """The synthetic chest CT as NRRD (as Slicer hands a volume to the engine)."""
    volume = synthetic_chest()
    path = tmp_path_factory.mktemp("phantom") / "phantom.nrrd"
    return Scan("phantom", write_nrrd(volume.array, volume.affine, path), NODULE_CENTER_RAS)


@pytest.fixture(params=["phantom", pytest.param("lung1", marks=pytest.mark.data)])
def ct(request: pytest.FixtureRequest) -> Scan:
    """The phantom, and lung1 where ../shared/data is."""
    if request.param == "phantom":
        return request.getfixturevalue("phantom_ct")
    path = request.getfixturevalue("shared_data") / "ct" / "lung1" / "lung1_image.nrrd"
    return Scan("lung1", path, LUNG1_NODULE_RAS)


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


@pytest.fixture
def scene():
    """A fresh MRML scene (Slicer's MRML from ``slicer-core``), cleared after the test."""
    from slicer_scene_support import new_scene

    scene = new_scene()
    yield scene
    scene.Clear(1)


@pytest.fixture
def phantom(scene, phantom_ct: Scan):
    """The synthetic CT loaded into the scene, for the checks that need no real scan."""
    from slicer_scene_support import load_volume

    return load_volume(scene, phantom_ct.path, phantom_ct.name)
