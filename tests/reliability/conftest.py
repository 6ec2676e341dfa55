"""Fixtures of the reliability suite: a throw-away bundle for failure paths, the shipped model for
success paths, and the synthetic phantom.

Failure paths test the engine's error handling, not the model, so they run on a bundle with one
randomly initialised member (``tmp_bundle``), loaded with the trust flag as any other bundle
must be. Success paths that a user sees end to end use the shipped model (``shipped_analyzer``),
skipped with the reason while ``monai_bundle/lung_nodule_ct/models/model.pt`` is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from reliability_support import REPO, SHIPPED_WEIGHTS, write_random_bundle

from medcnn.app.analysis import Analyzer
from medcnn.phantom import make_phantom

SHARED_DATA = Path(os.environ.get("MEDCNN_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def tmp_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_bundle(tmp_path_factory.mktemp("random_bundle") / "bundle")


@pytest.fixture(scope="session")
def tmp_analyzer(tmp_bundle: Path) -> Analyzer:
    return Analyzer(tmp_bundle, trusted=True)


@pytest.fixture(scope="session")
def shipped_analyzer() -> Analyzer:
    if not SHIPPED_WEIGHTS.exists():
        pytest.skip(f"the shipped model {SHIPPED_WEIGHTS} is not there yet (it is in CI)")
    return Analyzer()


@pytest.fixture(scope="session")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return make_phantom(tmp_path_factory.mktemp("phantom"))


@pytest.fixture(scope="session")
def shared_data_or_none() -> Path | None:
    """The real data (as ``shared_data`` of tests/conftest.py), or None where it is absent: for
    tests that run their generated cases anyway and skip only the real ones."""
    return SHARED_DATA if (SHARED_DATA / "README.md").exists() else None
