"""What the web front end needs before Slicer's libraries load, each missing piece one sentence
(``UsageError``, exit code 2).

The extension's library (``MedCNNLib``) is imported from the source checkout that holds this
engine, as the Slicer extension imports it from its module folder, or from the copy an
installed package carries (``medcnn/_extension/``, setup.py): one logic, two front ends.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from medcnn.errors import UsageError

EXTENSION_MODULE_DIR = Path(__file__).resolve().parents[3] / "MedCNNExtension" / "MedCNN"
PACKAGED_EXTENSION_DIR = Path(__file__).resolve().parents[1] / "_extension"
INSTALL_HINT = (
    'pip install "torch==2.13.0" "medcnn[web]" (in a clone: pip install "torch==2.13.0" -e '
    '".[web]")'
)


def require_web_packages() -> None:
    """Refuse in one sentence when trame-slicer or Slicer's MRML is not installed."""
    missing = [
        name for name in ("trame_slicer", "slicer") if importlib.util.find_spec(name) is None
    ]
    if missing:
        raise UsageError(
            f"The web front end needs {' and '.join(missing)}, which are not installed; run "
            f"{INSTALL_HINT}."
        )


def extension_library() -> ModuleType:
    """The extension's library ``MedCNNLib``, put on the path from the checkout or the
    package."""
    found = [
        folder
        for folder in (EXTENSION_MODULE_DIR, PACKAGED_EXTENSION_DIR)
        if (folder / "MedCNNLib" / "AnalysisLogic.py").exists()
    ]
    if not found:
        raise UsageError(
            f"The 3D Slicer extension's logic, which the web front end shares, is neither at "
            f"{EXTENSION_MODULE_DIR} nor at {PACKAGED_EXTENSION_DIR}; reinstall MedCNN: "
            f"{INSTALL_HINT}."
        )
    if str(found[0]) not in sys.path:
        sys.path.insert(0, str(found[0]))
    import MedCNNLib

    return MedCNNLib


def use_offscreen_rendering() -> None:
    """Render without a display where there is none (a server, a container, CI): VTK's EGL
    window, as trame-slicer's headless setups do, unless the user chose another."""
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
