"""The search: trials trained on the training images less a held-out part, judged on that part alone.

Each trial is an ordinary run (``cifarctl.training.train``) in ``STUDY/trials/NNNN`` with the trial's
settings and the trial budget as its time budget, on ``validation_view``: the training images without the
held-out ones, which take the test split's place. The test split is never loaded (``dataset_for(...,
test=False)``). At each epoch's end the run reports its held-out accuracy to Optuna, whose pruner may stop it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from cifarctl.data import CIFAR10
from cifarctl.errors import CifarctlError
from cifarctl.run.config import TrainConfig
from cifarctl.tune.lr_range import STEPS, lr_range_test
from cifarctl.tune.space import suggest
from cifarctl.tune.study import TuneSpec, fail_abandoned, require_optuna, spent_seconds

TRIALS = "trials"


@dataclass
class TrialEvent:
    """What a trial did: ``start`` (its settings), ``epoch`` (its held-out accuracy so far), ``end`` (its state)."""

    kind: str
    number: int
    settings: dict[str, Any] = field(default_factory=dict)
    epoch: float | None = None
    value: float | None = None
    state: str | None = None
    note: str = ""


def validation_view(data: CIFAR10, val_split: int, seed: int) -> CIFAR10:
    """``data``'s training images without ``val_split`` held out (stratified, drawn by ``seed`` as
    ``--val-split`` draws them), which stand where the test split stood: what every trial trains and is judged on."""
    from cifarctl.training.build import validation_split

    if not 0 < val_split < len(data.train_labels):
        raise CifarctlError(f"--val-split {val_split}: hold out at least 1 and fewer than the "
                            f"{len(data.train_labels):,} training images")
    keep, held = validation_split(data.train_labels, val_split, seed)
    return CIFAR10(data.train_images[keep], data.train_labels[keep], data.train_images[held], data.train_labels[held],
                   classes=data.classes, source=f"{data.source or 'cifar10'}: training images, {val_split} held out")


def base_config(spec: TuneSpec, **changes: Any) -> TrainConfig:
    """The recipe every trial starts from: the model's, with the study's fixed settings and ``changes``."""
    values = {**spec.base, **changes}
    cfg = TrainConfig.for_model(spec.model, spec.recipe, **{k: v for k, v in values.items() if v is not None})
    unset = {k: None for k, v in values.items() if v is None and k in {f.name for f in dataclasses.fields(cfg)}}
    return dataclasses.replace(cfg, **unset) if unset else cfg


def trial_config(spec: TuneSpec, settings: dict[str, Any]) -> TrainConfig:
    """A trial's run: the base recipe with ``settings``, fitted to the trial budget, judged every epoch."""
    return base_config(spec, **settings, time_budget=spec.trial_budget, eval_every=1, val_split=0, seed=spec.seed,
                       eval=True, data=spec.data)


def measure_bounds(spec: TuneSpec, data: CIFAR10, device: torch.device,
                   notify: Callable[[str], None] = lambda _text: None) -> TuneSpec:
    """Run the lr range tests the search needs (SGD's bounds Muon's head too) and keep their bounds in ``spec``;
    Muon is left out of the search for a model without conv filters."""
    started = time.monotonic()
    bounds, optimizers, norm_free = {}, list(spec.optimizers), False
    for name in [o for o in ("sgd", "adam") if o in optimizers or (o == "sgd" and "muon" in optimizers)]:
        test = lr_range_test(base_config(spec, optimizer=name, lr=1.0, lr_units="torch", seed=spec.seed), data, device)
        bounds[name], norm_free = test.bound, test.norm_free
        if not test.filters and "muon" in optimizers:
            optimizers.remove("muon")
            notify("the model has no conv filters: Muon is left out of the search")
        ended = f"diverged after lr {test.lrs[-1]:.3g}" if len(test.lrs) < STEPS else \
            f"had not diverged at lr {test.lrs[-1]:.3g}" if test.lrs else "diverged at once"
        notify(f"lr range test, {name}: the loss {ended} (lowest at {test.lowest:.3g}); the search takes lr up to "
               f"{test.bound:.3g}")
    return dataclasses.replace(spec, bounds=bounds, optimizers=tuple(optimizers), norm_free=norm_free,
                               range_seconds=time.monotonic() - started)


def enqueue_default(study: Any, spec: TuneSpec) -> bool:
    """Make the model's own recipe the study's first trial, where the space can express it: the default every
    other trial is judged against, on the same held-out images (so the best is never worse there)."""
    from cifarctl.tune.space import default_params

    params = default_params(base_config(spec), spec.bounds, spec.norm_free)
    if params is not None:
        study.enqueue_trial(params, user_attrs={"default": True})
    return params is not None


def run_search(study: Any, spec: TuneSpec, folder: Path, data: CIFAR10, stop: threading.Event,
               on_event: Callable[[TrialEvent], None] = lambda _event: None, trials: int | None = None) -> int:
    """Trials, one after another, while the study's time allows one more whole trial (or ``trials`` were run);
    the number run here."""
    done = 0
    while not stop.is_set() and (trials is None or done < trials):
        fail_abandoned(study)
        if spec.time_budget - spent_seconds(study, spec) < spec.trial_budget:
            break
        run_trial(study, spec, folder, data, stop, on_event)
        done += 1
    return done


def run_trial(study: Any, spec: TuneSpec, folder: Path, data: CIFAR10, stop: threading.Event,
              on_event: Callable[[TrialEvent], None]) -> Any:
    """One trial: asked of Optuna, trained, and told (complete, pruned, or failed); the trial's state."""
    from cifarctl.training import TrainingInterrupted, train

    optuna = require_optuna()
    trial = study.ask()
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())
    settings = suggest(trial, spec.bounds, base_config(spec).batch_size, spec.optimizers)
    trial.set_user_attr("settings", settings)
    run_dir = folder / TRIALS / f"{trial.number:04d}"
    trial.set_user_attr("run_dir", str(run_dir))
    on_event(TrialEvent("start", trial.number, settings))
    last: list[float] = []

    def on_epoch(record: dict[str, Any]) -> None:
        epoch = float(record["epoch"])
        value = record.get("test_acc")
        if value is None:
            return
        last[:] = [value]
        on_event(TrialEvent("epoch", trial.number, settings, epoch, value))
        if epoch == int(epoch):  # whole epochs: the steps the pruner compares trials at
            trial.report(value, int(epoch))
            trial.set_user_attr("epochs", epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

    try:
        cfg = trial_config(spec, settings)
        result = train(cfg, data, out_dir=run_dir, stop=stop, clock=time.monotonic(), on_epoch=on_epoch, alone=True)
    except optuna.TrialPruned:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        on_event(TrialEvent("end", trial.number, settings, state="PRUNED", value=last[0] if last else None))
        return optuna.trial.TrialState.PRUNED
    except TrainingInterrupted:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        on_event(TrialEvent("end", trial.number, settings, state="FAIL", note="stopped"))
        raise
    except CifarctlError as exc:  # settings this model cannot train with: the search goes on without them
        trial.set_user_attr("error", str(exc))
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        on_event(TrialEvent("end", trial.number, settings, state="FAIL", note=str(exc)))
        return optuna.trial.TrialState.FAIL
    value = result.test_accuracy if result.test_accuracy is not None and math.isfinite(result.test_accuracy) else 0.0
    trial.set_user_attr("epochs", result.global_step / max(len(data.train_labels) / cfg.batch_size, 1))
    trial.set_user_attr("tta", result.tta)
    study.tell(trial, value)
    on_event(TrialEvent("end", trial.number, settings, value=value, state="COMPLETE"))
    return optuna.trial.TrialState.COMPLETE

