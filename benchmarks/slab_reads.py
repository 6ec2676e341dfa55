"""Reading a whole scan against reading only the slab a click needs, per file format.

    python benchmarks/slab_reads.py [--repeats 5] [--out /tmp/slab_reads.json]

3D Slicer hands MedCNN its volume as uncompressed NRRD, and archives hold NIfTI and MetaImage,
so ``read_scan`` reads only the slab of slices the network's cube reaches where the format
allows it. This times ``read_scan`` on the thin-slice CT (512x512x600, built from the real chest
CT as in ``run.py``) written in each format, whole and around the benchmark's point, in the same
run; the ratio whole / slab is what to compare across machines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scans import CHEST_CT, POINT_RAS, read_series, thin_slice_version  # noqa: E402

from medcnn.reading import ScanRegion, read_scan  # noqa: E402

FORMATS = {
    "nrrd_raw (3D Slicer's hand-off)": ("scan.nrrd", False),
    "nrrd_gzip": ("scan_gz.nrrd", True),
    "mha_raw": ("scan.mha", False),
    "nifti_gzip": ("scan.nii.gz", True),
}
HALF_WIDTH_MM = 16.0  # the network's 32 mm cube, as ``Analyzer`` asks


def median_time(path: Path, around: ScanRegion | None, repeats: int) -> tuple[float, int]:
    times, slices = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        volume = read_scan(path, around=around)
        times.append(time.perf_counter() - started)
        slices = volume.shape[2]
    return statistics.median(times), slices


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    around = ScanRegion(np.asarray(POINT_RAS), HALF_WIDTH_MM)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="medcnn-slab-") as tmp:
        thin = sitk.Cast(thin_slice_version(read_series(CHEST_CT), 600), sitk.sitkInt16)
        for name, (file_name, compressed) in FORMATS.items():
            path = Path(tmp) / file_name
            sitk.WriteImage(thin, str(path), useCompression=compressed)
            whole, all_slices = median_time(path, None, args.repeats)
            slab, slab_slices = median_time(path, around, args.repeats)
            rows[name] = {
                "whole_s": whole,
                "slab_s": slab,
                "whole_over_slab": whole / slab,
                "slices": [slab_slices, all_slices],
            }
            print(
                f"{name:<32} whole {whole:.3f} s, slab ({slab_slices} of {all_slices} slices) "
                f"{slab:.3f} s: {whole / slab:.1f}x",
                flush=True,
            )
    if args.out:
        args.out.write_text(json.dumps({"repeats": args.repeats, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
