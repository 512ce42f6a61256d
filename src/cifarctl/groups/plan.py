"""What ``--seeds``, ``--jobs``, ``--target`` and ``--resume GROUP`` ask of a group, checked before anything runs."""

from __future__ import annotations

import os
from typing import Sequence

from cifarctl import distributed as ddp
from cifarctl.errors import UsageError

# Seeds trained at once on one machine unless --jobs says otherwise. On the 2-core Zen 3, a group of two
# seeds one after the other on both cores took 0.95-0.97x the time of the two side by side on one core each
# for airbench94 at a quarter and at half its widths, 0.92x at its own (paired whole processes,
# docs/performance.md): two threads keep both cores busy here, and a second process pays its own start.
DEFAULT_JOBS = 1


def parse_seeds(value: str | int | Sequence[int], first: int = 0) -> list[int]:
    """``--seeds``: a count N (seeds ``first`` to ``first + N - 1``) or a list (``"0,3,7"``), checked.

    Usage: ``parse_seeds("3", first=5) == [5, 6, 7]``; ``parse_seeds("0,3,7") == [0, 3, 7]``
    """
    if isinstance(value, str) and "," not in value.strip():
        try:
            value = int(value)
        except ValueError:
            raise UsageError(f"--seeds {value!r} is neither a count nor a list: write 3, or 0,3,7") from None
    if isinstance(value, int):
        if value < 1:
            raise UsageError(f"--seeds {value}: a group needs at least one seed (3 or more to compare)")
        return list(range(first, first + value))
    try:
        seeds = [int(s) for s in value.split(",")] if isinstance(value, str) else [int(s) for s in value]
    except ValueError:
        raise UsageError(f"--seeds {value!r} is neither a count nor a list of whole numbers: write 3, or 0,3,7") from None
    duplicated = sorted({s for s in seeds if seeds.count(s) > 1})
    if duplicated:
        raise UsageError(f"--seeds lists {', '.join(map(str, duplicated))} twice: a seed's run is the same run")
    if not seeds or min(seeds) < 0:
        raise UsageError("--seeds takes seeds of 0 or more")
    return seeds


def plan_group(seeds: str | None, jobs: int | None, target: float | None, first: int = 0,
               resuming: bool = False) -> list[int]:
    """The seeds ``--seeds`` names (from ``first``, ``--seed``), with ``--jobs`` and ``--target`` checked against
    them; ``resuming``: ``--resume`` was given with them, of a single run (a group resumes with its own seeds)."""
    if resuming:
        raise UsageError("--seeds starts a group; --resume RUN continues one run (and --resume GROUP a group, with "
                         "its own seeds): give one of them")
    if seeds is None:
        what = "--jobs trains seeds at once" if jobs is not None else "--target tests a group's mean"
        raise UsageError(f"{what}: give --seeds N too")
    chosen = parse_seeds(seeds, first)
    if jobs is not None:
        check_jobs(jobs, chosen)
    return chosen


def check_group_flags(seeds: str | None, target: float | None) -> None:
    """``--resume GROUP`` continues the group's own seeds against its own target: ``--seeds`` and ``--target``
    are refused in one line (the settings a resume may change are the library's to check: ``resume_group``)."""
    given = ["--seeds"] * (seeds is not None) + ["--target"] * (target is not None)
    if given:
        raise UsageError(f"a group resumes with its own seeds and target, so that they stay alike: drop "
                         f"{', '.join(given)}")


def check_jobs(jobs: int, seeds: Sequence[int]) -> None:
    if jobs < 1:
        raise UsageError("--jobs must be at least 1")
    if jobs > len(seeds):
        raise UsageError(f"--jobs {jobs} is more than the {len(seeds)} seeds: each job trains a seed at a time; "
                         f"give --jobs {len(seeds)} or fewer")
    if jobs > 1 and ddp.launched_by_torchrun():
        raise UsageError("under torchrun the processes split the seeds already: drop --jobs")


def os_cores() -> int:
    """The CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1

