"""Shared fixtures. Real data lives in ../shared/data beside the repository; a user's fresh clone
does not have it, so every test that needs it asks for ``shared_data`` and is skipped, with the
reason, when it is absent. CI always has it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MEDCNN_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "README.md").exists():
        pytest.skip(f"real data not found at {SHARED_DATA} (set MEDCNN_SHARED_DATA to point at it)")
    return SHARED_DATA
