"""torch.distributed helpers for ``torchrun``: set-up, rank queries, reductions and gathers.

Every helper also works in a single process without a process group (then it is the identity), so
the training code calls them unconditionally.
"""

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistributedContext",
    "init_distributed",
    "is_distributed",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "all_reduce_sum",
    "all_gather_objects",
    "barrier",
    "cleanup",
    "unwrap",
]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process runs: ``rank`` of ``world_size`` processes, on ``device``."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a ``DistributedDataParallel``/``DataParallel`` wrapper, or the model itself."""
    wrappers = (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)
    return model.module if isinstance(model, wrappers) else model


def init_distributed(device: str | None) -> DistributedContext:
    """Initialises the default process group when started by ``torchrun`` (``RANK``/``WORLD_SIZE`` set).

    The backend is NCCL when the processes run on CUDA and gloo on the CPU. Each process uses
    ``cuda:LOCAL_RANK`` on a CUDA device.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or None (CUDA when available, else CPU).
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(device)
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return DistributedContext(0, 1, 0, resolved)
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if resolved.type == "cuda":
        resolved = torch.device("cuda", local_rank)
        torch.cuda.set_device(resolved)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", world_size=world_size, rank=rank)
    return DistributedContext(rank, world_size, local_rank, resolved)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def all_reduce_sum(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Sums a dict of floats over all processes (one collective call); identity in a single process.

    Every process must pass the same keys.
    """
    if not is_distributed() or not values:
        return dict(values)
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return dict(zip(keys, tensor.tolist()))


def all_gather_objects(obj: Any) -> list[Any]:
    """Gathers one picklable object from every process, in rank order (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    """Destroys the default process group, if this process created one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
