"""One measurement in its own process: ``python benchmarks/measure.py KIND JSON_ARGS``.

Prints one JSON line: the wall time of each repeat, the stage times where there are stages,
the process's peak resident memory (``VmHWM``) and its resident memory once the libraries were
imported (``VmRSS`` before the first repeat), so the memory a scan costs can be told apart from
what Python, torch and MONAI cost by merely being loaded.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def memory_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def read_floor(image: str, reader: str) -> tuple[int, ...]:
    """Only load the scan's voxels (HU), with one library; nothing else."""
    if reader == "pydicom":
        import pydicom

        # The files in name order (as the series is stored, and as both floors get them): no
        # geometry, no checks, each slice decoded straight into the volume, rescaled in place.
        files = sorted(Path(image).glob("*.dcm"))
        first = pydicom.dcmread(files[0])
        slope, intercept = float(first.RescaleSlope), float(first.RescaleIntercept)
        volume = np.empty((len(files), first.Rows, first.Columns), dtype=np.int16)
        for k, path in enumerate(files):
            volume[k] = pydicom.dcmread(path).pixel_array
        if slope != 1:
            volume *= np.int16(slope)
        volume += np.int16(intercept)
        return volume.shape
    if reader == "sitk_series":
        import SimpleITK as sitk

        series = sitk.ImageSeriesReader()
        series.SetImageIO("GDCMImageIO")
        series.SetFileNames(sorted(str(p) for p in Path(image).glob("*.dcm")))
        return sitk.GetArrayFromImage(series.Execute()).shape
    if reader == "nibabel":
        import nibabel as nib

        return np.asanyarray(nib.load(image).dataobj).shape
    if reader == "sitk_image":
        import SimpleITK as sitk

        return sitk.GetArrayFromImage(sitk.ReadImage(image)).shape
    raise ValueError(reader)


def floor(args: dict) -> dict:
    rss = memory_mb("VmRSS")
    times = []
    for _ in range(args["repeats"]):
        started = time.perf_counter()
        read_floor(args["image"], args["reader"])
        times.append(time.perf_counter() - started)
    return {"times_s": times, "rss_after_import_mb": rss}


def naive(args: dict) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch
    from naive import naive_analyze

    from medcnn.bundle import load_patch_spec, verified_weights_path
    from medcnn.nodule.network import ensemble_from_state_dict

    weights, _ = verified_weights_path(Path(args["bundle"]))
    spec = load_patch_spec(Path(args["bundle"]))
    model = ensemble_from_state_dict(torch.load(weights, weights_only=True), spec.hu_window)
    rss = memory_mb("VmRSS")
    times, stages = [], []
    for _ in range(args["repeats"]):
        started = time.perf_counter()
        _, timings = naive_analyze(model, args["image"], np.asarray(args["point"]), spec)
        times.append(time.perf_counter() - started)
        stages.append(timings)
    return {"times_s": times, "stages_s": stages, "rss_after_import_mb": rss}


def analyzer(args: dict) -> dict:
    """MedCNN warm, in process: an Analyzer already loaded, ``analyze_file`` per repeat."""
    import tempfile

    from medcnn.app.analysis import Analyzer

    engine = Analyzer(args["bundle"], trusted=True)
    rss = memory_mb("VmRSS")
    times, stages = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(args["repeats"]):
            started = time.perf_counter()
            result = engine.analyze_file(args["image"], args["point"], Path(tmp) / str(n))
            times.append(time.perf_counter() - started)
            stages.append(result.timings_s)
    return {"times_s": times, "stages_s": stages, "rss_after_import_mb": rss}


def network(args: dict) -> dict:
    """Network plus heatmap for nodules whose patch is already cut, as ``analyze`` runs them:
    ``cases`` is a list of ``[image, point]``; each is timed ``repeats`` times (median kept)."""
    import statistics

    import torch

    from medcnn.bundle import load_engine, load_patch_spec
    from medcnn.nodule.explain import malignancy_heatmap
    from medcnn.nodule.inference import predict
    from medcnn.nodule.preprocessing import sample_patch
    from medcnn.reading import read_scan

    model, _ = load_engine(Path(args["bundle"]), trusted=True)
    spec = load_patch_spec(Path(args["bundle"]))
    patches = [sample_patch(read_scan(i), np.asarray(p), spec) for i, p in args["cases"]]
    predict(model, patches[0], spec)  # oneDNN's first-call set-up, paid once by a worker
    rss = memory_mb("VmRSS")
    times, stages, passes = [], [], []
    for patch in patches:
        runs = []
        for _ in range(args["repeats"]):
            started = time.perf_counter()
            prediction = predict(model, patch, spec)
            middle = time.perf_counter()
            malignancy_heatmap(model, prediction.network_input, prediction.activations)
            runs.append((time.perf_counter() - started, middle - started))
        total, net = sorted(runs)[len(runs) // 2]
        times.append(total)
        stages.append({"network": net, "heatmap": total - net})
        passes.append(prediction.box_passes)
    return {
        "times_s": times,
        "stages_s": stages,
        "rss_after_import_mb": rss,
        "box_passes": passes,
        "box_passes_median": statistics.median(passes),
        "members": model.n_members,
        "threads": torch.get_num_threads(),
    }


def train(args: dict) -> dict:
    """A few steps of one fold's training; the epoch is extrapolated from the steps' rate."""
    import logging
    import tempfile
    from dataclasses import replace

    import torch

    from medcnn import distributed
    from medcnn.training.data.lidc import load_cases
    from medcnn.training.loop import train_fold
    from medcnn.training.recipe import load_train_settings

    distributed.init_process_group()  # under torchrun: join the other ranks

    logging.disable(logging.INFO)
    cases = load_cases(Path(args["data"]), limit=args["limit"])
    settings = load_train_settings(  # the shipped train.json's recipe
        None, epochs=1, max_steps_per_epoch=args["steps"], threads=args["threads"]
    )
    fold_size = sum(1 for c in cases if c.fold != 0)
    # Warm-up: one step, so the timed run does not pay oneDNN's first-call set-up.
    with tempfile.TemporaryDirectory() as tmp:
        train_fold(cases, 0, Path(tmp), replace(settings, max_steps_per_epoch=1))
    rss = memory_mb("VmRSS")
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        train_fold(cases, 0, Path(tmp), settings)
        elapsed = time.perf_counter() - started
    samples = min(args["steps"] * settings.batch_size, fold_size)
    return {
        "times_s": [elapsed],
        "fold_cases": fold_size,
        "processes": distributed.world().size,
        "samples": samples,
        "samples_per_s": samples / elapsed,
        "threads": torch.get_num_threads(),
        "rss_after_import_mb": rss,
    }


def child(args: dict) -> dict:
    """Run a command; its wall time, exit code and peak resident memory (the largest process of
    its tree, from ``wait4``). Measured from this small process: a child's ``ru_maxrss`` starts
    at its parent's resident size when forked, so a large parent would hide the child's own."""
    import subprocess

    started = time.perf_counter()
    process = subprocess.Popen(args["command"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, stderr = process.communicate()
    elapsed = time.perf_counter() - started
    import resource

    return {
        "times_s": [elapsed],
        "returncode": process.returncode,
        "child_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0,
        "stderr_tail": stderr.decode(errors="replace")[-2000:],
    }


KINDS = {
    "floor": floor,
    "naive": naive,
    "analyzer": analyzer,
    "network": network,
    "train": train,
    "child": child,
}

if __name__ == "__main__":
    kind, raw = sys.argv[1], sys.argv[2]
    answer = KINDS[kind](json.loads(raw))
    answer["peak_rss_mb"] = memory_mb("VmHWM")
    if int(os.environ.get("RANK", 0)) == 0:  # under torchrun, rank 0 answers
        print(json.dumps(answer))
