"""A group's life: start it, train its seeds (here, in ``--jobs`` processes or on torchrun ranks), resume it,
and keep ``summary.json`` (``run.group``) up to date with every finished seed and their statistics.

The dataset is loaded once, before anything is written, with the command's own flags, and every seed
trains on it, wherever it runs: a group that fails before its first seed (no dataset offline, a damaged
cache) leaves nothing behind. Under torchrun each rank trains its share of the seeds alone and rank 0,
which holds the group's lock, records them all in ``summary.json`` once every rank is done; until then
each seed's result stands in its own run folder, and ``cifarctl runs GROUP`` shows the group as running.
"""

from __future__ import annotations

import datetime
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from cifarctl import distributed as ddp
from cifarctl.errors import CheckpointError, UsageError
from cifarctl.groups.plan import DEFAULT_JOBS, check_jobs
from cifarctl.groups.seed import GroupHooks, SeedResult, stored_result, train_seed
from cifarctl.models.registry import families
from cifarctl.run.config import TrainConfig
from cifarctl.run.folder import new_run_dir, run_lock
from cifarctl.run.group import GroupRecord, read_group, seed_dir, write_group
from cifarctl.run.index import register_run
from cifarctl.run.resume import HOW_IT_RUNS, check_named, resume_config
from cifarctl.stats import Summary, summarize
from cifarctl.training.api import DataSource, load_data_first_on_rank0
from cifarctl.training.result import TrainingInterrupted

# Under torchrun a rank that finishes its seeds early waits for the others at the end: seeds take hours.
GROUP_TIMEOUT = datetime.timedelta(days=30)


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


def train_group(cfg: TrainConfig, seeds: Sequence[int], data: DataSource = None, group_dir: Path | None = None,
                jobs: int = DEFAULT_JOBS, target: float | None = None, hooks: GroupHooks | None = None,
                stop: threading.Event | None = None, clock: float | None = None) -> GroupResult:
    """Train ``cfg`` once per seed into ``group_dir`` (default: a new folder under the model's runs).

    Usage: ``train_group(TrainConfig.for_model("airbench94_quarter", epochs=1), [0, 1, 2]).summary.mean``
    """
    seeds = list(seeds)
    check_jobs(jobs, seeds)
    clock = time.monotonic() if clock is None else clock
    with ddp.gloo_session(GROUP_TIMEOUT):
        rank, world = ddp.current().rank, ddp.current().world_size
        dataset = load_data_first_on_rank0(data, cfg.data)  # before anything is written: a failure leaves nothing
        group_dir = ddp.broadcast_object(Path(group_dir) if group_dir else new_run_dir(cfg.model))
        if rank == 0:
            _start_record(group_dir, cfg, seeds, target, jobs)
        ddp.barrier()
        record = read_group(group_dir)
        return _run(record, group_dir, dataset, hooks or GroupHooks(), stop, clock, rank, world)


def resume_group(group_dir: Path, data: DataSource = None, model_spec: str | None = None,
                 overrides: dict[str, Any] | None = None, hooks: GroupHooks | None = None,
                 stop: threading.Event | None = None, jobs: int | None = None,
                 clock: float | None = None) -> GroupResult:
    """Finish the group in ``group_dir``: seeds it finished are not run again, an interrupted one continues at
    its exact step. ``model_spec``: what the caller names (a group of your own code resumes only when named).
    ``overrides``: the settings a single run's resume may change (``run.resume.RESUMABLE``: ``device``,
    ``epochs`` ...), for every seed it trains; any other is refused in one line. One that changes what a seed
    trains (``epochs``, ``max_steps``, ``eval``) is the group's from then on, and its finished seeds go on to it.
    Usage: ``resume_group(Path("runs/airbench94_quarter/2026..."), overrides={"device": "cpu"})``
    """
    group_dir = Path(group_dir)
    record = read_group(group_dir)
    members = families().get(model_spec or "")
    if members is not None:  # a family's group: its choice was made when it began
        if record.model not in members:
            raise UsageError(f"{group_dir} is a group of {record.model}, not one of {model_spec}'s ({', '.join(members)})")
        model_spec = record.model
    check_named(group_dir, TrainConfig.from_dict(record.config), model_spec)
    _apply_overrides(record, group_dir, overrides or {})
    if jobs is not None:
        check_jobs(jobs, [s for s in record.seeds if s not in record.finished_seeds()] or record.seeds)
        record.jobs = jobs
    clock = time.monotonic() if clock is None else clock
    with ddp.gloo_session(GROUP_TIMEOUT):
        dataset = load_data_first_on_rank0(data, record.config["data"])
        return _run(record, group_dir, dataset, hooks or GroupHooks(), stop, clock, ddp.current().rank,
                    ddp.current().world_size)


def _apply_overrides(record: GroupRecord, group_dir: Path, overrides: dict[str, Any]) -> None:
    """The group's config with a resume's overrides, checked by the single run's rule (``resume_config``)."""
    from cifarctl.device import resolve_device

    given = {k: v for k, v in overrides.items() if v is not None}
    if not given:
        return
    stored = TrainConfig.from_dict(record.config)
    updated = resume_config(group_dir, stored.model, given, (stored, {})).to_dict()
    resolve_device(updated["device"])  # a device that is not here fails now, in one line
    shaping = {k for k in given if k not in HOW_IT_RUNS and updated.get(k) != record.config.get(k)}
    record.config = {**updated, "seed": None}
    if shaping:  # finished seeds go on to the new setting too: each resume trains on, or finds nothing to do
        record.runs, record.summary = [], None


def _start_record(group_dir: Path, cfg: TrainConfig, seeds: list[int], target: float | None, jobs: int) -> None:
    if (group_dir / "last.pt").exists():
        raise CheckpointError(f"{group_dir} already holds a run: choose another --out for the group")
    if (group_dir / "summary.json").exists() or any(seed_dir(group_dir, s).exists() for s in seeds):
        raise CheckpointError(f"{group_dir} already holds a group: resume it with --resume {group_dir}, or choose "
                              "another --out")
    shared = {**cfg.to_dict(), "seed": None}
    write_group(group_dir, GroupRecord(cfg.model, shared, seeds, target, jobs))
    register_run(group_dir)  # found by `cifarctl runs` wherever --out put it


def _run(record: GroupRecord, group_dir: Path, data: Any, hooks: GroupHooks, stop: threading.Event | None,
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


def _train_seeds(record: GroupRecord, group_dir: Path, todo: list[int], data: Any, hooks: GroupHooks,
                 stop: threading.Event | None, rank: int, world: int) -> None:
    """One after the other here; this rank's share under torchrun; or in ``record.jobs`` processes."""
    if world > 1:
        for seed in todo[rank::world]:
            train_seed(record, group_dir, seed, data, hooks, stop)
        ddp.barrier()
        if rank == 0:
            _collect(record, group_dir, todo)
    elif record.jobs > 1:
        from cifarctl.groups.jobs import run_jobs

        run_jobs(record, group_dir, todo, data, hooks, stop, lambda result: _finish_seed(record, group_dir, result))
    else:
        for seed in todo:
            _finish_seed(record, group_dir, train_seed(record, group_dir, seed, data, hooks, stop), hooks)


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


