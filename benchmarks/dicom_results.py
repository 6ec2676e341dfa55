"""What --dicom adds to a warm click on the real chest CT series: the same analyzer, the same
point, alternately without and with the DICOM results (SEG, Parametric Map, SR), in one process.

    python benchmarks/dicom_results.py [--repeats 7]

Writes ``benchmarks/results/dicom_results.json``: the median seconds of each, their ratio, and
the median of the ``dicom`` timing (making the three objects in memory; saving them is in
``write``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from scans import CHEST_CT, POINT_RAS

from medcnn.app.analysis import Analyzer

RESULTS = Path(__file__).resolve().parent / "results" / "dicom_results.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    analyzer = Analyzer()
    seconds: dict[bool, list[float]] = {False: [], True: []}
    making: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for dicom in (False, True):  # warm both paths (imports, caches) before measuring
            analyzer.analyze_file(CHEST_CT, POINT_RAS, Path(tmp) / "warm", dicom=dicom)
        for n in range(args.repeats):
            for dicom in (False, True):
                started = time.perf_counter()
                result = analyzer.analyze_file(CHEST_CT, POINT_RAS, Path(tmp) / f"{n}", dicom=dicom)
                seconds[dicom].append(time.perf_counter() - started)
                if dicom:
                    making.append((result.timings_s or {})["dicom"])
    plain, with_dicom = statistics.median(seconds[False]), statistics.median(seconds[True])
    report = {
        "scan": "chest_ct_dicom (512x512x141, real)",
        "point_ras": list(POINT_RAS),
        "repeats": args.repeats,
        "warm_click_s": round(plain, 4),
        "warm_click_with_dicom_s": round(with_dicom, 4),
        "ratio": round(with_dicom / plain, 3),
        "making_the_objects_s": round(statistics.median(making), 4),
    }
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
