"""Fixtures for the web front end's tests (``medcnn.web``).

They need the ``web`` extra (trame-slicer, with Slicer's MRML from ``slicer-core``); without it
their modules skip, with the reason. The stand-in worker of the Slicer extension's tests
(``tests/slicer/slicer_standin_worker.py``) answers in seconds where a test checks the viewer,
not the model; the browser tests run the real worker.
"""

from __future__ import annotations

import sys
from pathlib import Path

SLICER_TESTS = Path(__file__).resolve().parents[1] / "slicer"
if str(SLICER_TESTS) not in sys.path:
    sys.path.insert(0, str(SLICER_TESTS))
