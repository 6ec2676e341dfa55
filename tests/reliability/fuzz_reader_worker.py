"""A sandbox process for fuzzing ``read_scan``: a crash or a hang here cannot take pytest down.

Reads one JSON request a line on stdin, ``{"files": {name: base64}, "target": name}``, writes
the files into a fresh folder, reads ``target`` and answers one JSON line: ``{"outcome": "ok"}``,
``{"outcome": "clean", "type": ..., "message": ...}`` for a ``MedCNNError``, or
``{"outcome": "other", "type": ..., "message": ..., "traceback": ...}`` for anything else.
"""

from __future__ import annotations

import base64
import json
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

from medcnn.errors import MedCNNError
from medcnn.reading import read_scan


def answer(request: dict) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="medcnn-fuzz-"))
    try:
        for name, data in request["files"].items():
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(base64.b64decode(data))
        try:
            read_scan(folder / request["target"])
        except MedCNNError as error:
            return {"outcome": "clean", "type": type(error).__name__, "message": str(error)}
        except Exception as error:
            return {
                "outcome": "other",
                "type": type(error).__name__,
                "message": str(error)[:500],
                "traceback": traceback.format_exc()[-3000:],
            }
        return {"outcome": "ok"}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    print(json.dumps({"outcome": "ready"}), flush=True)
    for line in sys.stdin:
        print(json.dumps(answer(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
