"""Many processes, one job: ``torchrun`` starts them, ``torch.distributed`` joins them.

MedCNN brings no launcher of its own. Under ``torchrun`` (one machine or many) each process
reads its place from the environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``); without it, the job is a world of one and nothing here does anything.

- Training (``configs/multi_gpu_train.json``): ``init_process_group`` joins the processes
  (``nccl`` when each has a GPU, ``gloo`` on CPUs); ``train_fold`` then wraps the network in
  ``DistributedDataParallel`` and each rank computes its share of every batch.
- Batch inference (``medcnn batch`` under torchrun): each rank analyses the manifest rows
  ``i % world_size == rank``; ``gather_in_order`` brings every rank's records to rank 0, which
  writes ``predictions.csv`` in the manifest's order. A batch run joins the group itself.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

# A batch run's ranks only meet at the end; one rank may finish its share long before another.
BATCH_TIMEOUT = datetime.timedelta(hours=24)


@dataclass(frozen=True)
class World:
    """This process's rank among ``size`` processes (``local_*``: on this machine)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share: items ``i`` with ``i % size == rank``."""
        return list(items[self.rank :: self.size])


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def world() -> World:
    """Where this process stands: from the joined group, else torchrun's environment, else 1."""
    if dist.is_available() and dist.is_initialized():
        return World(
            dist.get_rank(),
            dist.get_world_size(),
            int(os.environ.get("LOCAL_RANK", 0)),
            int(os.environ.get("LOCAL_WORLD_SIZE", 1)),
        )
    if launched_by_torchrun():
        return World(
            int(os.environ["RANK"]),
            int(os.environ["WORLD_SIZE"]),
            int(os.environ.get("LOCAL_RANK", 0)),
            int(os.environ.get("LOCAL_WORLD_SIZE", 1)),
        )
    return World()


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_process_group(
    backend: str | None = None, timeout: datetime.timedelta | None = None
) -> World:
    """Join torchrun's processes (a no-op for a single process or a group already joined)."""
    if dist.is_initialized() or not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return world()
    backend = backend or default_backend()
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    if timeout:
        dist.init_process_group(backend=backend, timeout=timeout)
    else:
        dist.init_process_group(backend=backend)
    return world()


def destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def device() -> torch.device:
    """The device this rank computes on: its own GPU under ``nccl``, else the CPU."""
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def gather_in_order(records: list[T], here: World, total: int) -> list[T] | None:
    """Every rank's records (its shard, in shard order) merged on rank 0 in the original order
    of ``total`` items; ``None`` on the other ranks."""
    if here.size == 1:
        return list(records)
    parts: list[list[T]] | None = [[] for _ in range(here.size)] if here.is_main else None
    dist.gather_object(records, parts, dst=0)
    if parts is None:
        return None
    merged: list[T] = [None] * total  # type: ignore[list-item]
    for rank, part in enumerate(parts):
        merged[rank :: here.size] = part
    return merged


def threads_per_process(threads: int) -> int:
    """A machine's threads shared among the ranks it runs, so they do not oversubscribe it."""
    return max(1, threads // world().local_size)


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum of each value over the ranks (the values themselves for a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device())
    dist.all_reduce(tensor)
    return tensor.tolist()
