"""``--jobs J``: a group's seeds trained J at a time on one machine, in J processes that share its cores.

Where a net uses a machine's cores poorly, seeds side by side, each on its share of the cores, finish a
group sooner than one after the other on all of them; on the 2-core Zen 3 measured here none of the
airbench family did (``seeds.DEFAULT_JOBS``, docs/performance.md), on more cores or other nets it may
be otherwise: ``--jobs`` says so for a machine and model you have measured. The processes take seeds
from a queue, train each exactly as a single run (``seed.train_seed``) on the dataset the group's
command loaded (with its ``--data``, ``--offline`` and ``--verify``: loaded once, before any job starts,
and shared with them through torch's shared memory, so no job reads the cache or downloads) and send
their progress and results back; this process, which holds the group's lock, writes ``summary.json``. A stop request (or
Ctrl-C, which the terminal sends to every process) makes each save its seed and stop; a job whose
parent dies is stopped the same way (Linux), so a killed group leaves no orphan training.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import queue
import signal
import threading
from pathlib import Path
from typing import Any, Callable

from cifarctl.data.cifar10 import CIFAR10
from cifarctl.errors import CifarctlError
from cifarctl.groups.plan import os_cores
from cifarctl.groups.seed import GroupHooks, SeedResult, train_seed
from cifarctl.run.group import GroupRecord, seed_dir
from cifarctl.training.result import TrainingInterrupted

PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when its parent dies


def threads_per_job(jobs: int) -> int:
    """The cores each of ``jobs`` processes takes (at least one)."""
    return max(1, os_cores() // jobs)


def run_jobs(record: GroupRecord, group_dir: Path, seeds: list[int], data: CIFAR10, hooks: GroupHooks,
             stop: threading.Event | None, finished: Callable[[SeedResult], None]) -> None:
    """Train ``seeds`` on ``data`` in ``record.jobs`` processes; ``finished(result)`` as each seed ends (in this
    process)."""
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch's threads
    todo, events = context.Queue(), context.Queue()
    jobs = min(record.jobs, len(seeds))
    for seed in [*seeds, *[None] * jobs]:
        todo.put(seed)
    workers = [context.Process(target=_job, name=f"cifarctl-job-{job}", daemon=False,
                               args=(job, str(group_dir), record.to_dict(), todo, events, threads_per_job(jobs), data))
               for job in range(jobs)]
    for worker in workers:
        worker.start()
    try:
        _listen(workers, events, record, group_dir, hooks, stop, finished)
    finally:
        for worker in workers:
            worker.join()


def _listen(workers: list[Any], events: Any, record: GroupRecord, group_dir: Path, hooks: GroupHooks,
            stop: threading.Event | None, finished: Callable[[SeedResult], None]) -> None:
    """Relay the jobs' progress and results until every job has ended; then raise what stopped one."""
    running, told, failed, interrupted = len(workers), False, [], []
    while running:
        if stop is not None and stop.is_set() and not told:  # a stop request: each job saves and stops
            for worker in workers:
                with contextlib.suppress(ProcessLookupError, TypeError):
                    os.kill(worker.pid, signal.SIGTERM)
            told = True
        try:
            kind, job, *args = events.get(timeout=0.2)
        except queue.Empty:
            if not any(worker.is_alive() for worker in workers):
                break  # a job that died without a word (killed): what it finished was reported
            continue
        if kind == "progress" and hooks.lane is not None:
            method, positional, named = args
            getattr(hooks.lane(job), method)(*positional, **named)
        elif kind == "started" and hooks.seed_started is not None:
            seed = args[0]
            hooks.seed_started(seed, record.seeds.index(seed) + 1, len(record.seeds), seed_dir(group_dir, seed))
        elif kind == "done":
            result = SeedResult(**args[0])
            finished(result)
            if hooks.seed_done is not None:
                hooks.seed_done(result, record.seeds.index(result.seed) + 1, len(record.seeds))
        elif kind == "stopped":
            interrupted.append(args)
        elif kind == "failed":
            failed.append(args[0])
        elif kind == "exit":
            running -= 1
    if failed:
        raise CifarctlError(failed[0])
    if interrupted:
        raise TrainingInterrupted(Path(interrupted[0][0]), int(interrupted[0][1]))


class _QueueProgress:
    """A job's ``Progress``, sent to the process that draws it."""

    def __init__(self, job: int, events: Any) -> None:
        self.job, self.events = job, events

    def _send(self, method: str, *positional: Any, **named: Any) -> None:
        self.events.put(("progress", self.job, method, positional, named))

    def start(self, description: str, total: float | None, unit: str = "") -> None:
        self._send("start", description, total, unit)

    def advance(self, amount: float = 0, **info: object) -> None:
        self._send("advance", amount, **{k: float(v) for k, v in info.items()})  # type: ignore[arg-type]

    def finish(self) -> None:
        self._send("finish")

    def relabel(self, description: str) -> None:
        self._send("relabel", description)


def _job(job: int, group_dir: str, record: dict[str, Any], todo: Any, events: Any, threads: int,
         data: CIFAR10) -> None:
    """One job's process: its share of the cores, seeds from the queue until there are none (or a stop)."""
    import torch

    stop_with_parent()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    torch.set_num_threads(threads)
    group = GroupRecord.from_dict(record)
    try:
        while not stop.is_set() and (seed := todo.get()) is not None:
            events.put(("started", job, seed))
            result = train_seed(group, Path(group_dir), seed, data, GroupHooks(), stop,
                                progress=_QueueProgress(job, events))
            events.put(("done", job, result.to_dict()))
    except TrainingInterrupted as exc:
        events.put(("stopped", job, str(exc.run_dir), exc.global_step))
    except CifarctlError as exc:
        events.put(("failed", job, str(exc)))
    except Exception as exc:  # noqa: BLE001  (said in one line by the process that prints)
        events.put(("failed", job, f"job {job} failed: {type(exc).__name__}: {exc}"))
    finally:
        events.put(("exit", job))


def stop_with_parent() -> None:
    """Ask Linux to send this process SIGTERM when its parent dies (it then saves its seed and stops)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
