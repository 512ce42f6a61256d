"""A study: its settings (``TuneSpec``), its Optuna storage, and the time it has spent.

A study's trials live in an Optuna storage: by default a journal file in the study folder (``journal.log``),
which any number of processes on this machine share (``--jobs``, or a second ``cifarctl tune --resume``),
or a database (``--storage postgresql://...``) that processes on any machines share. The spec is kept in
the study itself (its user attributes), so a process that joins a study by its name needs nothing else.

Time: the study's budget counts the wall time during which at least one of its trials ran (the union of
their intervals, each at most a trial's budget, so a process killed mid-trial costs at most that trial),
plus the lr range tests'. A run that is stopped and resumed goes on with what is left.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cifarctl.errors import UsageError

TUNE_EXTRA = "pip install 'cifarctl[tune]'"
JOURNAL = "journal.log"
SPEC_KEY = "cifarctl"


@dataclass
class TuneSpec:
    """What a study searches and how: the model, the recipe it starts from and the settings fixed for every
    trial (``base``), each trial's budget and the study's, the held-out images, and the lr range tests' bounds."""

    model: str
    recipe: str | None
    trial_budget: float              # seconds a trial may take, start-up and evaluation included
    time_budget: float               # seconds the whole search may take
    val_split: int = 5000            # training images held out to judge every trial on
    seed: int = 0                    # the held-out images' draw and every trial's seed
    base: dict[str, Any] = field(default_factory=dict)   # settings of every trial (--config, fixed flags)
    optimizers: tuple[str, ...] = ("sgd", "adam", "muon")
    bounds: dict[str, float] = field(default_factory=dict)  # the lr range tests' bounds, by optimizer
    range_seconds: float = 0.0       # what the range tests took (counted in the time budget)
    norm_free: bool = False          # the model has no normalisation layer (found by the range tests)
    rungs: int = 3                   # successive halving's rungs: budgets of a ninth, a third, all of a trial's
    min_rung: float = 20.0           # seconds: no rung shorter (start-up and the measured steps need their share)
    recheck: int | None = None       # best configurations re-checked at the end (None: as the budget holds; 0: none)
    recheck_seeds: int = 2           # new seeds each re-checked configuration is trained with
    data: str = "cifar10"
    created: str = ""

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["optimizers"] = list(self.optimizers)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TuneSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        spec = cls(**{k: v for k, v in values.items() if k in known})
        spec.optimizers = tuple(spec.optimizers)
        return spec


def require_optuna() -> Any:
    """Optuna, or one line on how to install it."""
    try:
        import optuna
    except ImportError:
        raise UsageError(f"cifarctl tune needs Optuna: {TUNE_EXTRA}") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def open_storage(folder: Path, url: str | None) -> Any:
    """The study's storage: ``url`` (a database URL, or a journal file's path), else ``folder/journal.log``.
    A database that cannot be reached fails in one line."""
    optuna = require_optuna()
    if url is None or "://" not in url:
        path = Path(url).expanduser() if url else folder / JOURNAL
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(_journal_backend(optuna, path))
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as exc:  # sqlalchemy's OperationalError, a missing driver (ModuleNotFoundError), a bad URL
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"--storage {without_password(url)}: cannot open it ({reason[:200]}); check the URL, that "
                         "the server runs, and its driver (pip install 'psycopg[binary]' for postgresql://)") from None


def _journal_backend(optuna: Any, path: Path) -> Any:
    journal = optuna.storages.journal if hasattr(optuna.storages, "journal") else None
    if journal is not None and hasattr(journal, "JournalFileBackend"):  # Optuna 4
        return journal.JournalFileBackend(str(path), lock_obj=journal.JournalFileOpenLock(str(path)))
    return optuna.storages.JournalFileStorage(str(path), lock_obj=optuna.storages.JournalFileOpenLock(str(path)))


def without_password(url: str | None) -> str | None:
    """``url`` with no password, as study.json keeps it: a joining process gives it again with ``--storage``,
    or the database's driver finds it where it looks itself (``PGPASSWORD``, ``~/.pgpass`` for PostgreSQL)."""
    if url is None or "://" not in url:
        return url
    scheme, _, rest = url.partition("://")
    if "@" in rest and ":" in rest.split("@", 1)[0]:
        return f"{scheme}://{rest.split('@', 1)[0].split(':', 1)[0]}@{rest.split('@', 1)[1]}"
    return url


REDUCTION = 3  # successive halving's factor: the best third of a rung's configurations go on to the next


def rung_budgets(spec: TuneSpec) -> list[float]:
    """Each rung's time budget, shortest first, the last the trial budget: ``[40, 120]`` for 2-minute trials
    (a ninth, 13 s, is under ``min_rung``)."""
    budgets = [spec.trial_budget]
    while len(budgets) < spec.rungs and budgets[0] / REDUCTION >= spec.min_rung:
        budgets.insert(0, budgets[0] / REDUCTION)
    return budgets


def create_study(storage: Any, name: str, spec: TuneSpec) -> Any:
    """A new study called ``name`` with ``spec``: TPE (seeded), and successive halving over the rungs."""
    optuna = require_optuna()
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize", load_if_exists=True,
                                sampler=sampler(spec), pruner=pruner())
    if SPEC_KEY in study.user_attrs:
        raise UsageError(f"a study called {name!r} is already in that storage: join it with --study {name} and no "
                         "MODEL, or choose another --study name")
    study.set_user_attr(SPEC_KEY, spec.to_dict())
    return study


def load_study(storage: Any, name: str) -> tuple[Any, TuneSpec]:
    """The study ``name`` and its spec; one line if there is none (or it is not cifarctl's)."""
    optuna = require_optuna()
    try:
        probe = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise UsageError(f"no study called {name!r} in that storage: start one with `cifarctl tune MODEL`") from None
    values = probe.user_attrs.get(SPEC_KEY)
    if not isinstance(values, dict):
        raise UsageError(f"the study {name!r} was not made by cifarctl tune (it has no settings to train with)")
    spec = TuneSpec.from_dict(values)
    study = optuna.load_study(study_name=name, storage=storage, sampler=sampler(spec), pruner=pruner())
    return study, spec


WORKER = "CIFARCTL_TUNE_WORKER"  # a --jobs worker's number (1, 2, ...), set by the process that starts it


def sampler(spec: TuneSpec) -> Any:
    """TPE, seeded by the study's ``--seed`` and the process's worker number (0 for the one that started the
    search), so that the same command suggests the same settings again, and two workers of one study different
    ones."""
    import warnings

    optuna = require_optuna()
    with warnings.catch_warnings():  # multivariate TPE is "experimental" to Optuna since 2.2, and its best
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        seed = spec.seed * 1_000_003 + int(os.environ.get(WORKER, "0"))
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=6,
                                          multivariate=True, group=True)


def pruner() -> Any:
    """Asynchronous successive halving: a configuration's whole run at rung ``r`` (a schedule fitted to that
    rung's budget, reported at step ``REDUCTION ** r``) goes on to the next rung if it is in the best third of
    every configuration that ran at rung ``r``, whatever became of them since (Optuna keeps each one's rung
    value apart from its state). No trial is judged on the first epochs of a longer schedule: on the first
    study of docs/accuracy.md, a trial 1.5 points ahead of the best one at epoch 2 ended 1.6 points behind it."""
    optuna = require_optuna()
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=REDUCTION,
                                                  min_early_stopping_rate=0, bootstrap_count=0)


def fail_abandoned(study: Any) -> list[int]:
    """Mark as failed the running trials of this machine whose process is gone (killed mid-trial); their numbers.
    (One left running by a machine that died stays so; it costs the budget at most one trial's time.)"""
    optuna = require_optuna()
    failed = []
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if attrs.get("host") == host and attrs.get("pid") and not _alive(int(attrs["pid"])):
            try:
                study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
                failed.append(trial.number)
            except (RuntimeError, ValueError):  # another process marked it meanwhile
                pass
    return failed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def spent_seconds(study: Any, spec: TuneSpec, now: datetime | None = None) -> float:
    """The study's time up to ``now`` (default: now): the union of its trials' intervals (each at most its rungs'
    budgets and a tenth), running ones up to now, plus the range tests'."""
    now = now or datetime.now()
    cap = sum(rung_budgets(spec)) * 1.1
    intervals = []
    for trial in study.get_trials(deepcopy=False):
        if trial.datetime_start is None or _naive(trial.datetime_start) >= _naive(now):
            continue
        start = _naive(trial.datetime_start)
        end = min(_naive(trial.datetime_complete), _naive(now)) if trial.datetime_complete is not None else _naive(now)
        intervals.append((start, min((end - start).total_seconds(), cap)))
    total, reach = 0.0, None
    for start, length in sorted(intervals):
        stop = start.timestamp() + max(length, 0.0)
        if reach is None or start.timestamp() >= reach:
            total += stop - start.timestamp()
            reach = stop
        elif stop > reach:
            total += stop - reach
            reach = stop
    return total + spec.range_seconds


def _naive(moment: datetime) -> datetime:
    return moment.astimezone().replace(tzinfo=None) if moment.tzinfo is not None else moment


def now_text() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
