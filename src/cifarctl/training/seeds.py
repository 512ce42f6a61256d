"""Many seeds of one run as one group: ``cifarctl train MODEL --seeds N`` (``train_group``, ``resume_group``).

Seed ``S`` of a group is exactly the single run ``--seed S`` (the same config but its seed, in its own
ordinary run folder ``GROUP/seed-S``), so a group's seeds can be compared with single runs and resumed
like them. After each seed the group's ``summary.json`` gets its result and the statistics of all
finished ones (``cifarctl.stats``). A group killed at any moment resumes: finished seeds are not run
again, the interrupted one continues at its exact step.

Seeds spread over what the machine has: under torchrun each process trains its share of the seeds
alone on its own device (no gradient exchange) and rank 0 writes the summary; on one machine
``jobs`` processes train seeds at once, the CPU cores divided among them (``cifarctl.training.jobs``).
With a time budget every seed gets the same budget, counting the start-up the first seed paid, so a
group's seeds compare with single commands; a family's choice is made once, for every seed.
"""

from __future__ import annotations

import datetime
import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from cifarctl import distributed as ddp
from cifarctl.errors import CheckpointError, UsageError
from cifarctl.progress import NullProgress, Progress
from cifarctl.run.checkpoint import load_checkpoint
from cifarctl.run.config import TrainConfig
from cifarctl.models.registry import families
from cifarctl.run.folder import new_run_dir, run_lock
from cifarctl.run.index import register_run
from cifarctl.run.group import GroupRecord, read_group, seed_dir, write_group
from cifarctl.run.resume import check_named
from cifarctl.stats import Summary, summarize
from cifarctl.training.api import DataSource, load_data_first_on_rank0, resume, train
from cifarctl.training.result import TrainingInterrupted, TrainResult

# Under torchrun a rank that finishes its seeds early waits for the others at the end: seeds take hours.
GROUP_TIMEOUT = datetime.timedelta(days=30)
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


def check_resumable(settings: dict[str, Any], seeds: str | None, target: float | None) -> None:
    """A group resumes with its own settings, every seed alike: anything else given is refused in one line."""
    given = sorted(k for k, v in settings.items() if v is not None and k != "device")
    given += ["seeds"] * (seeds is not None) + ["target"] * (target is not None)
    if given:
        flags = ", ".join(f"--{k.replace('_', '-')}" for k in given)
        raise UsageError(f"a group resumes with its own settings, so that its seeds stay alike: drop {flags}")


def check_jobs(jobs: int, seeds: Sequence[int]) -> None:
    if jobs < 1:
        raise UsageError("--jobs must be at least 1")
    if jobs > len(seeds):
        raise UsageError(f"--jobs {jobs} is more than the {len(seeds)} seeds: each job trains a seed at a time; "
                         f"give --jobs {len(seeds)} or fewer")
    if jobs > 1 and ddp.launched_by_torchrun():
        raise UsageError("under torchrun the processes split the seeds already: drop --jobs")


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

    @classmethod
    def of(cls, seed: int, result: TrainResult) -> SeedResult:
        return cls(seed, result.test_accuracy, result.test_loss, result.epochs_trained, result.global_step,
                   round(result.total_seconds, 3), result.tta, str(result.run_dir))


@dataclass
class GroupResult:
    """A group as it stands: its seeds' results (finished ones, in seed order), their summary, its state."""

    group_dir: Path
    model: str
    runs: list[SeedResult]
    summary: Summary | None
    state: str
    seeds: list[int]

    def to_dict(self) -> dict[str, Any]:
        return {"group_dir": str(self.group_dir), "model": self.model, "state": self.state, "seeds": self.seeds,
                "runs": [r.to_dict() for r in self.runs],
                "summary": self.summary.to_dict() if self.summary is not None else None}


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


def train_group(cfg: TrainConfig, seeds: Sequence[int], data: DataSource = None, group_dir: Path | None = None,
                jobs: int = DEFAULT_JOBS, target: float | None = None, hooks: GroupHooks | None = None,
                stop: threading.Event | None = None, clock: float | None = None) -> GroupResult:
    """Train ``cfg`` once per seed into ``group_dir`` (default: a new folder under the model's runs).

    Usage: ``train_group(TrainConfig.for_model("airbench94_quarter", epochs=1), [0, 1, 2]).summary.mean``
    """
    seeds = list(seeds)
    check_jobs(jobs, seeds)
    clock = time.monotonic() if clock is None else clock
    with _group_session():
        rank, world = ddp.current().rank, ddp.current().world_size
        group_dir = ddp.broadcast_object(Path(group_dir) if group_dir else new_run_dir(cfg.model))
        if rank == 0:
            _start_record(group_dir, cfg, seeds, target, jobs)
        ddp.barrier()
        record = read_group(group_dir)
        return _run(record, group_dir, data, hooks or GroupHooks(), stop, clock, rank, world)


def resume_group(group_dir: Path, data: DataSource = None, model_spec: str | None = None,
                 hooks: GroupHooks | None = None, stop: threading.Event | None = None,
                 jobs: int | None = None, clock: float | None = None) -> GroupResult:
    """Finish the group in ``group_dir``: seeds it finished are not run again, an interrupted one continues at
    its exact step. ``model_spec``: what the caller names (a group of your own code resumes only when named).
    Usage: ``resume_group(Path("runs/airbench94_quarter/2026..."))``
    """
    group_dir = Path(group_dir)
    record = read_group(group_dir)
    members = families().get(model_spec or "")
    if members is not None:  # a family's group: its choice was made when it began
        if record.model not in members:
            raise UsageError(f"{group_dir} is a group of {record.model}, not one of {model_spec}'s ({', '.join(members)})")
        model_spec = record.model
    check_named(group_dir, TrainConfig.from_dict(record.config), model_spec)
    if jobs is not None:
        check_jobs(jobs, [s for s in record.seeds if s not in record.finished_seeds()] or record.seeds)
        record.jobs = jobs
    clock = time.monotonic() if clock is None else clock
    with _group_session():
        return _run(record, group_dir, data, hooks or GroupHooks(), stop, clock, ddp.current().rank,
                    ddp.current().world_size)


def _start_record(group_dir: Path, cfg: TrainConfig, seeds: list[int], target: float | None, jobs: int) -> None:
    if (group_dir / "last.pt").exists():
        raise CheckpointError(f"{group_dir} already holds a run: choose another --out for the group")
    if (group_dir / "summary.json").exists() or any(seed_dir(group_dir, s).exists() for s in seeds):
        raise CheckpointError(f"{group_dir} already holds a group: resume it with --resume {group_dir}, or choose "
                              "another --out")
    shared = {**cfg.to_dict(), "seed": None}
    write_group(group_dir, GroupRecord(cfg.model, shared, seeds, target, jobs))
    register_run(group_dir)  # found by `cifarctl runs` wherever --out put it


def _run(record: GroupRecord, group_dir: Path, data: DataSource, hooks: GroupHooks, stop: threading.Event | None,
         clock: float, rank: int, world: int) -> GroupResult:
    """Train the group's unfinished seeds (this rank's share under torchrun), then summarise on rank 0."""
    todo = [s for s in record.seeds if s not in record.finished_seeds()]
    with run_lock(group_dir, writer=rank == 0):
        if rank == 0:
            if record.startup_s == 0.0:  # what the first seed pays before it starts: every seed's budget counts it
                record.startup_s = round(time.monotonic() - clock, 3)
            record.state = "running"
            write_group(group_dir, record)
        record.startup_s = ddp.broadcast_object(record.startup_s)
        try:
            _train_seeds(record, group_dir, todo, data, hooks, stop, rank, world)
        except TrainingInterrupted:
            if rank == 0:
                record.state = "stopped"
                write_group(group_dir, record)
            raise
        return _close(record, group_dir) if rank == 0 else _as_result(read_group(group_dir), group_dir)


def _train_seeds(record: GroupRecord, group_dir: Path, todo: list[int], data: DataSource, hooks: GroupHooks,
                 stop: threading.Event | None, rank: int, world: int) -> None:
    """One after the other here; this rank's share under torchrun; or in ``record.jobs`` processes."""
    if world > 1:
        dataset = load_data_first_on_rank0(data, record.config["data"])
        for seed in todo[rank::world]:
            _one_seed(record, group_dir, seed, dataset, hooks, stop)
        ddp.barrier()
        if rank == 0:
            _collect(record, group_dir, todo)
    elif record.jobs > 1:
        from cifarctl.training.jobs import run_jobs

        run_jobs(record, group_dir, todo, data, hooks, stop, lambda result: _finish_seed(record, group_dir, result))
    else:
        dataset = load_data_first_on_rank0(data, record.config["data"])
        for seed in todo:
            _finish_seed(record, group_dir, _one_seed(record, group_dir, seed, dataset, hooks, stop), hooks)


def seed_config(record: GroupRecord, seed: int) -> TrainConfig:
    """Seed ``seed``'s config: the group's, with its own seed."""
    return TrainConfig.from_dict({**record.config, "seed": seed})


def _one_seed(record: GroupRecord, group_dir: Path, seed: int, data: Any, hooks: GroupHooks,
              stop: threading.Event | None, progress: Progress | None = None) -> SeedResult:
    """Train (or resume) one seed alone, its time budget counted from its start less the group's start-up."""
    folder = seed_dir(group_dir, seed)
    index, count = record.seeds.index(seed) + 1, len(record.seeds)
    label = SeedLabel(progress or hooks.progress or NullProgress(), f"seed {index}/{count} ({seed})")
    if hooks.seed_started is not None:
        hooks.seed_started(seed, index, count, folder)
    cfg = seed_config(record, seed)
    if (folder / "last.pt").exists():
        result = resume(folder, data, progress=label, stop=stop, notify=hooks.notify, model_spec=cfg.model, alone=True)
    else:
        if folder.exists():  # started, killed before its first checkpoint: nothing in it to keep
            shutil.rmtree(folder)
        result = train(cfg, data, folder, progress=label, stop=stop, notify=hooks.notify,
                       clock=time.monotonic() - record.startup_s, alone=True)
    return SeedResult.of(seed, result)


def _finish_seed(record: GroupRecord, group_dir: Path, result: SeedResult, hooks: GroupHooks | None = None) -> None:
    """Record a finished seed in summary.json (with the statistics of every finished one), and say so."""
    record.runs = sorted([r for r in record.runs if r["seed"] != result.seed] + [result.to_dict()],
                         key=lambda r: record.seeds.index(r["seed"]))
    record.summary = _summary(record)
    write_group(group_dir, record)
    if hooks is not None and hooks.seed_done is not None:
        hooks.seed_done(result, record.seeds.index(result.seed) + 1, len(record.seeds))


def _collect(record: GroupRecord, group_dir: Path, seeds: Iterable[int]) -> None:
    """Under torchrun: every rank's seeds, read from their run folders (each seed's checkpoint holds its results)."""
    for seed in seeds:
        _finish_seed(record, group_dir, stored_result(group_dir, seed))


def stored_result(group_dir: Path, seed: int) -> SeedResult:
    """A finished seed's result as its ``last.pt`` recorded it."""
    folder = seed_dir(group_dir, seed)
    state = load_checkpoint(folder / "last.pt")
    metrics = state.get("metrics") or {}
    return SeedResult(seed, metrics.get("test_accuracy"), metrics.get("test_loss"), float(metrics.get("epochs") or 0),
                      int(state["global_step"]), round(float(metrics.get("seconds") or 0.0), 3),
                      metrics.get("tta") or 0, str(folder))


def _summary(record: GroupRecord) -> dict[str, Any] | None:
    scored = [r for r in record.runs if r["test_accuracy"] is not None]
    if not scored:
        return None
    return summarize([r["test_accuracy"] for r in scored], [r["seconds"] for r in scored], record.target).to_dict()


def _close(record: GroupRecord, group_dir: Path) -> GroupResult:
    record.state = "finished" if set(record.seeds) <= record.finished_seeds() else "stopped"
    write_group(group_dir, record)
    return _as_result(record, group_dir)


def _as_result(record: GroupRecord, group_dir: Path) -> GroupResult:
    summary = Summary(**{**record.summary, "ci95": tuple(record.summary["ci95"]) if record.summary["ci95"] else None}) \
        if record.summary else None
    return GroupResult(group_dir, record.model, [SeedResult(**r) for r in record.runs], summary, record.state,
                       list(record.seeds))


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


class _group_session:
    """Under torchrun, the processes of a group: a gloo group for its barriers (joined here, left at the end),
    with a timeout of days, since a rank waits there for the others' seeds."""

    def __enter__(self) -> None:
        import torch.distributed as dist

        self.joined = ddp.launched_by_torchrun() and not dist.is_initialized()
        if self.joined:
            dist.init_process_group("gloo", timeout=GROUP_TIMEOUT)

    def __exit__(self, *exc: object) -> None:
        if self.joined:
            if exc[0] is None:
                ddp.barrier()
            ddp.shutdown()


def os_cores() -> int:
    """The CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1
