"""Paths, points and helpers shared by the Slicer extension's tests (fixtures: conftest.py)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

REPO = Path(__file__).resolve().parents[2]
EXTENSION = REPO / "MedCNNExtension" / "MedCNN"
STANDIN_WORKER = Path(__file__).resolve().parent / "slicer_standin_worker.py"
LUNG1_NODULE_RAS = (21.86, 120.54, -611.50)
# Deep in the right lung of chest_ct_dicom (no nodule there: the check is placement, not finding)
CHEST_LUNG_RAS = (85.9, -11.8, -32.5)
SLICER_CORE_MISSING = (
    "Slicer's MRML is not importable: install slicer-core (pip install slicer-core==5.11.0.6)"
)


def radiograph_matrix() -> np.ndarray:
    """The IJK-to-RAS matrix of a frontal radiograph held upright in a coronal plane, turned 10
    degrees about the superior axis, with unequal pixel spacing and an origin away from 0: i
    along a row to the patient's left, j down the columns, k (one slice) through the film,
    right-handed as MRML's readers make every volume they load."""
    angle = np.radians(10.0)
    turn = np.array(
        [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0, 0, 1.0]]
    )
    axes = turn @ np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, -1.0, 0.0]]).T  # columns
    matrix = np.eye(4)
    matrix[:3, :3] = axes @ np.diag([0.3, 0.25, 2.0])
    matrix[:3, 3] = [84.0, -31.5, 160.0]
    return matrix


class SettingsStore(dict):
    """QSettings as ``Parameters.save`` and ``load`` use it: values by key, kept in memory."""

    def value(self, key, default=None):
        return self.get(key, default)

    def setValue(self, key, value):
        self[key] = value


class Scan(NamedTuple):
    """A CT file for the extension's tests and a point on its nodule (RAS mm)."""

    name: str
    path: Path
    nodule_ras: tuple[float, float, float]


def write_nrrd(array: np.ndarray, ras_affine: np.ndarray, path: Path) -> Path:
    """An uncompressed NRRD in LPS space, as 3D Slicer writes one, of an (i, j, k) array and
    its voxel-to-RAS affine."""
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ras_affine

    def vector(values) -> str:
        return "(" + ",".join(repr(float(v)) for v in values) + ")"

    header = (
        "NRRD0004\n"
        "type: short\n"
        "dimension: 3\n"
        "space: left-posterior-superior\n"
        f"sizes: {' '.join(str(n) for n in array.shape)}\n"
        f"space directions: {' '.join(vector(lps[:3, axis]) for axis in range(3))}\n"
        "kinds: domain domain domain\n"
        "endian: little\n"
        "encoding: raw\n"
        f"space origin: {vector(lps[:3, 3])}\n\n"
    )
    path.write_bytes(header.encode("ascii") + array.astype("<i2").tobytes(order="F"))
    return path


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, seen: Callable[[], object] = list
) -> None:
    """Wait for ``condition``; past ``timeout`` s fail, saying what was awaited and seen."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s; saw {seen()}")
        time.sleep(0.02)


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
