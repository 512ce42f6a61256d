"""torch.distributed glue: start from torchrun's environment, and helpers that are no-ops alone.

Under ``torchrun --nproc-per-node K -m cifarctl train ...`` every process calls
``init_distributed``: the backend is nccl on CUDA and gloo on CPU, each process takes the GPU of its
LOCAL_RANK, and ``--batch-size`` stays the *global* batch (each rank takes ``batch / K``), so a run
keeps its hyperparameters, learning rate included, whatever the number of processes.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist

from cifarctl.errors import CifarctlError

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes (once); a plain run gets ``DistInfo()``."""
    if not launched_by_torchrun():
        return DistInfo()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "mps":
        from cifarctl.errors import DeviceError

        raise DeviceError("torchrun cannot train on Apple GPUs: PyTorch has no distributed backend for MPS; "
                          "run `cifarctl train` as one process (--device mps), or use --device cpu under torchrun")
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)


def current() -> DistInfo:
    """The process group this process is in, or ``DistInfo()`` when there is none."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo()


def rank_device(device: torch.device, info: DistInfo) -> torch.device:
    """Under torchrun each process drives the GPU of its local rank."""
    if info.enabled and device.type == "cuda":
        return torch.device("cuda", info.local_rank)
    return device


def own_device(device: torch.device) -> torch.device:
    """The device of a process that trains alone under torchrun (a group's seeds spread over the ranks): the
    GPU of its local rank, where ``device`` is CUDA without an index; else ``device``."""
    if launched_by_torchrun() and device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks in place (no-op alone)."""
    if current().enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flags: Sequence[bool], device: torch.device) -> list[bool]:
    """Each flag, true on every rank if it is true on any (so all ranks take the same branch); one all-reduce."""
    if not current().enabled:
        return list(flags)
    values = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [bool(v) for v in values.tolist()]


def gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` alone)."""
    info = current()
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not current().enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if current().enabled:
        dist.barrier()


def main_first(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0, then on the other ranks (a download happens once, then every rank reads it)."""
    info = current()
    if info.is_main:
        value = fn()
    barrier()
    if not info.is_main:
        value = fn()
    return value


def per_rank_batch(batch_size: int, info: DistInfo) -> int:
    if batch_size % info.world_size:
        raise CifarctlError(f"--batch-size {batch_size} is the global batch and must divide by the "
                            f"{info.world_size} processes; use a multiple of {info.world_size}")
    return batch_size // info.world_size


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def process_rank() -> int:
    """This process's rank as torchrun set it (0 alone), before any process group is joined."""
    return int(os.environ.get("RANK", "0"))


@contextlib.contextmanager
def gloo_session(timeout: datetime.timedelta) -> Iterator[None]:
    """Under torchrun, a gloo process group for barriers and small messages only (no gradients), joined here
    unless the caller joined one, and left here after a last barrier (gloo aborts a rank that leaves first).
    ``timeout``: how long a rank may wait at a barrier for the others. Without torchrun: nothing."""
    joined = launched_by_torchrun() and not dist.is_initialized()
    if joined:
        dist.init_process_group("gloo", timeout=timeout)
    try:
        yield
        if joined:
            barrier()
    finally:
        if joined:
            shutdown()
