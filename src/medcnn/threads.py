"""How many threads MedCNN computes with and how they wait, chosen before torch is imported.

PyTorch runs its CPU kernels on an OpenMP thread team (``torch.__config__.parallel_info()``:
"ATen parallel backend: OpenMP"; the Linux wheels ship GNU OpenMP, ``torch/lib/libgomp.so.1``,
and MKL threaded by it). Between two parallel regions the team's threads do not sleep: they spin,
so that the next region starts without a wake-up. GNU OpenMP spins 300,000 times (its own
estimate: 3 ms; several more on a CPU whose ``pause`` is slow), LLVM's and Intel's OpenMP
(PyTorch on macOS and Windows) 200 ms (``KMP_BLOCKTIME``). On a quiet machine that makes a click
fast. Beside another busy process the spinning threads hold the cores that the other process,
and their own team's preempted thread, need: a 2-thread network sharing 2 cores with one
CPU-bound job ran 5-50 times slower, where sharing fairly costs about 2 times.

``configure`` (called by ``medcnn/__init__.py``, which every entry point passes through before it
imports torch: ``medcnn``, ``python -m medcnn``, the worker, batch, training, each ``torchrun``
rank) puts MedCNN's defaults into ``os.environ``, where the OpenMP library reads them once, as
torch loads it. A variable already set is never changed: the user's value stands.

- ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS``: the physical cores this process may use (its CPU
  affinity, limited by a cgroup CPU quota as containers set), as PyTorch itself would pick on a
  machine without quota, divided among the processes ``torchrun`` started on this machine
  (``LOCAL_WORLD_SIZE``). Neither is set when the user set either.
- ``GOMP_SPINCOUNT=10000`` (GNU OpenMP): a thread spins about 0.1-0.5 ms, long enough to bridge
  the gaps between one operation of a network and the next, then sleeps; 30 times less than the
  default, so it gives a core back to whoever else needs it within a time slice.
- ``KMP_BLOCKTIME=1`` (LLVM and Intel OpenMP: milliseconds): the same for those runtimes.
- ``OMP_WAIT_POLICY`` stays unset: ``PASSIVE`` (never spin) cost a warm click 18-32 % on a quiet
  machine (``benchmarks/README.md``, "Threads"). A user who sets it chooses the waiting
  themselves, and MedCNN then sets neither spin variable (``GOMP_SPINCOUNT`` would override it).

Each runtime ignores the other's variables, so both are set without asking which torch has.
The spin count is reasoned, not yet tuned on a quiet machine: ``benchmarks/busy.py`` measures it
against the runtimes' own spinning, ``PASSIVE`` and one thread, quiet and busy, in one run.

What MedCNN set is recorded in ``MEDCNN_THREADING`` (``NAME=value`` pairs), so that a process
started by a MedCNN process (a ``torchrun`` rank of the benchmark, a test's subprocess) tells
MedCNN's inherited defaults, which it chooses afresh for itself, from the user's values.

When torch was imported before MedCNN (``python -m monai.bundle run`` imports it before the
config's ``$import medcnn``), its OpenMP library has already read the environment: setting a
variable then would change nothing but what a report says, so ``configure`` sets none. It still
lowers torch's thread count (``torch.set_num_threads``) to the cores this process may use when
neither thread variable is the user's; it never raises it. The spin variables cannot be changed
any more in such a process: set them in the environment, or use ``medcnn train``.

``in_force()`` says what is in force and where each value came from; the worker's ``ready`` line
and ``result.json`` carry it as ``threading``. Standard library only: importing ``medcnn`` stays
light.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
WAIT_POLICY = "OMP_WAIT_POLICY"
SPIN_DEFAULTS = {"GOMP_SPINCOUNT": "10000", "KMP_BLOCKTIME": "1"}
# The variables a report lists (when set), in this order.
VARIABLES = (*THREAD_VARIABLES, WAIT_POLICY, *SPIN_DEFAULTS)
MARKER = "MEDCNN_THREADING"

USER, MEDCNN, TORCH = "user", "medcnn", "torch"


@dataclass(frozen=True)
class Threading:
    """What is in force: the ``threads`` torch computes with (before torch is loaded, the count
    the variables ask for; torch caps it at the machine's cores, and None stands for a value
    that is not a plain number) and who set that count (``user``: their variable; ``medcnn``;
    ``torch``: nobody, its own default), the ``cpus`` this process may use, the variables set
    (value and source, ``user`` or ``medcnn``), and whether torch was imported before MedCNN
    could set them."""

    threads: int | None
    threads_source: str
    cpus: int
    variables: dict[str, dict[str, str]] = field(default_factory=dict)
    torch_imported_first: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "threads": self.threads,
            "threads_source": self.threads_source,
            "cpus": self.cpus,
            "variables": {name: dict(entry) for name, entry in self.variables.items()},
            "torch_imported_first": self.torch_imported_first,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Threading:
        return cls(
            threads=data["threads"],
            threads_source=data["threads_source"],
            cpus=data["cpus"],
            variables={name: dict(entry) for name, entry in data["variables"].items()},
            torch_imported_first=data["torch_imported_first"],
        )


# --- what the machine gives this process -------------------------------------------------------


def allowed_cpus() -> set[int] | None:
    """The CPUs the scheduler lets this process run on (None where the platform cannot say)."""
    if hasattr(os, "sched_getaffinity"):
        try:
            return set(os.sched_getaffinity(0))
        except OSError:
            return None
    return None


def _quota(folder: Path) -> int | None:
    """A cgroup folder's CPU quota in whole CPUs, rounded up (v2 ``cpu.max``, v1 CFS files)."""
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((folder / "cpu.cfs_quota_us").read_text())
        period_us = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return max(1, math.ceil(quota_us / period_us)) if quota_us > 0 and period_us > 0 else None


def cgroup_cpu_limit(
    root: Path = Path("/sys/fs/cgroup"), membership: Path = Path("/proc/self/cgroup")
) -> int | None:
    """The CPUs' worth of time a cgroup quota grants this process (``docker --cpus``, a systemd
    slice's ``CPUQuota``), the least along its cgroup's path; None when there is none."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        lines = []
    folders = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2
            folders.append(root / path.lstrip("/"))
        elif "cpu" in controllers.split(","):  # cgroup v1's cpu controller
            folders.append(root / controllers / path.lstrip("/"))
            folders.append(root / "cpu" / path.lstrip("/"))
    folders += [root, root / "cpu"]  # a container's own view: its cgroup is the root
    quotas = [
        quota
        for folder in folders
        for directory in (folder, *folder.parents)
        if directory.is_relative_to(root) and (quota := _quota(directory)) is not None
    ]
    return min(quotas, default=None)


def physical_cores(cpus: set[int], sysfs: Path = Path("/sys/devices/system/cpu")) -> int | None:
    """How many physical cores ``cpus`` lie on (hyperthreads of one core count once); None where
    Linux's topology files are missing."""
    cores = set()
    for cpu in cpus:
        topology = sysfs / f"cpu{cpu}" / "topology"
        for name in ("core_cpus_list", "thread_siblings_list"):
            try:
                cores.add((topology / name).read_text().strip())
                break
            except OSError:
                continue
        else:
            return None
    return len(cores) or None


def usable_cpus() -> int:
    """The cores this process may compute on: its affinity's physical cores (logical CPUs where
    the topology is unknown), no more than a cgroup quota grants."""
    cpus = allowed_cpus()
    if cpus:
        count = physical_cores(cpus) or len(cpus)
    else:
        count = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    return max(1, min(count, limit) if limit else count)


def default_threads(environ: Mapping[str, str], cpus: int) -> int:
    """MedCNN's thread count: the usable cores, shared among ``torchrun``'s local processes."""
    try:
        local_processes = max(1, int(environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local_processes = 1
    return max(1, cpus // local_processes)


# --- setting and reporting ---------------------------------------------------------------------


def _parse_marker(text: str | None) -> dict[str, str]:
    pairs = (item.partition("=") for item in (text or "").split(",") if "=" in item)
    return {name: value for name, _, value in pairs}


def _plain_count(value: str | None) -> int | None:
    try:
        count = int(value) if value is not None else None
    except ValueError:
        return None
    return count if count is not None and count > 0 else None


def _torch() -> Any:
    """torch, when it is loaded already (never imported from here)."""
    torch = sys.modules.get("torch")
    return torch if hasattr(torch, "get_num_threads") else None


_configured: Threading | None = None


def configure(environ: MutableMapping[str, str] | None = None) -> Threading:
    """Put MedCNN's threading defaults into ``environ`` (``os.environ``) unless already set, or,
    when torch is loaded already, lower its thread count; returns what is in force."""
    global _configured
    env = os.environ if environ is None else environ
    ours_before = _parse_marker(env.get(MARKER))
    # A value that a MedCNN parent set and nobody changed since is MedCNN's: chosen afresh here.
    user = {
        name: env[name] for name in VARIABLES if name in env and ours_before.get(name) != env[name]
    }
    cpus = usable_cpus()
    target = default_threads(env, cpus)
    # torch takes MKL_NUM_THREADS over OMP_NUM_THREADS when both are set.
    user_threads = next((user[name] for name in THREAD_VARIABLES[::-1] if name in user), None)
    torch = _torch()
    if torch is not None:
        # The OpenMP library read the environment as torch loaded it: only the count can move.
        variables = {
            name: {"value": env[name], "source": USER if name in user else MEDCNN}
            for name in VARIABLES
            if name in env
        }
        count = torch.get_num_threads()
        if user_threads is not None:
            source = USER
        elif count > target:
            torch.set_num_threads(target)
            count, source = target, MEDCNN
        else:
            source = MEDCNN if "OMP_NUM_THREADS" in variables else TORCH
        _configured = Threading(count, source, cpus, variables, torch_imported_first=True)
        return _configured
    ours: dict[str, str] = {}
    if user_threads is None:
        ours.update(dict.fromkeys(THREAD_VARIABLES, str(target)))
    if WAIT_POLICY not in user:
        ours.update({name: value for name, value in SPIN_DEFAULTS.items() if name not in user})
    for name in VARIABLES:
        if name not in user:
            env.pop(name, None)  # an inherited MedCNN value that this process does not want
    env.update(ours)
    if ours:
        env[MARKER] = ",".join(f"{name}={value}" for name, value in ours.items())
    else:
        env.pop(MARKER, None)
    variables = {
        name: {"value": env[name], "source": USER if name in user else MEDCNN}
        for name in VARIABLES
        if name in env
    }
    threads = target if user_threads is None else _plain_count(user_threads)
    _configured = Threading(threads, MEDCNN if user_threads is None else USER, cpus, variables)
    return _configured


def in_force() -> Threading:
    """What this process computes with now: ``configure``'s settings, with torch's own thread
    count once torch is loaded (a ``torch.set_num_threads`` since, as a training recipe's
    ``threads`` makes, shows in the count, not in its source)."""
    configured = _configured or configure()
    torch = _torch()
    if torch is None:
        return configured
    return replace(configured, threads=torch.get_num_threads())
