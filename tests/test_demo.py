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
from result_checks import assert_valid_result

from medcnn.phantom import NODULE_CENTER_RAS, NODULE_DIAMETER_MM


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
    named = re.search(r"outputs: (.*)", done.stdout).group(1).split(", ")
    out = (tmp_path / "out").resolve()
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
