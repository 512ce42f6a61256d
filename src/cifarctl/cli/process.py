"""What the command-line process knows of itself: when it started, and the signals that ask it to stop."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import Any, Iterator

# time.monotonic() at this process's start, when ``cifarctl.cli.main`` is its entry point (a time budget
# counts from there, interpreter start-up included); None when the app is called in-process (tests, notebooks).
_STARTED: float | None = None


def process_age() -> float:
    """Seconds since this process started (Linux: /proc); 0 elsewhere."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as up:
            ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
            uptime = float(up.read().split()[0])
        return max(uptime - ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0


def mark_started() -> None:
    """Called by the console script's entry point: this process's start becomes the clock a budget counts from."""
    global _STARTED
    _STARTED = time.monotonic() - process_age()


def started() -> float | None:
    """``time.monotonic()`` at this process's start, or None when the CLI runs in another program's process."""
    return _STARTED


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event, received: list[int]) -> Iterator[None]:
    """First SIGINT/SIGTERM asks the loop to save and stop; a second SIGINT stops at once."""

    def handler(signum: int, _frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        received.append(signum)
        stop.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
