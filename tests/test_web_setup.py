"""``medcnn web`` without its extra: one sentence and exit code 2, before anything loads."""

from __future__ import annotations

import importlib.util

import pytest

from medcnn.app.cli import main
from medcnn.errors import UsageError
from medcnn.web.setup import require_web_packages


def test_without_trame_slicer_medcnn_web_says_what_to_install(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "trame_slicer" else real(name, *args),
    )
    with pytest.raises(UsageError, match=r"needs trame_slicer, which are not installed"):
        require_web_packages()
    assert main(["web"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("medcnn: error: The web front end needs trame_slicer")
    assert '-e ".[web]"' in error
