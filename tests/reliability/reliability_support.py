"""Helpers of the reliability suite: run the command line in-process, and look for leftovers."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from result_checks import nodule_result

from medcnn.app.cli import main
from medcnn.bundle import load_patch_spec, sign_weights
from medcnn.nodule.network import NoduleEnsemble
from medcnn.outputs.result import Result

REPO = Path(__file__).resolve().parents[2]
SHIPPED_BUNDLE = REPO / "monai_bundle" / "lung_nodule_ct"
SHIPPED_WEIGHTS = SHIPPED_BUNDLE / "models" / "model.pt"


def write_random_bundle(folder: Path, n_members: int = 1, seed: int = 0) -> Path:
    """A bundle with the shipped configs and random weights whose SHA-256 is in its metadata."""
    shutil.copytree(SHIPPED_BUNDLE / "configs", folder / "configs")
    (folder / "models").mkdir()
    torch.manual_seed(seed)
    window = load_patch_spec(folder).hu_window
    sign_weights(folder, NoduleEnsemble(n_members=n_members, hu_window=window).state_dict())
    return folder


@dataclass(frozen=True)
class CliRun:
    code: int
    stdout: str
    stderr: str

    @property
    def sentence(self) -> str:
        """The error sentence: stderr's one line without the ``medcnn: error:`` prefix."""
        return self.stderr.strip().removeprefix("medcnn: error: ")


def run_cli(capsys: pytest.CaptureFixture, *args: str | Path) -> CliRun:
    """``medcnn ARGS`` in this process, as the console script runs it."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return CliRun(code, out, err)


def assert_one_clear_sentence(run: CliRun, code: int, *phrases: str) -> None:
    """The documented exit code, and stderr is one line: a sentence naming the problem and what
    to do, with no traceback and no Python exception name."""
    assert run.code == code, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("medcnn: error: ")
    sentence = run.sentence
    assert sentence.endswith("."), sentence
    assert "Traceback" not in run.stderr and "Error:" not in sentence, sentence
    for phrase in phrases:
        assert phrase in sentence, f"{phrase!r} not in {sentence!r}"


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``folder`` (hidden ones too), with size and modification."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size if p.is_file() else -1, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
    }


class RecordingAnalyzer:
    """Stands in for the model: records where each case would be written."""

    def __init__(self) -> None:
        self.out_dirs: list[Path] = []

    def analyze_file(self, image: Path, point: tuple, out_dir: Path, lps: bool = False) -> Result:
        self.out_dirs.append(Path(out_dir))
        return nodule_result()

    def analyze_files(self, requests: list) -> list[Result]:
        return [self.analyze_file(r.image, r.point, r.out_dir, r.lps) for r in requests]
