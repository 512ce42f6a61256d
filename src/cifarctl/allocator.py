"""glibc's malloc told to keep the memory a training run frees, instead of handing it back to the kernel.

A training step on a CPU allocates its activations and gradients (up to hundreds of MB each) and frees
them when the step ends. glibc serves a block above its mmap threshold (at most 32 MiB) with a fresh
``mmap`` and returns it with ``munmap`` when it is freed, and it trims the top of its heap beyond
128 KiB: each step then takes its whole working set from the kernel again, one page fault per 4 KiB
page. With mmap off and the trim threshold unbounded, freed blocks stay in the process and the next
step reuses them: in fp32 on a 2-core Zen 4 the kernel's share of airbench94's training fell from a
quarter of its CPU time to 4%, and the whole process ran 1.41x faster (docs/performance.md). The price
is memory: the process keeps its peak (17% more than with the defaults there, 29% for resnet18).

The setting is the one ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...`` gives a whole process,
made with ``mallopt`` for the length of a run and undone after it (the kept memory handed back with
``malloc_trim``), so a notebook that trains does not keep its peak afterwards. It changes where memory
comes from, never a result: a run's weights are bitwise the same with and without it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from functools import lru_cache
from typing import Any, Iterator

import torch

# mallopt's parameters (malloc.h) and glibc's defaults for them
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
DEFAULT_TRIM_THRESHOLD = 128 * 1024
DEFAULT_MMAP_MAX = 65536
# The environment variables that set the same limits for a whole process: a user who set them chose.
ENVIRONMENT = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")
TUNABLES = ("glibc.malloc.mmap_max", "glibc.malloc.trim_threshold")

_lock = threading.Lock()
_depth = 0  # runs inside ``kept_memory`` now (nested runs, or threads): the limits are undone by the last


def keeps_memory(device: torch.device, cast: torch.dtype | None, asked: bool | None = None) -> bool:
    """Whether a run keeps its freed memory: as ``asked`` (``--keep-memory/--no-keep-memory``), or by
    default where it measured faster.

    CPU fp32 (``--no-amp``, or any CPU without native bf16): on. On a 2-core Zen 4 in fp32, paired
    whole processes: airbench94 1.41x faster (its system time 31 s down to 3.5), with Muon 1.33x,
    resnet18 1.32x, the course's VGG-16 1.11x; the peak memory up to 29% higher.
    CPU bf16: off. On the same machine kind it ran 1.06-1.16x faster on one day and 0.79-0.94x on the
    day before: no setting to impose while the days disagree (``--keep-memory`` asks for it).
    GPUs: off (torch's caching allocator keeps the device's memory already; host memory is small).
    """
    if asked is not None:
        return asked
    return device.type == "cpu" and cast is None


@lru_cache(maxsize=1)
def glibc() -> Any | None:
    """This process's C library, when it is glibc (Linux); None elsewhere (macOS, Windows, musl)."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (AttributeError, OSError, ValueError):
        return None
    return libc


def set_by_environment() -> bool:
    """Whether the user configured glibc's malloc through the environment (then it is left as they set it)."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return any(os.environ.get(name) for name in ENVIRONMENT) or any(name in tunables for name in TUNABLES)


@contextlib.contextmanager
def kept_memory(enabled: bool = True) -> Iterator[bool]:
    """Inside the block, memory the process frees stays with it; after it, glibc's limits as before.

    Yields whether the setting is in effect: False when not ``enabled``, where the C library is not
    glibc, and where the environment configures malloc already. Blocks may nest (the limits are undone
    when the outermost ends). After the block, the memory kept is returned to the system
    (``malloc_trim``) and glibc's default limits apply again, fixed (no longer adapted to the sizes
    freed, as they are until a program first sets them).
    """
    global _depth
    libc = glibc() if enabled else None
    if libc is None or set_by_environment():
        yield False
        return
    with _lock:
        if _depth == 0:
            libc.mallopt(M_MMAP_MAX, 0)
            libc.mallopt(M_TRIM_THRESHOLD, -1)  # as size_t: no limit
        _depth += 1
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
                libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
                libc.malloc_trim(0)
