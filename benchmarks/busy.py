"""A click on a busy computer: each row quiet and busy in the same run, as ratios.

    python benchmarks/busy.py --out benchmarks/results/busy.json           # 20-40 minutes
    python benchmarks/busy.py --quick --out /tmp/busy.json                 # the phantom, ~2 min
    python benchmarks/busy.py --cpus 0 1 ...      # every process on these CPUs only: a 2-core
                                                  # computer on a bigger machine
    python benchmarks/busy.py --report benchmarks/results/busy.json        # print a results file

A radiologist's computer is never quiet. Each row is measured with nothing else running
(``quiet``) and beside a competing CPU-bound process on the same cores (``busy``), alternating
quiet and busy rounds so that the machine's drift falls on both, and reported as busy / quiet
(a slowdown; about 2 is what sharing the cores fairly with one competitor costs):

- rows: ``warm`` (a click on a running ``python -m medcnn.app.worker``, as 3D Slicer runs it;
  its first click is not counted), ``cold`` (a new ``medcnn analyze`` process), ``batch``
  (``medcnn batch`` throughput) and ``training`` (steps of fold 0's training, with
  ``../shared/data/lidc_voi`` only);
- competitors: ``numpy`` (a matrix-multiply loop with as many BLAS threads as there are CPUs)
  and ``batch`` (a second ``medcnn batch``, over and over);
- variants, the environment of the measured MedCNN processes: ``medcnn`` (MedCNN's own
  threading, ``medcnn.threads``), ``legacy`` (the OpenMP runtimes' own spinning, as before
  MedCNN chose: ``GOMP_SPINCOUNT=300000``, ``KMP_BLOCKTIME=200``), ``passive``
  (``OMP_WAIT_POLICY=PASSIVE``) and ``one_thread`` (``OMP_NUM_THREADS=1``, the old advice).
  Each variant's quiet time over ``medcnn``'s says what the choice costs a quiet machine.

The threading variables of this shell are removed from the measured processes' environment, so
that each variant is what it says; the JSON records the machine's load around every row.
Without ``../shared/data`` (and with ``--quick``) it clicks the engine's synthetic phantom.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from run import Worker, machine_state  # noqa: E402
from scans import CHEST_CT, LIDC, POINT_RAS, lidc_manifest  # noqa: E402

PYTHON = sys.executable
BUNDLE = REPO / "monai_bundle" / "lung_nodule_ct"
# The threading variables a measured process must not inherit from this shell.
THREADING = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OMP_WAIT_POLICY",
    "GOMP_SPINCOUNT",
    "KMP_BLOCKTIME",
    "MEDCNN_THREADING",
    "OPENBLAS_NUM_THREADS",
)
VARIANTS = {
    "medcnn": {},
    "legacy": {"GOMP_SPINCOUNT": "300000", "KMP_BLOCKTIME": "200"},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "one_thread": {"OMP_NUM_THREADS": "1"},
}
NUMPY_LOOP = (
    "import numpy as np\n"
    "a = np.random.default_rng(0).random((768, 768))\n"
    "while True:\n"
    "    a = a @ a\n"
    "    a /= np.abs(a).max()\n"
)


def environment(variant: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in THREADING}
    return {**env, **VARIANTS[variant]}


# --- the competitors ---------------------------------------------------------------------------


class Competitor:
    """A CPU-bound process on the same cores, started in its own process group and ended by it."""

    def __init__(self, command: list[str], env: dict[str, str], settle_s: float) -> None:
        self.process = subprocess.Popen(
            command,
            env=env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        time.sleep(settle_s)  # running at full speed before the first measurement
        if self.process.poll() is not None:
            raise RuntimeError(f"the competitor {command[:4]} stopped ({self.process.returncode})")

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)


def numpy_competitor(threads: int, settle_s: float, _: Path, __: Path) -> Competitor:
    env = environment("medcnn")
    env.update({name: str(threads) for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")})
    env["MKL_NUM_THREADS"] = str(threads)
    return Competitor([PYTHON, "-c", NUMPY_LOOP], env, settle_s)


def batch_competitor(_: int, settle_s: float, manifest: Path, tmp: Path) -> Competitor:
    """``medcnn batch`` over and over, each time into a fresh folder, with MedCNN's threading."""
    loop = (
        "import subprocess, sys\n"
        "n = 0\n"
        "while True:\n"
        "    n += 1\n"
        "    subprocess.run([sys.executable, '-m', 'medcnn', 'batch', sys.argv[1], '--out',\n"
        "                    f'{sys.argv[2]}/{n}', '--no-progress'], capture_output=True)\n"
    )
    out = tmp / "competing_batch"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    return Competitor(
        [PYTHON, "-c", loop, str(manifest), str(out)], environment("medcnn"), settle_s + 3.0
    )


COMPETITORS: dict[str, Callable[[int, float, Path, Path], Competitor]] = {
    "numpy": numpy_competitor,
    "batch": batch_competitor,
}


# --- the rows: each a callable that measures once under the current condition -----------------


def wall(command: list[str], env: dict[str, str], allowed: tuple[int, ...] = (0,)) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode not in allowed:
        raise RuntimeError(f"{' '.join(command[:5])} failed:\n{done.stderr[-2000:]}")
    return elapsed


class Target:
    """What the rows work on: a scan and point to click, and a manifest for the batch."""

    def __init__(self, tmp: Path, quick: bool, batch_size: int) -> None:
        real = CHEST_CT.is_dir() and not quick
        if real:
            self.image, self.point = str(CHEST_CT), list(POINT_RAS)
        else:
            from medcnn.app.demo import ensure_phantom

            phantom = ensure_phantom(tmp / "phantom")
            self.image, self.point = str(phantom["nifti"]), list(phantom["nodule_center_ras"])
        self.name = "chest CT, DICOM" if real else "synthetic phantom, NIfTI"
        self.manifest = tmp / "manifest.csv"
        if LIDC.is_dir() and not quick:
            lidc_manifest(self.manifest, batch_size)
            self.batch_name = f"{batch_size} LIDC nodules"
        else:
            point = ",".join(str(v) for v in self.point)
            rows = [f"n{k},{self.image},{point}" for k in range(batch_size)]
            self.manifest.write_text("id,image,r,a,s\n" + "\n".join(rows) + "\n")
            self.batch_name = f"the phantom's nodule {batch_size} times"
        self.nodules = batch_size


def warm_row(target: Target, variant: str, tmp: Path) -> tuple[Callable[[], float], Callable]:
    worker = Worker(BUNDLE, environ=environment(variant))
    count = iter(range(10**9))

    def click() -> float:
        elapsed, _ = worker.analyze(target.image, target.point, tmp / f"warm_{next(count)}")
        return elapsed

    click()  # the first click pays oneDNN's set-up; a viewer pays it while the user looks
    return click, worker.close


def cold_row(target: Target, variant: str, tmp: Path) -> tuple[Callable[[], float], Callable]:
    count = iter(range(10**9))

    def analyze() -> float:
        command = [PYTHON, "-m", "medcnn", "analyze", target.image, "--point"]
        command += [str(v) for v in target.point] + ["--out", str(tmp / f"cold_{next(count)}")]
        return wall(command, environment(variant))

    return analyze, lambda: None


def batch_row(target: Target, variant: str, tmp: Path) -> tuple[Callable[[], float], Callable]:
    count = iter(range(10**9))

    def batch() -> float:
        command = [PYTHON, "-m", "medcnn", "batch", str(target.manifest), "--no-progress"]
        command += ["--out", str(tmp / f"batch_{next(count)}")]
        return wall(command, environment(variant), allowed=(0, 11))  # 11: a case refused

    return batch, lambda: None


def training_row(target: Target, variant: str, tmp: Path) -> tuple[Callable[[], float], Callable]:
    """Seconds for a few steps of fold 0's training on 160 cases (``threads``: the process's)."""
    args = {"data": str(LIDC), "steps": 4, "limit": 160, "threads": None}

    def train() -> float:
        command = [PYTHON, str(HERE / "measure.py"), "train", json.dumps(args)]
        done = subprocess.run(command, env=environment(variant), cwd=REPO, capture_output=True)
        if done.returncode:
            raise RuntimeError(f"training failed:\n{done.stderr.decode()[-2000:]}")
        return json.loads(done.stdout.decode().strip().splitlines()[-1])["times_s"][0]

    return train, lambda: None


ROWS = {"warm": warm_row, "cold": cold_row, "batch": batch_row, "training": training_row}


# --- running and reporting ---------------------------------------------------------------------


def measure_row(
    row: str,
    variant: str,
    competitors: list[str],
    target: Target,
    settings: dict,
    tmp: Path,
) -> dict:
    """Quiet and busy rounds, alternating, of one row under one variant."""
    measure_once, close = ROWS[row](target, variant, tmp / f"{row}_{variant}")
    (tmp / f"{row}_{variant}").mkdir(parents=True, exist_ok=True)
    times: dict[str, list[float]] = {"quiet": [], **{c: [] for c in competitors}}
    try:
        for _ in range(settings["rounds"]):
            times["quiet"] += [measure_once() for _ in range(settings["repeats"][row])]
            for name in competitors:
                competitor = COMPETITORS[name](
                    settings["competitor_threads"], settings["settle_s"], target.manifest, tmp
                )
                try:
                    times[name] += [measure_once() for _ in range(settings["repeats"][row])]
                finally:
                    competitor.stop()
    finally:
        close()
    medians = {condition: statistics.median(values) for condition, values in times.items()}
    result = {
        "seconds": {c: {"median": medians[c], "all": v} for c, v in times.items()},
        "busy_over_quiet": {c: medians[c] / medians["quiet"] for c in competitors},
    }
    if row == "batch":
        result["nodules_per_s"] = {c: target.nodules / m for c, m in medians.items()}
    return result


def print_report(result: dict) -> None:
    print(f"\nMedCNN on a busy computer ({result['settings']['mode']}): {result['target']}")
    print(f"machine: {result['machine']['before']}")
    competitors = result["settings"]["competitors"]
    header = f"{'row':<10}{'variant':<12}{'quiet':>10}" + "".join(
        f"{c + ' / quiet':>18}" for c in competitors
    )
    print(header + f"{'quiet / medcnn':>16}")
    print("-" * (len(header) + 16))
    for row, variants in result["rows"].items():
        for variant, entry in variants.items():
            if variant == "machine_during":
                continue
            quiet = entry["seconds"]["quiet"]["median"]
            cells = "".join(f"{entry['busy_over_quiet'][c]:>18.2f}" for c in competitors)
            base = variants.get("medcnn", {}).get("seconds", {}).get("quiet", {}).get("median")
            versus = f"{quiet / base:>16.2f}" if base else f"{'':>16}"
            print(f"{row:<10}{variant:<12}{quiet:>9.3f}s{cells}{versus}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the phantom, few repeats")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "busy.json")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=None)
    parser.add_argument(
        "--variants", nargs="+", choices=list(VARIANTS), default=["medcnn", "legacy"]
    )
    parser.add_argument(
        "--competitors", nargs="+", choices=list(COMPETITORS), default=list(COMPETITORS)
    )
    parser.add_argument("--cpus", type=int, nargs="+", help="run everything on these CPUs only")
    parser.add_argument("--rounds", type=int, help="quiet/busy alternations (default 2, quick 1)")
    parser.add_argument("--report", type=Path, help="print an existing results file and exit")
    args = parser.parse_args(argv)
    if args.report:
        print_report(json.loads(args.report.read_text()))
        return 0
    if args.cpus:
        os.sched_setaffinity(0, args.cpus)  # every process started from here inherits it
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rows = args.rows or (
        ["warm", "cold", "batch"] + (["training"] if LIDC.is_dir() and not args.quick else [])
    )
    settings = {
        "mode": "quick" if args.quick else "full",
        "rounds": args.rounds or (1 if args.quick else 2),
        "repeats": (
            {"warm": 3, "cold": 1, "batch": 1, "training": 1}
            if args.quick
            else {"warm": 10, "cold": 2, "batch": 1, "training": 1}
        ),
        "competitors": args.competitors,
        "competitor_threads": cpus,
        "settle_s": 1.0 if args.quick else 3.0,
        "variants": {v: VARIANTS[v] for v in args.variants},
        "cpus": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus,
    }
    with tempfile.TemporaryDirectory(prefix="medcnn-busy-") as name:
        tmp = Path(name)
        target = Target(tmp, args.quick, 8 if args.quick else 120)
        result: dict = {
            "settings": settings,
            "target": f"click: {target.name}; batch: {target.batch_name}",
            "machine": {"before": machine_state()},
            "rows": {},
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        for row in rows:
            result["rows"][row] = {}
            before = machine_state()
            for variant in args.variants:
                print(f"measuring {row} ({variant}) ...", flush=True)
                result["rows"][row][variant] = measure_row(
                    row, variant, args.competitors, target, settings, tmp
                )
                print(f"  {json.dumps(result['rows'][row][variant]['busy_over_quiet'])}")
                args.out.write_text(json.dumps(result, indent=2) + "\n")  # partial results
            result["rows"][row]["machine_during"] = {"before": before, "after": machine_state()}
        result["machine"]["after"] = machine_state()
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_report(result)
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
