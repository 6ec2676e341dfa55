"""MedCNN's command line as a user runs it, for the tests: each call a new process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from medcnn.phantom import NODULE_CENTER_RAS


def medcnn(*args: str) -> subprocess.CompletedProcess:
    """``medcnn ARGS`` in a new process, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "medcnn", *args], capture_output=True, text=True, timeout=600
    )


def series_and_nifti_manifest(phantom: dict, folder: Path) -> Path:
    """A ``medcnn batch`` manifest of two rows at the phantom's nodule: its DICOM series and its
    NIfTI copy (which has no study, so ``--dicom`` refuses that row alone)."""
    manifest = folder / "manifest.csv"
    r, a, s = (str(v) for v in NODULE_CENTER_RAS)
    manifest.write_text(
        "id,image,r,a,s\n"
        f"series,{phantom['dicom_dir']},{r},{a},{s}\n"
        f"nifti,{phantom['nifti']},{r},{a},{s}\n"
    )
    return manifest
