"""A group of seeds on disk: one folder with each seed's ordinary run folder (``seed-N``) and ``summary.json``.

``summary.json`` is the group: what every seed trains with (the config they share, and the seeds),
each finished seed's result, their statistics and the group's state. It is written atomically when
the group starts and after every seed, by one process (the group's lock, ``run_lock``), so a group
killed at any moment resumes from it: finished seeds stay finished, the interrupted one continues
from its own ``last.pt``. Like every run file it is data: the model it names is built only when the
command names it too (``run.resume.check_named``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cifarctl.atomic import write_text
from cifarctl.errors import CheckpointError, UsageError

SUMMARY = "summary.json"
FORMAT = 1
STATES = ("running", "stopped", "finished")


def seed_dir(group_dir: Path, seed: int) -> Path:
    """The run folder of ``seed`` in ``group_dir``."""
    return Path(group_dir) / f"seed-{seed}"


def is_group(path: Path) -> bool:
    return (Path(path) / SUMMARY).is_file()


@dataclass
class GroupRecord:
    """``summary.json``: the group's definition, its finished seeds' results and their summary."""

    model: str                         # what every seed trains (a family's chosen member)
    config: dict[str, Any]             # the TrainConfig every seed shares (each with its own seed)
    seeds: list[int]
    target: float | None = None        # --target: the accuracy (%) the summary tests the mean against
    jobs: int = 1                      # processes that trained seeds at once on this machine
    startup_s: float = 0.0             # the start-up the first seed paid, charged to every seed's time budget
    runs: list[dict[str, Any]] = field(default_factory=list)  # finished seeds, in the order of ``seeds``
    summary: dict[str, Any] | None = None
    state: str = "running"
    format: int = FORMAT

    def finished_seeds(self) -> set[int]:
        return {int(r["seed"]) for r in self.runs}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GroupRecord:
        known = {k: values[k] for k in cls.__dataclass_fields__ if k in values}
        record = cls(**known)
        if not isinstance(record.config, dict) or not all(isinstance(s, int) for s in record.seeds):
            raise ValueError("config or seeds of the wrong type")
        if record.state not in STATES:
            raise ValueError(f"state {record.state!r} is none of {', '.join(STATES)}")
        return record


def read_group(group_dir: Path) -> GroupRecord:
    """The group in ``group_dir``; a folder that is none, or a damaged summary.json, fails in one line."""
    path = Path(group_dir) / SUMMARY
    if not path.is_file():
        raise UsageError(f"{group_dir} is not a group of seeds (no {SUMMARY} in it): give a folder that "
                         "`cifarctl train MODEL --seeds N` made")
    try:
        return GroupRecord.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise CheckpointError(f"{path} is damaged ({exc}): the seeds' run folders beside it are intact, and each "
                              f"resumes on its own (`cifarctl train MODEL --resume {Path(group_dir) / 'seed-N'}`)") from None


def write_group(group_dir: Path, record: GroupRecord) -> None:
    """Write ``summary.json`` atomically (a crash leaves the previous one)."""
    Path(group_dir).mkdir(parents=True, exist_ok=True)
    write_text(Path(group_dir) / SUMMARY, json.dumps(record.to_dict(), indent=2) + "\n")
