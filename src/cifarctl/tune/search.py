"""The search: trials trained on the training images less a held-out part, judged on that part alone.

A trial is one configuration, trained at each rung (``rung_budgets``: a third of the next one's time, the
last the trial budget) as an ordinary run (``cifarctl.training.train``) with that rung's time budget, its
schedule fitted whole to it, in ``STUDY/trials/NNNN`` (``NNNN/rung-R`` where there are several), on
``validation_view``: the training images without the held-out ones, which take the test split's place.
The test split is never loaded (``dataset_for(..., test=False)``). After each rung but the last its held-out
accuracy goes to Optuna's successive halving, which lets the best third of that rung go on.
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
from cifarctl.tune import recheck
from cifarctl.tune.lr_range import STEPS, lr_range_test
from cifarctl.tune.space import suggest
from cifarctl.tune.study import REDUCTION, TuneSpec, fail_abandoned, require_optuna, rung_budgets, spent_seconds

TRIALS = "trials"
MAX_FAILURES = 5  # trials failing one after another: the study stops (a model or setting that cannot train)


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
                   classes=data.classes, source=f"{data.source or 'cifar10'}: training images, {val_split} held out",
                   held_out=True)


def base_config(spec: TuneSpec, **changes: Any) -> TrainConfig:
    """The recipe every trial starts from: the model's, with the study's fixed settings and ``changes``."""
    values = {**spec.base, **changes}
    cfg = TrainConfig.for_model(spec.model, spec.recipe, **{k: v for k, v in values.items() if v is not None})
    unset = {k: None for k, v in values.items() if v is None and k in {f.name for f in dataclasses.fields(cfg)}}
    return dataclasses.replace(cfg, **unset) if unset else cfg


def trial_config(spec: TuneSpec, settings: dict[str, Any], budget: float | None = None,
                 seed: int | None = None) -> TrainConfig:
    """A trial's run at one rung: the base recipe with ``settings``, fitted to ``budget`` (default the trial
    budget), judged every epoch, with the study's seed (or a re-check run's ``seed``)."""
    chosen = {**settings, **spec.base}  # what --config fixes, the search never changes
    return base_config(spec, **chosen, time_budget=budget or spec.trial_budget, eval_every=1, val_split=0,
                       seed=spec.seed if seed is None else seed, eval=True, data=spec.data)


def searched_fixed(spec: TuneSpec) -> dict[str, Any]:
    """The settings of the search's space that ``--config`` fixes (``spec.base``): left alone by every trial."""
    from cifarctl.tune.space import SEARCHED

    return {k: v for k, v in spec.base.items() if k in SEARCHED}


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
    """Make the model's own recipe the study's next trial, where the space can express it and no trial of the
    default has completed or is under way (a stopped or killed one is trained again when the study goes on): the
    default every other trial is judged against, on the same held-out images (so the best is never worse there)."""
    from cifarctl.tune.space import default_params

    optuna = require_optuna()
    states = optuna.trial.TrialState
    if any(t.user_attrs.get("default") and t.state in (states.COMPLETE, states.RUNNING, states.WAITING)
           for t in study.get_trials(deepcopy=False)):
        return True
    params = default_params(base_config(spec), spec.bounds, spec.norm_free)
    if params is not None:
        study.enqueue_trial(params, user_attrs={"default": True})
    return params is not None


def enqueue_starts(study: Any, spec: TuneSpec, earlier: list[dict[str, Any]] = ()) -> int:
    """After the default, the good starts (``space.good_starts``) and ``earlier``: an earlier study's best
    configurations (``--warm-start``), as the study's first trials; how many."""
    from cifarctl.tune.space import default_params, good_starts

    default = default_params(base_config(spec), spec.bounds, spec.norm_free)
    starts = [*good_starts(default, spec.bounds, base_config(spec).batch_size, spec.optimizers), *earlier]
    for params in starts:
        study.enqueue_trial(params, user_attrs={"start": True}, skip_if_exists=True)
    return len(starts)


def run_search(study: Any, spec: TuneSpec, folder: Path, data: CIFAR10, stop: threading.Event,
               on_event: Callable[[TrialEvent], None] = lambda _event: None, trials: int | None = None) -> int:
    """Trials, one after another, while the study's time allows one more first rung besides the re-check's
    reserve (or ``trials`` were run), then the re-check of the best (``tune.recheck``); the number run here.
    ``MAX_FAILURES`` failed trials in a row stop it in one line."""
    done, failed = 0, 0
    enqueue_default(study, spec)
    while not stop.is_set() and (trials is None or done < trials):
        fail_abandoned(study)
        if not searching(study, spec) and not _waiting_rechecks(study):
            if not recheck.enqueue(study, spec, spec.time_budget - spent_seconds(study, spec)):
                break
        state = run_trial(study, spec, folder, data, stop, on_event)
        failed = failed + 1 if state == require_optuna().trial.TrialState.FAIL else 0
        if failed >= MAX_FAILURES:
            raise CifarctlError(f"the last {failed} trials failed (trials.csv has each one's cause): fix the model "
                                "or the fixed settings, then go on with cifarctl tune --resume STUDY")
        done += 1
    return done


def run_recheck(study: Any, spec: TuneSpec, folder: Path, data: CIFAR10, stop: threading.Event,
                on_event: Callable[[TrialEvent], None] = lambda _event: None) -> int:
    """The re-check alone, in the time the study has left (after Ctrl-C ended its search); the runs made."""
    done = 0
    while not stop.is_set():
        fail_abandoned(study)
        left = spec.time_budget - spent_seconds(study, spec)
        if not _waiting_rechecks(study) and not recheck.enqueue(study, spec, left):
            break
        run_trial(study, spec, folder, data, stop, on_event, search=False)
        done += 1
    return done


def searching(study: Any, spec: TuneSpec, length: float | None = None) -> bool:
    """Whether the study has time for a run of ``length`` seconds (default its first rung) besides the
    re-check's reserve."""
    left = spec.time_budget - spent_seconds(study, spec) - recheck.reserve_seconds(spec)
    return left >= (length if length is not None else rung_budgets(spec)[0])


def _waiting_rechecks(study: Any) -> bool:
    states = require_optuna().trial.TrialState
    return any(recheck.is_recheck(t) for t in study.get_trials(deepcopy=False, states=(states.WAITING,)))


def run_trial(study: Any, spec: TuneSpec, folder: Path, data: CIFAR10, stop: threading.Event,
              on_event: Callable[[TrialEvent], None], search: bool = True) -> Any:
    """One configuration: asked of Optuna, trained rung by rung while successive halving lets it on (a re-check
    run: once, whole, with its own seed), and told (complete, pruned, or failed with its cause); its state."""
    from cifarctl.training import TrainingInterrupted

    trial = study.ask()
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())
    settings = suggest(trial, spec.bounds, base_config(spec).batch_size, spec.optimizers, searched_fixed(spec))
    trial.set_user_attr("settings", settings)
    on_event(TrialEvent("start", trial.number, settings))
    checking = recheck.is_recheck(trial)
    if not checking and not (search and searching(study, spec)):  # a start still queued when the search ended
        return _end(study, trial, on_event, settings, "PRUNED", None, "the search had ended")
    budgets = [spec.trial_budget] if checking else rung_budgets(spec)
    rungs: list[dict[str, Any]] = []
    try:
        for rung, budget in enumerate(budgets):
            value, epochs = _train_rung(trial, spec, folder, data, stop, on_event, settings, rung, budget)
            rungs.append({"budget": budget, "value": value, "epochs": epochs})
            trial.set_user_attr("rungs", rungs)
            if rung == len(budgets) - 1:
                break
            trial.report(value, REDUCTION ** rung)
            if trial.should_prune() and not trial.user_attrs.get("default"):  # the default always runs whole
                return _end(study, trial, on_event, settings, "PRUNED", value, f"after rung {rung}")
            if not searching(study, spec, budgets[rung + 1]):
                return _end(study, trial, on_event, settings, "PRUNED", value, "no time left for its next rung")
    except TrainingInterrupted:
        _end(study, trial, on_event, settings, "FAIL", None, "stopped")
        raise
    except Exception as exc:  # noqa: BLE001  (any error of a trial: out of memory, the model's own; the search goes on)
        return _end(study, trial, on_event, settings, "FAIL", None, _cause(exc))
    return _end(study, trial, on_event, settings, "COMPLETE", value)


def _train_rung(trial: Any, spec: TuneSpec, folder: Path, data: CIFAR10, stop: threading.Event,
                on_event: Callable[[TrialEvent], None], settings: dict[str, Any], rung: int,
                budget: float) -> tuple[float, float]:
    """The configuration's whole run in ``budget`` seconds: its held-out accuracy and epochs."""
    from cifarctl.training import train

    run_dir = folder / TRIALS / f"{trial.number:04d}"
    seed = trial.user_attrs.get("seed")  # a re-check run's own
    run_dir = run_dir / f"rung-{rung}" if len(rung_budgets(spec)) > 1 and seed is None else run_dir
    trial.set_user_attr("run_dir", str(run_dir))

    def on_epoch(record: dict[str, Any]) -> None:
        if record.get("test_acc") is not None:
            on_event(TrialEvent("epoch", trial.number, settings, float(record["epoch"]), record["test_acc"],
                                note=f"rung {rung}"))

    cfg = trial_config(spec, settings, budget, seed)
    result = train(cfg, data, out_dir=run_dir, stop=stop, clock=time.monotonic(), on_epoch=on_epoch, alone=True)
    value = result.test_accuracy if result.test_accuracy is not None and math.isfinite(result.test_accuracy) else 0.0
    epochs = result.global_step / max(len(data.train_labels) / cfg.batch_size, 1)
    trial.set_user_attr("epochs", epochs)
    trial.set_user_attr("tta", result.tta)
    return value, epochs


def _end(study: Any, trial: Any, on_event: Callable[[TrialEvent], None], settings: dict[str, Any], state: str,
         value: float | None, note: str = "") -> Any:
    """Tell Optuna how ``trial`` ended (a failure's cause kept in its ``error``) and say so; its state."""
    optuna = require_optuna()
    states = optuna.trial.TrialState
    if state == "FAIL" and note != "stopped":
        trial.set_user_attr("error", note)
    elif state == "PRUNED" and note:
        trial.set_user_attr("note", note)  # why: trials.csv's note
    study.tell(trial, value if state == "COMPLETE" else None, state=states[state])
    on_event(TrialEvent("end", trial.number, settings, value=value, state=state, note=note))
    return states[state]


def _cause(exc: BaseException) -> str:
    """An error in one line: its message's first line (type name where it has none), at most 300 characters."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300] if not isinstance(exc, CifarctlError) else text[:300]
