"""MedCNN chooses its threading before torch loads (``medcnn.threads``), and says so.

Behaviour, not time: each test starts a fresh Python with an environment it controls (none of
the threading variables, or a user's own), because what matters is the state of a new process
at ``import medcnn``, before torch, and what torch and its OpenMP library then use. The worker
reports it in its ``ready`` line and every ``result.json`` carries it, valid by the schema.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from result_checks import assert_valid_result

from medcnn.threads import (
    MARKER,
    SPIN_DEFAULTS,
    VARIABLES,
    cgroup_cpu_limit,
    default_threads,
    physical_cores,
    usable_cpus,
)

SOURCE = Path(__file__).resolve().parents[1] / "src"
CLEAN = (*VARIABLES, MARKER, "LOCAL_WORLD_SIZE", "OMP_DISPLAY_ENV")

REPORT = """
import json, os, sys
import medcnn
from medcnn.threads import VARIABLES, in_force
before = {"torch_loaded": "torch" in sys.modules,
          "environ": {k: os.environ.get(k) for k in VARIABLES},
          "threading": in_force().to_json()}
import torch
torch.ones(64, 64) @ torch.ones(64, 64)
print(json.dumps({"before": before, "torch_threads": torch.get_num_threads(),
                  "after": in_force().to_json()}))
"""


def environment(**values: str) -> dict[str, str]:
    """This machine's environment without any threading variable, plus ``values``; the
    package from this checkout."""
    env = {k: v for k, v in os.environ.items() if k not in CLEAN}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SOURCE), env.get("PYTHONPATH")]))
    return {**env, **values}


def python(code: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def report(**values: str) -> dict:
    return json.loads(python(REPORT, environment(**values)).stdout.strip().splitlines()[-1])


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_cores_a_process_may_use(tmp_path: Path) -> None:
    """Hyperthreads of one core count once; a cgroup quota anywhere on the process's cgroup path
    caps the count (v2 and v1); torchrun's local processes share the cores."""
    sysfs = tmp_path / "cpu"
    for cpu, siblings in ((0, "0,2"), (1, "1,3"), (2, "0,2"), (3, "1,3")):
        write(sysfs / f"cpu{cpu}" / "topology" / "thread_siblings_list", siblings + "\n")
    assert physical_cores({0, 1, 2, 3}, sysfs) == 2
    assert physical_cores({0, 2}, sysfs) == 1
    assert physical_cores({0, 7}, sysfs) is None  # no topology: count the CPUs instead

    v2 = tmp_path / "v2"
    write(v2 / "slice" / "cpu.max", "150000 100000\n")  # 1.5 CPUs: 2 threads
    write(v2 / "slice" / "job" / "cpu.max", "max 100000\n")
    write(tmp_path / "v2.cgroup", "0::/slice/job\n")
    assert cgroup_cpu_limit(v2, tmp_path / "v2.cgroup") == 2
    v1 = tmp_path / "v1"
    write(v1 / "cpu,cpuacct" / "docker" / "cpu.cfs_quota_us", "50000\n")
    write(v1 / "cpu,cpuacct" / "docker" / "cpu.cfs_period_us", "100000\n")
    write(tmp_path / "v1.cgroup", "4:memory:/docker\n2:cpu,cpuacct:/docker\n")
    assert cgroup_cpu_limit(v1, tmp_path / "v1.cgroup") == 1
    assert cgroup_cpu_limit(tmp_path / "none", tmp_path / "missing") is None

    assert default_threads({}, 8) == 8
    assert default_threads({"LOCAL_WORLD_SIZE": "3"}, 8) == 2
    assert default_threads({"LOCAL_WORLD_SIZE": "16"}, 8) == 1


def test_import_medcnn_sets_the_defaults_before_torch_loads() -> None:
    seen = report()
    before, cpus = seen["before"], usable_cpus()
    assert before["torch_loaded"] is False
    assert before["environ"] == {
        "OMP_NUM_THREADS": str(cpus),
        "MKL_NUM_THREADS": str(cpus),
        "OMP_WAIT_POLICY": None,  # PASSIVE would cost a quiet machine's click
        **SPIN_DEFAULTS,
    }
    assert seen["torch_threads"] == cpus
    assert seen["after"] == before["threading"]
    assert seen["after"] == {
        "threads": cpus,
        "threads_source": "medcnn",
        "cpus": cpus,
        "variables": {
            name: {"value": value, "source": "medcnn"}
            for name, value in before["environ"].items()
            if value is not None
        },
        "torch_imported_first": False,
    }


def test_the_openmp_library_reads_medcnns_spin_count() -> None:
    """GNU OpenMP (PyTorch's Linux wheels) prints what it read when asked to."""
    done = python(
        "import medcnn, torch; torch.ones(8) + 1",
        environment(OMP_DISPLAY_ENV="VERBOSE"),
    )
    if "GOMP_SPINCOUNT" not in done.stderr:
        pytest.skip("torch's OpenMP is not GNU OpenMP here")
    assert f"GOMP_SPINCOUNT = '{SPIN_DEFAULTS['GOMP_SPINCOUNT']}'" in done.stderr
    assert f"OMP_NUM_THREADS = '{usable_cpus()}'" in done.stderr


def test_a_users_thread_count_wins() -> None:
    seen = report(OMP_NUM_THREADS="1")
    environ = seen["before"]["environ"]
    assert environ["OMP_NUM_THREADS"] == "1"
    assert environ["MKL_NUM_THREADS"] is None  # not set beside the user's: theirs rules
    assert seen["torch_threads"] == 1
    threading = seen["after"]
    assert threading["threads"] == 1 and threading["threads_source"] == "user"
    assert threading["variables"]["OMP_NUM_THREADS"] == {"value": "1", "source": "user"}
    assert threading["variables"]["GOMP_SPINCOUNT"]["source"] == "medcnn"
    # torch caps a count above the machine's cores itself; the value stays the user's
    many = report(MKL_NUM_THREADS="64")
    assert many["before"]["environ"]["MKL_NUM_THREADS"] == "64"
    assert many["before"]["environ"]["OMP_NUM_THREADS"] is None
    assert many["after"]["threads_source"] == "user"
    assert many["after"]["threads"] == many["torch_threads"]


def test_a_users_wait_policy_or_spin_count_wins() -> None:
    passive = report(OMP_WAIT_POLICY="PASSIVE")
    environ = passive["before"]["environ"]
    assert environ["OMP_WAIT_POLICY"] == "PASSIVE"
    # GOMP_SPINCOUNT would override the user's policy: MedCNN sets no spin variable then.
    assert environ["GOMP_SPINCOUNT"] is None and environ["KMP_BLOCKTIME"] is None
    assert passive["after"]["variables"]["OMP_WAIT_POLICY"] == {
        "value": "PASSIVE",
        "source": "user",
    }
    spin = report(GOMP_SPINCOUNT="500")
    assert spin["before"]["environ"]["GOMP_SPINCOUNT"] == "500"
    assert spin["after"]["variables"]["GOMP_SPINCOUNT"]["source"] == "user"
    assert spin["after"]["variables"]["KMP_BLOCKTIME"]["source"] == "medcnn"


def test_torchrun_ranks_share_the_cores() -> None:
    """Under torchrun each of the machine's processes takes its share (torchrun sets
    ``LOCAL_WORLD_SIZE``; it also sets ``OMP_NUM_THREADS=1`` when unset, which counts as the
    user's)."""
    seen = report(LOCAL_WORLD_SIZE="2")
    share = max(1, usable_cpus() // 2)
    assert seen["before"]["environ"]["OMP_NUM_THREADS"] == str(share)
    assert seen["torch_threads"] == share


def test_defaults_inherited_from_a_medcnn_parent_are_chosen_afresh() -> None:
    """A process started by a MedCNN process (a benchmark's torchrun, a test) inherits MedCNN's
    values; they are MedCNN's, not the user's, so each child chooses its own. A value changed
    since is the user's."""
    inherited = {
        "OMP_NUM_THREADS": "7",
        "MKL_NUM_THREADS": "7",
        "GOMP_SPINCOUNT": "10000",
        MARKER: "OMP_NUM_THREADS=7,MKL_NUM_THREADS=7,GOMP_SPINCOUNT=10000",
    }
    seen = report(**inherited, LOCAL_WORLD_SIZE="2")
    share = max(1, usable_cpus() // 2)
    assert seen["before"]["environ"]["OMP_NUM_THREADS"] == str(share)
    assert seen["after"]["variables"]["OMP_NUM_THREADS"]["source"] == "medcnn"
    changed = report(**{**inherited, "OMP_NUM_THREADS": "1"})
    assert changed["before"]["environ"]["OMP_NUM_THREADS"] == "1"
    assert changed["before"]["environ"]["MKL_NUM_THREADS"] is None  # MedCNN's 7 is gone
    assert changed["torch_threads"] == 1
    assert changed["after"]["threads_source"] == "user"


def test_when_torch_was_imported_first_only_the_count_is_lowered() -> None:
    """``python -m monai.bundle run`` imports torch before the config's ``import medcnn``: the
    OpenMP library has read the environment, so MedCNN sets no variable (it would change
    nothing) and brings torch's count down to the cores this process may use."""
    code = (
        "import json, os, sys, torch\n"
        "if len(sys.argv) > 1:  # a torch whose own count is more than the cores (a quota)\n"
        "    torch.set_num_threads(usable + 3)\n"
        "import medcnn\n"
        "from medcnn.threads import in_force\n"
        "print(json.dumps({'env': os.environ.get('GOMP_SPINCOUNT'),\n"
        "                  'torch': torch.get_num_threads(), 'threading': in_force().to_json()}))\n"
    )
    cpus = usable_cpus()
    code = f"usable = {cpus}\n" + code
    seen = json.loads(python(code, environment(), "more").stdout.strip().splitlines()[-1])
    assert seen["env"] is None
    assert seen["torch"] == cpus
    assert seen["threading"] == {
        "threads": cpus,
        "threads_source": "medcnn",
        "cpus": cpus,
        "variables": {},
        "torch_imported_first": True,
    }
    users = json.loads(python(code, environment(OMP_NUM_THREADS="1")).stdout.splitlines()[-1])
    assert users["torch"] == 1
    assert users["threading"]["threads"] == 1
    assert users["threading"]["threads_source"] == "user"
    assert users["threading"]["variables"] == {"OMP_NUM_THREADS": {"value": "1", "source": "user"}}


@pytest.fixture(scope="module")
def worker_session(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The real worker, as a viewer starts it, with the user's ``OMP_NUM_THREADS=1``: its ready
    line and the results of a CT click and of a radiograph (both analyzers)."""
    from medcnn.app.demo import ensure_phantom
    from medcnn.xray.phantom import ensure_radiograph_phantom

    root = tmp_path_factory.mktemp("threads")
    phantom = ensure_phantom(root / "phantom")
    radiograph = ensure_radiograph_phantom(root / "radiograph")
    requests = [
        {
            "id": "ct",
            "image": str(phantom["nifti"]),
            "point": list(phantom["nodule_center_ras"]),
            "out": str(root / "ct"),
        },
        {"id": "xray", "image": str(radiograph), "out": str(root / "xray")},
        {"id": "q", "command": "quit"},
    ]
    done = subprocess.run(
        [sys.executable, "-m", "medcnn.app.worker"],
        input="".join(json.dumps(r) + "\n" for r in requests),
        env=environment(OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    messages = [json.loads(line) for line in done.stdout.splitlines()]
    ready = next(m for m in messages if m["event"] == "ready")
    results = {m["id"]: m["result"] for m in messages if m["event"] == "result"}
    files = {rid: json.loads((root / rid / "result.json").read_text()) for rid in ("ct", "xray")}
    return {"ready": ready, "results": results, "files": files}


def test_the_workers_ready_line_reports_its_threading(worker_session: dict) -> None:
    threading = worker_session["ready"]["threading"]
    assert threading["threads"] == 1 and threading["threads_source"] == "user"
    assert threading["variables"]["OMP_NUM_THREADS"] == {"value": "1", "source": "user"}
    assert threading["variables"]["GOMP_SPINCOUNT"] == {
        "value": SPIN_DEFAULTS["GOMP_SPINCOUNT"],
        "source": "medcnn",
    }
    assert threading["torch_imported_first"] is False


def test_result_json_carries_the_threading_of_both_analyzers(worker_session: dict) -> None:
    ready = worker_session["ready"]["threading"]
    for rid in ("ct", "xray"):
        written = worker_session["files"][rid]
        assert_valid_result(written)
        assert written["threading"] == ready
        assert worker_session["results"][rid]["threading"] == ready
    assert worker_session["files"]["xray"]["task"] == "chest_xray_pneumonia"


def test_medcnn_analyze_writes_the_threading_it_used(tmp_path: Path) -> None:
    """The command line, with MedCNN's own choice."""
    from medcnn.app.demo import ensure_phantom

    phantom = ensure_phantom(tmp_path / "phantom")
    point = [str(v) for v in phantom["nodule_center_ras"]]
    command = [sys.executable, "-m", "medcnn", "analyze", str(phantom["nifti"])]
    command += ["--point", *point, "--out", str(tmp_path / "out")]
    done = subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    written = json.loads((tmp_path / "out" / "result.json").read_text())
    assert_valid_result(written)
    assert written["threading"]["threads"] == usable_cpus()
    assert written["threading"]["threads_source"] == "medcnn"
    assert written["threading"]["variables"]["OMP_NUM_THREADS"]["source"] == "medcnn"
