"""What --dicom adds to a warm click on the real chest CT series: the same analyzer, the same
point, alternately without and with the DICOM results (SEG, Parametric Map, SR), in one process.

    python benchmarks/dicom_results.py [--repeats 7]

Writes ``benchmarks/results/dicom_results.json``: the median seconds of each, their ratio and
difference, the median of the ``dicom`` timing (making the three objects in memory; saving them
is in ``write``), where that time goes (each part timed alone, medians), and the machine's load
average before and after (a neighbour's work slows the network, and so the click, but hardly
the DICOM objects: the ratio is lower on a busy machine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scans import CHEST_CT, POINT_RAS

from medcnn.app.analysis import Analyzer
from medcnn.outputs import dicom_results as made
from medcnn.outputs.dicom_source import dicom_source

RESULTS = Path(__file__).resolve().parent / "results" / "dicom_results.json"


def median_s(work: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return round(statistics.median(times), 4)


def where_the_time_goes(analyzer: Analyzer, folder: Path, repeats: int) -> dict[str, float]:
    """Each part of --dicom's work on one analysis, timed alone: reading the source headers,
    highdicom's building of each object, pydicom's saving of the three."""
    point = np.asarray(POINT_RAS)
    scan = analyzer._read(CHEST_CT, point, None, {})
    analysis = analyzer.analyze_volume(scan, point, lambda stage, fraction: None, {})
    source = dicom_source(scan, analysis.heatmap)
    equipment = made._Equipment.of(analysis.result)
    seg = made._segmentation(analysis.segmentation, source, equipment, made.hd.UID())
    pm = made._parametric_map(analysis.heatmap, source, equipment)
    objects = made.nodule_dicom_results(
        analysis.result, analysis.segmentation, analysis.heatmap, source
    )

    files = {"seg.dcm": objects.segmentation, "pm.dcm": objects.heatmap, "sr.dcm": objects.report}

    def save() -> None:
        for name, dataset in files.items():
            dataset.save_as(folder / name, enforce_file_format=True)

    tracking = made.hd.UID()
    return {
        "source_headers_s": median_s(lambda: dicom_source(scan, analysis.heatmap), repeats),
        "segmentation_s": median_s(
            lambda: made._segmentation(analysis.segmentation, source, equipment, tracking),
            repeats,
        ),
        "parametric_map_s": median_s(
            lambda: made._parametric_map(analysis.heatmap, source, equipment), repeats
        ),
        "report_s": median_s(
            lambda: made._report(analysis.result, seg, pm, source, equipment, tracking), repeats
        ),
        "saving_s": median_s(save, repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
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
        parts = where_the_time_goes(analyzer, Path(tmp), args.repeats)
    plain, with_dicom = statistics.median(seconds[False]), statistics.median(seconds[True])
    report = {
        "scan": "chest_ct_dicom (512x512x141, real)",
        "point_ras": list(POINT_RAS),
        "repeats": args.repeats,
        "warm_click_s": round(plain, 4),
        "warm_click_with_dicom_s": round(with_dicom, 4),
        "ratio": round(with_dicom / plain, 3),
        "added_s": round(with_dicom - plain, 4),
        "making_the_objects_s": round(statistics.median(making), 4),
        "parts": parts,
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
