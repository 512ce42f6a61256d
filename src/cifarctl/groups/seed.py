"""One seed of a group: exactly the single run ``--seed S`` in ``GROUP/seed-S``, trained or resumed alone.

A seed's result is read from its own ``last.pt`` once it ends, however it ran (in the group's process,
in a ``--jobs`` process, on a torchrun rank): one record of its accuracy and its seconds. A seed folder
that holds a run of other settings than the group's (anything but its seed and what a resume may
change) is refused by name before anything of it is built.
"""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from cifarctl.errors import CheckpointError
from cifarctl.progress import NullProgress, Progress
from cifarctl.run.checkpoint import load_checkpoint
from cifarctl.run.config import TrainConfig
from cifarctl.run.group import GroupRecord, seed_dir
from cifarctl.run.resume import RESUMABLE, load_run, unlike
from cifarctl.training.api import resume, train


@dataclass(frozen=True)
class SeedResult:
    """One finished seed: its test accuracy (%) and loss, how far it trained and how long it took."""

    seed: int
    test_accuracy: float | None
    test_loss: float | None
    epochs: float
    steps: int
    seconds: float          # the run's own time (training and evaluation, every resumed part added up)
    tta: int | str
    run_dir: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GroupHooks:
    """What a caller hears of a group as it goes: ``progress`` of the seed in training (labelled with it),
    ``seed_started(seed, index, count, run_dir)`` and ``seed_done(result, index, count)``; with ``jobs``,
    ``lane(job)`` is the progress of one job's seeds (default: none)."""

    progress: Progress | None = None
    notify: Callable[[str], None] | None = None
    seed_started: Callable[[int, int, int, Path], None] | None = None
    seed_done: Callable[[SeedResult, int, int], None] | None = None
    lane: Callable[[int], Progress] | None = None


def seed_config(record: GroupRecord, seed: int) -> TrainConfig:
    """Seed ``seed``'s config: the group's, with its own seed."""
    return TrainConfig.from_dict({**record.config, "seed": seed})


def train_seed(record: GroupRecord, group_dir: Path, seed: int, data: Any, hooks: GroupHooks,
               stop: threading.Event | None, progress: Progress | None = None) -> SeedResult:
    """Train (or resume) one seed alone, its time budget counted from its start less the group's start-up."""
    folder = seed_dir(group_dir, seed)
    index, count = record.seeds.index(seed) + 1, len(record.seeds)
    label = SeedLabel(progress or hooks.progress or NullProgress(), f"seed {index}/{count} ({seed})")
    cfg = seed_config(record, seed)
    if (folder / "last.pt").exists():
        loaded = check_seed_folder(folder, cfg)
        if hooks.seed_started is not None:
            hooks.seed_started(seed, index, count, folder)
        resume(folder, data, _resumable(cfg), progress=label, stop=stop, notify=hooks.notify, loaded=loaded,
               model_spec=cfg.model, alone=True)
    else:
        if hooks.seed_started is not None:
            hooks.seed_started(seed, index, count, folder)
        if folder.exists():  # started, killed before its first checkpoint: nothing in it to keep
            shutil.rmtree(folder)
        train(cfg, data, folder, progress=label, stop=stop, notify=hooks.notify,
              clock=time.monotonic() - record.startup_s, alone=True)
    return stored_result(group_dir, seed)


def _resumable(cfg: TrainConfig) -> dict[str, Any]:
    """The group's values of the settings a resume may change: a resumed seed goes on with the group's."""
    values = cfg.to_dict()
    return {k: values[k] for k in RESUMABLE if k in values}


def check_seed_folder(folder: Path, cfg: TrainConfig) -> tuple[TrainConfig, dict[str, Any]]:
    """Refuse, naming what differs, a seed folder whose run is not this group's seed (another setting than its
    seed and the ones a resume may change); else return its ``load_run``, which the resume reads no second time."""
    loaded = load_run(folder)
    trained = loaded[0]
    mine, theirs = cfg.to_dict(), trained.to_dict()
    differs = unlike(cfg, trained)
    if differs:
        what = ", ".join(f"{k}={theirs.get(k)!r} (the group's: {mine.get(k)!r})" for k in differs[:4])
        more = f" and {len(differs) - 4} more" if len(differs) > 4 else ""
        raise CheckpointError(f"{folder} is not a seed of this group: it was trained with {what}{more}; move it "
                              "out of the group folder, and resume the group again to train that seed afresh")
    return loaded


def stored_result(group_dir: Path, seed: int) -> SeedResult:
    """A seed's result as its ``last.pt`` recorded it: the one record of a seed's accuracy and seconds."""
    folder = seed_dir(group_dir, seed)
    state = load_checkpoint(folder / "last.pt")
    metrics = state.get("metrics") or {}
    return SeedResult(seed, metrics.get("test_accuracy"), metrics.get("test_loss"), float(metrics.get("epochs") or 0),
                      int(state["global_step"]), round(float(metrics.get("seconds") or 0.0), 3),
                      metrics.get("tta") or 0, str(folder))


class SeedLabel:
    """A ``Progress`` that says which seed of the group each task belongs to."""

    def __init__(self, inner: Progress, label: str) -> None:
        self.inner, self.label = inner, label

    def start(self, description: str, total: float | None, unit: str = "") -> None:
        self.inner.start(f"{self.label} · {description}", total, unit)

    def advance(self, amount: float = 0, **info: object) -> None:
        self.inner.advance(amount, **info)

    def finish(self) -> None:
        self.inner.finish()

    def relabel(self, description: str) -> None:
        self.inner.relabel(f"{self.label} · {description}")
