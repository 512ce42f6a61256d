"""One writer at a time: advisory file locks that the kernel releases when their process dies.

A run folder is locked while a process trains in it, and the dataset cache while a process writes
it. ``flock`` locks belong to the open file, so a process killed with SIGKILL leaves no stale lock
behind: the next process takes it at once. The lock file also holds the holder's pid and command,
so a refusal can name it. On systems without ``fcntl`` (Windows) the locks are no-ops.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from pathlib import Path
from typing import Callable, Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"


def holder(lock_file: Path) -> str:
    """``process 1234 (cifarctl train resnet50 ...)``, as the holder wrote it, or ``another process``."""
    try:
        text = lock_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return "another process"
    pid, _, command = text.partition(" ")
    if not pid.isdigit():
        return "another process"
    return f"process {pid}" + (f" ({command})" if command else "")


def _try_lock(fd: int, wait: bool) -> bool:
    """True when this process holds the lock, or the file system cannot lock (then it goes on unlocked,
    as on Windows: some network file systems answer ENOLCK or EOPNOTSUPP)."""
    assert fcntl is not None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        return True
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            return True
        raise


@contextlib.contextmanager
def exclusive(folder: Path, on_busy: Callable[[str], None], wait: bool = False) -> Iterator[None]:
    """Hold ``folder/.lock`` for the block.

    If another process holds it: ``on_busy(holder)`` is called, then, with ``wait``, this process waits
    for it; without, ``on_busy`` is expected to raise (the refusal).
    """
    if fcntl is None:  # pragma: no cover - Windows: no advisory locks
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    lock_file = folder / LOCK_NAME
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _try_lock(fd, wait=False):
            on_busy(holder(lock_file))
            _try_lock(fd, wait=True)
        try:  # who holds it, for the refusal's message: best effort (a full disk must not stop the run here)
            os.ftruncate(fd, 0)
            command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200] if sys.argv else ""
            os.write(fd, f"{os.getpid()} {command}\n".encode("utf-8", "replace"))
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race with a waiting process)


def held(folder: Path) -> bool:
    """Whether another process holds ``folder/.lock`` now (a group or run in training); False where there is
    no lock file or no locking."""
    lock_file = Path(folder) / LOCK_NAME
    if fcntl is None or not lock_file.is_file():
        return False
    try:
        fd = os.open(lock_file, os.O_RDONLY)
    except OSError:
        return False
    try:
        if not _try_lock(fd, wait=False):
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
