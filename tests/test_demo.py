"""``medcnn demo``, the README's first command: it must work on a fresh machine and say where
everything is."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image
from result_checks import assert_valid_result

from medcnn.catalog import XRAY_MODEL, installed_models
from medcnn.phantom import NODULE_CENTER_RAS, NODULE_DIAMETER_MM
from medcnn.xray.phantom import COLUMNS, ROWS


def test_demo_analyses_the_phantom_and_names_every_output(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}  # no phantom yet
    done = subprocess.run(
        [sys.executable, "-m", "medcnn", "demo", "--out", "out"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "SYNTHETIC" in done.stdout
    out = (tmp_path / "out" / "ct_nodule").resolve()
    named = outputs_named(done.stdout, out)
    assert [Path(p) for p in named] == [
        out / name
        for name in ("result.json", "heatmap.nii.gz", "segmentation.nii.gz", "overlay.png")
    ]
    assert all(Path(p).is_file() for p in named)
    assert str(tmp_path / "cache" / "medcnn") in done.stdout  # the phantom it generated

    result = json.loads((out / "result.json").read_text())
    assert_valid_result(result)
    assert result["outputs"]["overlay"] == "overlay.png"  # drawn with the others, and listed
    assert f"probability of malignancy {result['probability']:.3f}" in done.stdout
    np.testing.assert_allclose(result["point"]["ras"], NODULE_CENTER_RAS, atol=1e-6)
    assert 0.7 * NODULE_DIAMETER_MM <= result["diameter_mm"] <= 1.4 * NODULE_DIAMETER_MM
    segmentation = nib.load(out / "segmentation.nii.gz")
    assert segmentation.get_fdata().any()
    if XRAY_MODEL in installed_models():
        assert_the_radiograph_demo(done.stdout, (tmp_path / "out" / "chest_xray").resolve())


def outputs_named(stdout: str, out: Path) -> list[str]:
    """The files the demo names for the model whose outputs are in ``out``."""
    (line,) = [line for line in re.findall(r"outputs: (.*)", stdout) if str(out) in line]
    return line.split(", ")


def assert_the_radiograph_demo(stdout: str, out: Path) -> None:
    """The synthetic radiograph's part: named outputs, a valid X-ray result, a heatmap the
    size of the picture."""
    assert "Synthetic chest radiograph" in stdout
    named = outputs_named(stdout, out)
    assert [Path(p) for p in named] == [
        out / name for name in ("result.json", "heatmap.nii.gz", "overlay.png", "heatmap.png")
    ]
    result = json.loads((out / "result.json").read_text())
    assert_valid_result(result)
    assert result["task"] == "chest_xray_pneumonia" and "point" not in result
    assert result["model"]["chosen_because"].startswith("no point was given")
    assert f"probability of pneumonia {result['probability']:.3f}" in stdout
    with Image.open(out / "heatmap.png") as picture:
        assert picture.size == (COLUMNS, ROWS)
