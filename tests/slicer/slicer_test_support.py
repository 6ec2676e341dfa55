"""Paths, points and helpers shared by the Slicer extension's tests (fixtures: conftest.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXTENSION = REPO / "MedCNNExtension" / "MedCNN"
STANDIN_WORKER = Path(__file__).resolve().parent / "slicer_standin_worker.py"
LUNG1_NODULE_RAS = (21.86, 120.54, -611.50)
# Deep in the right lung of chest_ct_dicom (no nodule there: the check is placement, not finding)
CHEST_LUNG_RAS = (85.9, -11.8, -32.5)
SLICER_CORE_MISSING = (
    "Slicer's MRML is not importable: install slicer-core (pip install slicer-core==5.11.0.6)"
)

if str(EXTENSION) not in sys.path:  # MedCNNLib is imported as Slicer imports it
    sys.path.insert(0, str(EXTENSION))


def pid_alive(pid: int) -> bool:
    """True while a process exists and is not a zombie (killed, awaiting its reaper)."""
    if Path("/proc").is_dir():
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (FileNotFoundError, ProcessLookupError):
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
