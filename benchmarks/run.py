"""MedCNN's benchmark: one command, every row measured side by side in the same run.

    python benchmarks/run.py [--quick] [--out benchmarks/results/latest.json]

Rows (see benchmarks/README.md): the I/O floor, the naive MONAI pipeline, MedCNN's network plus
heatmap alone, MedCNN warm (the persistent worker), MedCNN cold (a new ``medcnn analyze``
process), ``medcnn batch`` throughput on 1 and 2 processes (torchrun), and training steps on 1
and 2 processes. Each row runs in its own process, so its peak memory is its own. Absolute
times move with the machine's load (recorded in the JSON); the ratios hold better.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from scans import LIDC, POINT_RAS, build_scans, lidc_manifest  # noqa: E402

PYTHON = sys.executable
BATCH_INCOMPLETE = 11  # some cases failed: counted from predictions.csv, not an error here


# --- running things ----------------------------------------------------------------------------


def measure(kind: str, **args: object) -> dict:
    """Run ``measure.py KIND`` in a fresh process and return its JSON line."""
    done = subprocess.run(
        [PYTHON, str(HERE / "measure.py"), kind, json.dumps(args)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    if done.returncode != 0:
        raise RuntimeError(f"measure {kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def timed_child(command: list[str], allowed: tuple[int, ...] = (0,)) -> tuple[float, float, str]:
    """Wall time, peak resident memory in MB (the largest process of the command's tree) and
    stderr of a command, run and waited for by ``measure.py child``."""
    result = measure("child", command=command)
    if result["returncode"] not in allowed:
        raise RuntimeError(
            f"{' '.join(command)} failed ({result['returncode']}):\n{result['stderr_tail']}"
        )
    return result["times_s"][0], result["child_peak_rss_mb"], result["stderr_tail"]


class Worker:
    """``python -m medcnn.app.worker`` as a viewer runs it: started once, then a request a click."""

    def __init__(self, bundle: Path, env: dict | None = None, environ: dict | None = None) -> None:
        """``env`` is added to ``environ`` (default this process's environment)."""
        self.process = subprocess.Popen(
            [PYTHON, "-m", "medcnn.app.worker", "--bundle", str(bundle), "--trust-bundle"],
            cwd=REPO,
            env={**(os.environ if environ is None else environ), **(env or {})},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        hello = json.loads(self.process.stdout.readline())  # the engine's stages and codes
        if hello.get("event") != "hello":
            raise RuntimeError(f"the worker did not say hello: {hello}")
        ready = json.loads(self.process.stdout.readline())
        if ready.get("event") != "ready":
            raise RuntimeError(f"the worker did not start: {ready}")
        self.count = 0

    def analyze(self, image: str, point: list[float], out: Path) -> tuple[float, dict]:
        self.count += 1
        request = {"id": str(self.count), "image": image, "point": point, "out": str(out)}
        started = time.perf_counter()
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        while True:
            message = json.loads(self.process.stdout.readline())
            if message.get("event") in ("result", "error"):
                break
        elapsed = time.perf_counter() - started
        if message["event"] == "error":
            raise RuntimeError(f"the worker failed: {message['message']}")
        return elapsed, message["result"]

    def peak_rss_mb(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024.0

    def close(self) -> None:
        self.process.stdin.write(json.dumps({"id": "q", "command": "quit"}) + "\n")
        self.process.stdin.close()
        self.process.wait(timeout=60)


# --- summaries ---------------------------------------------------------------------------------


def summary(times: list[float]) -> dict:
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "runs": len(times),
    }


def median_stages(stages: list[dict]) -> dict:
    keys = [k for k in stages[0] if k != "total"]
    return {k: round(statistics.median(s[k] for s in stages), 4) for k in keys}


def machine_state() -> dict:
    training = subprocess.run(
        ["pgrep", "-f", "train_cross_validation"], capture_output=True, text=True
    ).stdout.split()
    return {
        "load_average": list(os.getloadavg()),
        "cpus": os.cpu_count(),
        "training_processes_running": len(training),
    }


# --- the rows ----------------------------------------------------------------------------------


def floor_rows(scans: dict[str, Path], repeats: int) -> dict:
    rows = {}
    for name, path in scans.items():
        readers = (
            ["pydicom", "sitk_series"] if name.endswith("dicom") else ["nibabel", "sitk_image"]
        )
        candidates = {}
        for reader in readers:
            result = measure("floor", image=str(path), reader=reader, repeats=repeats)
            candidates[reader] = {
                **summary(result["times_s"]),
                "peak_rss_mb": result["peak_rss_mb"],
            }
        best = min(candidates, key=lambda r: candidates[r]["median_s"])
        rows[name] = {**candidates[best], "reader": best, "candidates": candidates}
    return rows


def naive_rows(scans: dict[str, Path], bundle: Path, repeats: int) -> dict:
    rows = {}
    for name, path in scans.items():
        result = measure(
            "naive", image=str(path), point=POINT_RAS, bundle=str(bundle), repeats=repeats
        )
        rows[name] = {
            **summary(result["times_s"]),
            "stages_s": median_stages(result["stages_s"]),
            "peak_rss_mb": result["peak_rss_mb"],
            "rss_after_import_mb": result["rss_after_import_mb"],
        }
    return rows


def warm_rows(
    scans: dict[str, Path], bundle: Path, repeats: int, tmp: Path, env: dict | None = None
) -> dict:
    """One fresh worker a scan, so each scan's peak memory is its own."""
    rows = {}
    for name, path in scans.items():
        worker = Worker(bundle, env)
        times, stages = [], []
        for n in range(repeats + 1):
            elapsed, result = worker.analyze(str(path), list(POINT_RAS), tmp / f"warm_{name}_{n}")
            if n:  # the first request pays oneDNN's first-call set-up; a viewer does it at start
                times.append(elapsed)
                stages.append(result["timings_s"])
        rows[name] = {
            **summary(times),
            "stages_s": median_stages(stages),
            "peak_rss_mb": worker.peak_rss_mb(),
            "probability": result["probability"],
        }
        worker.close()
    return rows


def cold_rows(scans: dict[str, Path], bundle: Path, repeats: int, tmp: Path) -> dict:
    rows = {}
    for name, path in scans.items():
        times, peaks = [], []
        for n in range(repeats):
            out = tmp / f"cold_{name}_{n}"
            command = [PYTHON, "-m", "medcnn", "analyze", str(path), "--point"]
            command += [str(v) for v in POINT_RAS]
            command += ["--out", str(out), "--bundle", str(bundle), "--trust-bundle"]
            elapsed, peak, _ = timed_child(command)
            times.append(elapsed)
            peaks.append(peak)
        stages = json.loads((out / "result.json").read_text())["timings_s"]
        rows[name] = {**summary(times), "stages_s": stages, "peak_rss_mb": max(peaks)}
    return rows


def network_row(scans: dict[str, Path], bundle: Path, nodules: int, repeats: int) -> dict:
    """The clicked point of the chest CT, and LIDC nodules (every n-th, all sizes)."""
    with open(LIDC / "nodules.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    step = max(1, len(table) // nodules)
    cases = [[str(scans["ct141_dicom"]), list(POINT_RAS)]]
    cases += [
        [str(LIDC / r["image"]), [float(r[k]) for k in ("center_r", "center_a", "center_s")]]
        for r in table[::step][:nodules]
    ]
    result = measure("network", cases=cases, bundle=str(bundle), repeats=repeats)
    times, passes = result["times_s"], result["box_passes"]
    return {
        **summary(times),
        "p90_s": sorted(times)[int(0.9 * (len(times) - 1))],
        "under_100ms": sum(t < 0.1 for t in times) / len(times),
        "stages_s": median_stages(result["stages_s"]),
        "nodules": len(times),
        "box_passes_median": result["box_passes_median"],
        "box_passes_counts": {str(p): passes.count(p) for p in sorted(set(passes))},
        "chest_ct_point": {"s": times[0], "box_passes": passes[0]},
        "members": result["members"],
        "threads": result["threads"],
    }


def batch_rows(bundle: Path, limit: int | None, tmp: Path, group_size: int | None = None) -> dict:
    """``medcnn batch`` on 1 and 2 processes; ``group_size`` 1 is one nodule at a time."""
    manifest = lidc_manifest(tmp / "manifest.csv", limit)
    n = sum(1 for _ in open(manifest)) - 1
    rows = {}
    for processes in (1, 2):
        out = tmp / f"batch_{processes}_{group_size}"
        options = [str(manifest), "--out", str(out), "--bundle", str(bundle), "--trust-bundle"]
        options.append("--no-progress")
        if group_size is not None:
            options += ["--group-size", str(group_size)]
        if processes == 1:
            command = [PYTHON, "-m", "medcnn", "batch", *options]
        else:
            command = [PYTHON, "-m", "torch.distributed.run", "--standalone"]
            command += [f"--nproc_per_node={processes}", "-m", "medcnn", "batch", *options]
        # Exit 11: some cases failed (counted below); torchrun reports a rank's 11 as its own 1.
        elapsed, peak, _ = timed_child(command, allowed=(0, BATCH_INCOMPLETE, 1))
        with open(out / "predictions.csv", newline="") as handle:
            failed = sum(1 for row in csv.DictReader(handle) if row["error"])
        rows[f"{processes}_process"] = {
            "nodules": n,
            "failed": failed,
            "wall_s": elapsed,
            "nodules_per_s": n / elapsed,
            "peak_rss_mb": peak,
        }
    return rows


def training_rows(steps: int, limit: int) -> dict:
    args = {"data": str(LIDC), "steps": steps, "limit": limit, "threads": 2}
    rows = {"1_process": measure("train", **args)}
    # Two processes: torchrun around the same measurement (each rank gets one of the threads).
    command = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += [str(HERE / "measure.py"), "train", json.dumps(args)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"DDP training failed:\n{done.stderr[-3000:]}")
    rows["2_process"] = json.loads(done.stdout.strip().splitlines()[-1])
    for row in rows.values():
        row["epoch_s_extrapolated"] = row["fold_cases"] / row["samples_per_s"]
    return rows


# --- main --------------------------------------------------------------------------------------


def random_bundle(tmp: Path, members: int) -> Path:
    """A trusted bundle with random weights; speed does not depend on the weights' values."""
    import torch

    from medcnn.bundle import load_patch_spec, sign_weights
    from medcnn.nodule.network import NoduleEnsemble

    bundle = tmp / "random_bundle"
    shutil.copytree(REPO / "monai_bundle" / "lung_nodule_ct" / "configs", bundle / "configs")
    (bundle / "models").mkdir(parents=True)
    torch.manual_seed(0)
    window = load_patch_spec(bundle).hu_window
    sign_weights(bundle, NoduleEnsemble(n_members=members, hu_window=window).state_dict())
    return bundle


def scan_names(result: dict) -> list[str]:
    return [name for name in result["floor"] if name != "machine_during"]


def ratios(result: dict) -> dict:
    out = {}
    for name in scan_names(result):
        floor = result["floor"][name]["median_s"]
        warm = result["medcnn_warm"][name]["median_s"]
        naive = result["naive_monai"][name]["median_s"]
        out[name] = {
            "warm_over_floor": warm / floor,
            "naive_over_warm": naive / warm,
            "cold_s": result["medcnn_cold"][name]["median_s"],
        }
    return out


def _rows(section: dict) -> list[tuple[str, dict]]:
    return [(k, v) for k, v in section.items() if k != "machine_during"]


def print_table(result: dict) -> None:
    names = scan_names(result)
    print(f"\nMedCNN benchmark ({result['settings']['mode']}), model: {result['model']}")
    print(f"machine: {result['machine']['before']}")
    header = f"{'row':<26}" + "".join(f"{n:>22}" for n in names)
    print(header)
    print("-" * len(header))
    for key, label in (
        ("floor", "I/O floor"),
        ("naive_monai", "naive MONAI"),
        ("medcnn_warm", "MedCNN warm (worker)"),
        ("medcnn_cold", "MedCNN cold (process)"),
    ):
        cells = []
        for n in names:
            row = result[key][n]
            cells.append(f"{row['median_s']:.3f}s {row['peak_rss_mb']:.0f}MB")
        print(f"{label:<26}" + "".join(f"{c:>22}" for c in cells))
    print(
        f"{'warm / floor':<26}"
        + "".join(f"{result['ratios'][n]['warm_over_floor']:>22.2f}" for n in names)
    )
    print(
        f"{'naive / warm':<26}"
        + "".join(f"{result['ratios'][n]['naive_over_warm']:>22.1f}" for n in names)
    )
    if "medcnn_warm_omp_passive" in result:
        row = result["medcnn_warm_omp_passive"]["ct141_dicom"]
        print(f"{'warm, OMP PASSIVE':<26}{row['median_s']:>15.3f}s {row['peak_rss_mb']:.0f}MB")
    print("\nMedCNN warm stages (median s):")
    for n in names:
        print(f"  {n:<14} {result['medcnn_warm'][n]['stages_s']}")
    net = result["network_heatmap"]
    print(
        f"\nnetwork + heatmap, one nodule: median {net['median_s'] * 1000:.0f} ms, p90 "
        f"{net['p90_s'] * 1000:.0f} ms over {net['nodules']} nodules ({net['members']} members, "
        f"{net['threads']} threads, box passes {net['box_passes_counts']}); "
        f"{net['under_100ms']:.0%} under 100 ms; the chest CT point: "
        f"{net['chest_ct_point']['s'] * 1000:.0f} ms ({net['chest_ct_point']['box_passes']} passes)"
    )
    for key in ("batch", "batch_one_at_a_time"):
        for processes, row in _rows(result.get(key, {})):
            print(
                f"{key} {processes}: {row['nodules']} nodules in {row['wall_s']:.1f} s = "
                f"{row['nodules_per_s']:.1f} nodules/s ({row['failed']} failed)"
            )
    for processes, row in _rows(result["training"]):
        print(
            f"training {processes}: {row['samples_per_s']:.1f} samples/s, one epoch "
            f"(fold 0, {row['fold_cases']} cases) ~{row['epoch_s_extrapolated']:.0f} s "
            f"(extrapolated from {row['samples']} samples)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, a smaller batch")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "latest.json")
    parser.add_argument("--bundle", type=Path, help="bundle to measure (default: the shipped one)")
    parser.add_argument(
        "--random-members",
        type=int,
        help="measure a random-weight ensemble of this many members instead of a bundle",
    )
    parser.add_argument("--skip", nargs="*", default=[], help="rows to leave out")
    parser.add_argument("--only", nargs="*", default=[], help="measure only these rows")
    parser.add_argument(
        "--report", type=Path, help="print the table of an existing results file and exit"
    )
    args = parser.parse_args(argv)
    if args.report:
        result = json.loads(args.report.read_text())
        result.setdefault("ratios", ratios(result))
        print_table(result)
        return 0
    repeats = 3 if args.quick else 5
    with tempfile.TemporaryDirectory(prefix="medcnn-bench-") as tmp_name:
        tmp = Path(tmp_name)
        if args.random_members:
            bundle, model = random_bundle(tmp, args.random_members), "random weights"
        else:
            bundle = (args.bundle or REPO / "monai_bundle" / "lung_nodule_ct").resolve()
            model = str(bundle)
        from medcnn.bundle import load_engine

        members = load_engine(bundle, trusted=True)[0].n_members
        print("building the scans ...", flush=True)
        scans = build_scans(tmp / "scans")
        result: dict = {
            "settings": {"mode": "quick" if args.quick else "full", "repeats": repeats},
            "model": f"{model} ({members} members)",
            "machine": {"before": machine_state(), "platform": platform.platform()},
            "point_ras": list(POINT_RAS),
        }
        steps = [
            ("floor", lambda: floor_rows(scans, repeats)),
            ("naive_monai", lambda: naive_rows(scans, bundle, 2 if args.quick else 3)),
            ("network_heatmap", lambda: network_row(scans, bundle, 20 if args.quick else 60, 3)),
            ("medcnn_warm", lambda: warm_rows(scans, bundle, repeats, tmp)),
            (
                "medcnn_warm_omp_passive",
                lambda: warm_rows(
                    {"ct141_dicom": scans["ct141_dicom"]},
                    bundle,
                    repeats,
                    tmp,
                    {"OMP_WAIT_POLICY": "PASSIVE"},
                ),
            ),
            ("medcnn_cold", lambda: cold_rows(scans, bundle, 2 if args.quick else 3, tmp)),
            ("batch", lambda: batch_rows(bundle, 120 if args.quick else None, tmp)),
            (
                "batch_one_at_a_time",
                lambda: batch_rows(bundle, 120 if args.quick else None, tmp, group_size=1),
            ),
            ("training", lambda: training_rows(4 if args.quick else 8, 160 if args.quick else 400)),
        ]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        for key, run in steps:
            if key in args.skip or (args.only and key not in args.only):
                continue
            print(f"measuring {key} ...", flush=True)
            started = time.perf_counter()
            load_before = machine_state()
            result[key] = run()
            if isinstance(result[key], dict):
                result[key]["machine_during"] = {"before": load_before, "after": machine_state()}
            print(f"  {time.perf_counter() - started:.0f} s: {json.dumps(result[key])}", flush=True)
            args.out.write_text(json.dumps(result, indent=2) + "\n")  # partial results survive
        result["machine"]["after"] = machine_state()
        if {"floor", "naive_monai", "medcnn_warm", "medcnn_cold"} <= set(result):
            result["ratios"] = ratios(result)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if {"ratios", "network_heatmap", "batch", "training"} <= set(result):
        print_table(result)
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
