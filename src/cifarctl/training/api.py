"""``train`` and ``resume``: one run, from Python or the command line, alone or under torchrun.

Under ``torchrun ... python my_script.py`` (or ``-m cifarctl train``) each process calls ``train``
as it would alone: it joins the process group (and leaves it at the end if it joined it), loads
the data on rank 0 first (a download happens once), and agrees with the other ranks on one run
folder, rank 0's.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Union

import torch.distributed
from torch import nn

from cifarctl import distributed as ddp
from cifarctl.data.cifar10 import CIFAR10
from cifarctl.device import resolve_device
from cifarctl.errors import CifarctlError, UsageError
from cifarctl.models import model_card
from cifarctl.models.registry import families, is_family
from cifarctl.models.spec import canonical_spec, check_spec, display_name
from cifarctl.paths import NEWEST
from cifarctl.run.checkpoint import find_latest
from cifarctl.progress import Progress
from cifarctl.run.config import TrainConfig
from cifarctl.run.folder import latest_run_dir, new_run_dir, run_lock
from cifarctl.run.resume import load_run, resume_config
from cifarctl.training.choice import Choice, choose, chosen_settings
from cifarctl.training.result import TrainResult
from cifarctl.training.trainer import Trainer

# The data to train on: a dataset, a function that loads one (called on rank 0 first under torchrun),
# or None: the run's own ``data`` setting (``cifar10``: the cached dataset, downloaded if missing).
DataSource = Union[CIFAR10, Callable[[], CIFAR10], None]


@dataclass(frozen=True)
class RunStart:
    """What a run is about to do, for a caller that reports it (``started``)."""

    run_dir: Path
    world_size: int    # processes training together (1 alone)
    resumed: bool


@dataclass(frozen=True)
class RunRequest:
    """A run asked for by model name: its resolved config and, for a resume, the run's folder and checkpoint."""

    cfg: TrainConfig
    resume_dir: Path | None = None
    loaded: tuple[TrainConfig, dict[str, Any]] | None = None  # ``load_run(resume_dir)``
    choice: Choice | None = None  # a family's time budget: the member and recipe it chose, and why


def request_run(model: str, recipe: str | None = None, settings: dict[str, Any] | None = None,
                resume_dir: Path | str | None = None, init_ckpt: Path | str | None = None,
                clock: float | None = None) -> RunRequest:
    """What ``cifarctl train MODEL [--recipe R] [flags] [--resume RUN | --ckpt FILE]`` trains: the model's
    recipe with ``settings`` on top, or the run in ``resume_dir`` with the settings a resume may change.

    ``model`` may be a family (``airbench``) with a ``time_budget`` setting: the member and recipe are
    chosen here (``cifarctl.training.choice``: real steps of the candidates, timed here, counted in the
    budget from ``clock``, a ``time.monotonic()``; default now); ``recipe`` then narrows the choice.
    An unknown model or recipe, a setting a resume cannot change, or settings that contradict each other
    fail in one line before anything is built. ``resume_dir`` and ``init_ckpt`` may be ``paths.NEWEST``: the
    model's newest run, or checkpoint. Usage: ``train(request_run("airbench94", "muon", {"epochs": 4}).cfg)``
    """
    settings = {k: v for k, v in (settings or {}).items() if v is not None}
    check_spec(model)  # an unknown name fails first, with close matches, before any file is read
    if resume_dir is not None and init_ckpt is not None:
        raise UsageError("--resume continues a run with its own weights; --ckpt starts a new one: give one of them")
    if settings.get("time_budget") is not None and "epochs" in settings:
        raise UsageError("--time-budget chooses the run's length: drop --epochs")
    if resume_dir is not None:
        resume_dir = latest_run_dir(model) if str(resume_dir) == NEWEST else Path(resume_dir).expanduser()
    if init_ckpt is not None:
        init_ckpt = find_latest(model) if str(init_ckpt) == NEWEST else Path(init_ckpt).expanduser()
    if is_family(model):
        return _family_request(model, recipe, settings, resume_dir, init_ckpt, clock)
    card = model_card(model)  # an unknown name fails here, with close matches
    model = canonical_spec(model)  # a file spec with its absolute path: the run resumes from any folder
    if resume_dir is not None:
        loaded = load_run(resume_dir)
        if recipe is not None and recipe != loaded[0].recipe:
            raise UsageError(f"--recipe cannot change when a run is resumed (the run was trained with "
                             f"{loaded[0].recipe!r}); drop it, or start a new run with --ckpt")
        return RunRequest(resume_config(resume_dir, model, settings, loaded), resume_dir, loaded)
    card.get_recipe(recipe)  # an unknown recipe fails here, naming the model's
    init = {"init_ckpt": str(init_ckpt)} if init_ckpt is not None else {}
    return RunRequest(TrainConfig.for_model(model, recipe, **settings, **init))


def _family_request(family: str, recipe: str | None, settings: dict[str, Any], resume_dir: Path | None,
                    init_ckpt: Path | None, clock: float | None) -> RunRequest:
    """``cifarctl train airbench --time-budget 5m``: the member and recipe the budget is predicted to do best with."""
    members = ", ".join(families()[family])
    if resume_dir is not None:  # the run's own member and recipe: the choice was made when it began
        loaded = load_run(resume_dir)
        if loaded[0].model not in families()[family]:
            raise UsageError(f"{resume_dir} is a {display_name(loaded[0].model)} run, not one of {family}'s ({members})")
        return RunRequest(resume_config(resume_dir, loaded[0].model, settings, loaded), resume_dir, loaded)
    if settings.get("time_budget") is None:
        raise UsageError(f"{family} is a family ({members}): it chooses a member for a time budget. Add "
                         f"--time-budget (e.g. 5m), or name a member")
    if init_ckpt is not None:
        raise UsageError(f"--ckpt holds one member's weights: name the member ({members}) instead of {family}")
    if settings.get("model_options") or settings.get("num_classes") is not None:
        raise UsageError(f"--model-kwargs and --num-classes apply to one model: name a member ({members})")
    if ddp.launched_by_torchrun():
        raise UsageError(f"under torchrun, name a member ({members}): each process would time its own and "
                         f"could choose differently")
    device = resolve_device(settings.get("device") or "auto")
    choice = choose(family, float(settings["time_budget"]), time.monotonic() if clock is None else clock, device,
                    settings, recipes=[recipe] if recipe is not None else None,
                    train_images=50_000 - int(settings.get("val_split") or 0))
    chosen = choice.chosen
    cfg = TrainConfig.for_model(chosen.model, chosen.recipe, **chosen_settings(choice, settings))
    return RunRequest(cfg, choice=choice)


def train(cfg: TrainConfig, data: DataSource = None, out_dir: Path | None = None, progress: Progress | None = None,
          stop: threading.Event | None = None, notify: Callable[[str], None] | None = None,
          clock: float | None = None, started: Callable[[RunStart], None] | None = None,
          model: nn.Module | None = None, alone: bool = False,
          on_epoch: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train ``cfg.model`` on ``data`` into ``out_dir`` (default: a new run folder).

    ``cfg.model`` is a registered name or a spec (``path/to/file.py:Name``, ``package.module:name``,
    ``torchvision:NAME``); or pass ``model``, an ``nn.Module`` you built, and ``cfg.model`` only names it.
    With ``cfg.time_budget`` the run fits its length to that many seconds, counted from ``clock``
    (a ``time.monotonic()``; default: now) and says what it chose through ``notify``. ``alone``: this process
    trains the run by itself even under torchrun (a group's seeds, split over the ranks).
    ``on_epoch``: called with each epoch's record; an exception it raises stops the run (``Trainer``).
    Usage: ``train(TrainConfig("resnet50", epochs=1, device="cpu"), load_cifar10())``
    """
    with distributed_session(cfg.device, alone) as info:
        dataset = data if alone and isinstance(data, CIFAR10) else load_data_first_on_rank0(data, cfg.data)
        run_dir = Path(out_dir) if out_dir else new_run_dir(cfg.model)
        run_dir = run_dir if alone else ddp.broadcast_object(run_dir)
        with run_lock(run_dir, writer=True if alone else None):
            if (run_dir / "last.pt").exists():
                raise CifarctlError(f"{run_dir} already holds a run: resume it with --resume {run_dir}, "
                                    "or choose another --out")
            if started is not None:
                started(RunStart(run_dir, info.world_size, resumed=False))
            return Trainer(cfg, dataset, run_dir, progress, stop, notify=notify, clock=clock, model=model,
                           alone=alone, on_epoch=on_epoch).run()


def resume(run_dir: Path, data: DataSource = None, overrides: dict[str, Any] | None = None,
           progress: Progress | None = None, stop: threading.Event | None = None,
           notify: Callable[[str], None] | None = None,
           loaded: tuple[TrainConfig, dict[str, Any]] | None = None,
           started: Callable[[RunStart], None] | None = None, model: nn.Module | None = None,
           model_spec: str | None = None, alone: bool = False) -> TrainResult:
    """Continue the run in ``run_dir`` from its last checkpoint, at the exact step.

    Everything comes from the checkpoint; ``overrides`` may change only ``RESUMABLE`` settings
    (others are refused, see ``resume_config``). ``notify`` receives notices (e.g. a changed world
    size, or a run that was already finished, whose stored results come back). ``loaded``, the
    caller's ``load_run(run_dir)``, spares reading it twice before the lock; under the lock the run
    is read again, since a writer that finished meanwhile may have moved it on, and checked again.

    A run folder never decides what code runs: a run of a registered model resumes as it is; a run of
    your own code (a spec) resumes only when ``model_spec`` names that spec, and one of a model built
    in Python with ``model``, a fresh instance of it. ``alone``: as for ``train``.
    Usage: ``resume(Path("runs/resnet50/2026..."), load_cifar10())``
    """
    tell = notify or (lambda _text: None)
    cfg = _resume_config(Path(run_dir), overrides, loaded or load_run(Path(run_dir)), model, model_spec)
    with distributed_session(cfg.device, alone) as info:
        dataset = data if alone and isinstance(data, CIFAR10) else load_data_first_on_rank0(data, cfg.data)
        run_dir = Path(run_dir) if alone else ddp.broadcast_object(Path(run_dir))
        with run_lock(run_dir, writer=True if alone else None):
            loaded = load_run(run_dir)
            cfg = _resume_config(run_dir, overrides, loaded, model, model_spec)
            trainer = Trainer(cfg, dataset, run_dir, progress, stop, resume=loaded[1], notify=tell, model=model,
                              alone=alone)
            for notice in trainer.notices:
                tell(notice)
            if trainer.finished():
                tell(f"the run in {run_dir} is already finished ({trainer.global_step:,} steps, {trainer.epoch} "
                     "epochs): its stored results follow; raise --epochs to train on")
                return trainer.stored_result()
            if started is not None:
                started(RunStart(run_dir, info.world_size, resumed=True))
            return trainer.run()


def _resume_config(run_dir: Path, overrides: dict[str, Any] | None, loaded: tuple[TrainConfig, dict[str, Any]],
                   instance: nn.Module | None, model_spec: str | None) -> TrainConfig:
    """``resume_config`` for ``resume()``: a model built in Python stands for the model its run names."""
    if instance is None and (loaded[1].get("model_source") or {}).get("kind") == "instance":
        raise UsageError(f"{run_dir} trained a model built in Python ({loaded[0].model}): resume it with "
                         "resume(run_dir, model=a_fresh_instance)")
    return resume_config(run_dir, loaded[0].model if instance is not None else model_spec, overrides, loaded)


@contextlib.contextmanager
def distributed_session(device: str, alone: bool = False) -> Iterator[ddp.DistInfo]:
    """Under torchrun: the process group (joined here unless the caller joined it, and then left here too);
    ``alone``, or without torchrun: none."""
    if alone or not ddp.launched_by_torchrun():
        yield ddp.DistInfo()
        return
    joined_here = not torch.distributed.is_initialized()
    info = ddp.init_distributed(resolve_device(device))
    try:
        yield info
        if joined_here:  # every rank done with its collectives before the group goes (gloo aborts otherwise)
            ddp.barrier()
    finally:
        if joined_here:
            ddp.shutdown()


def load_data_first_on_rank0(data: DataSource, choice: str) -> CIFAR10:
    """The dataset ``data`` names (see ``DataSource``), loaded by rank 0 before the other ranks."""
    if isinstance(data, CIFAR10):
        return data
    return ddp.main_first(data if data is not None else lambda: default_dataset(choice))


def default_dataset(choice: str) -> CIFAR10:
    """``cifar10``: the cached dataset (downloaded when missing); ``fake``: random images, no download."""
    from cifarctl.data.prepare import dataset_for

    return dataset_for(choice)
