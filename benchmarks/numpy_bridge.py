"""What copying arrays into tensors and back costs a warm click, against torch's NumPy bridge:
the path a click takes on 3D Slicer's macOS build (torch 2.2.2 beside NumPy 2, where the bridge
is missing, ``medcnn/tensors.py``), timed here by turning the bridge off in the same process.

    python benchmarks/numpy_bridge.py [--repeats 15]

One engine, the real chest CT series at the benchmark's point and a real NIH radiograph,
alternately with and without the bridge; writes ``benchmarks/results/numpy_bridge.json``: the
median seconds of each, their ratio, and the machine's load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from radiographs import XRAY
from scans import CHEST_CT, POINT_RAS

from medcnn import tensors
from medcnn.app.engine import Engine

RESULTS = Path(__file__).resolve().parent / "results" / "numpy_bridge.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    radiograph = sorted((XRAY / "nih" / "images").glob("*.png"))[0]
    clicks = {"ct": (CHEST_CT, POINT_RAS), "radiograph": (radiograph, None)}
    with_bridge = tensors.numpy_bridge
    load_before = os.getloadavg()[0]
    engine = Engine()
    seconds: dict[tuple[str, bool], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(-1, args.repeats):  # the first round warms both paths up
            for name, (image, point) in clicks.items():
                for bridge in (True, False):
                    tensors.numpy_bridge = with_bridge if bridge else (lambda: False)
                    started = time.perf_counter()
                    engine.analyze_file(image, point, Path(tmp) / f"{name}-{bridge}-{n}")
                    if n >= 0:
                        seconds.setdefault((name, bridge), []).append(time.perf_counter() - started)
    tensors.numpy_bridge = with_bridge
    report: dict[str, object] = {"repeats": args.repeats, "radiograph_file": radiograph.name}
    for name in clicks:
        bridged = statistics.median(seconds[(name, True)])
        copied = statistics.median(seconds[(name, False)])
        report[name] = {
            "warm_click_bridge_s": round(bridged, 4),
            "warm_click_copies_s": round(copied, 4),
            "ratio": round(copied / bridged, 3),
        }
    report["load_average_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
