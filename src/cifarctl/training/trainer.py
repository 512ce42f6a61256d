"""The training loop: one run, from its first step (or its checkpoint's) to its final evaluation.

Batches are a pure function of ``(seed, epoch, step)`` (see the loader) and a checkpoint carries the
model, optimizer, scheduler and RNG states (``training.state``), so a run killed at any point and
resumed from its last checkpoint ends with the same weights as one never interrupted (on CPU).
What the loop writes goes through its ``RunFolder``; a time budget is a ``TimeBudget`` it consults;
what a model needs of training it provides itself, as hooks (``cifarctl.models.hooks``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch

from cifarctl import distributed as ddp
from cifarctl.allocator import kept_memory
from cifarctl.data.cifar10 import CIFAR10
from cifarctl.data.loader import DeviceLoader
from cifarctl.device import resolve_device
from cifarctl.evaluation import EvalResult, evaluate_model
from cifarctl.models.hooks import call_hook, read_only
from cifarctl.models.spec import display_name
from cifarctl.progress import NullProgress, Progress
from cifarctl.run.checkpoint import load_checkpoint
from cifarctl.run.config import TTA_LEVELS, TrainConfig
from cifarctl.run.folder import RunFolder
from cifarctl.training import state as run_state
from cifarctl.training.budget import RunShape
from cifarctl.training.plan import BudgetPlan
from cifarctl.training.tta_choice import time_eval_levels
from cifarctl.training.build import build_run
from cifarctl.training.metrics import RunningMetrics
from cifarctl.training.result import TrainingInterrupted, TrainResult
from cifarctl.training.schedule import rebuild_scheduler, stop_steps

TIME_BETWEEN_SAVES_S = 180.0  # default checkpoint interval when --save-every is not given


class Trainer:
    """One training run. Use ``train()`` unless you need the pieces.

    ``clock``: the ``time.monotonic()`` from which ``cfg.time_budget`` counts (default: now).
    ``resume``: the checkpoint (``load_run``'s state) to continue from, at its exact step.
    ``model``: a model the caller built, trained instead of building ``cfg.model`` (then only its label).
    ``on_epoch``: called with each epoch's record (its evaluation in it) once it is logged; what it raises
    ends the run there (a tuner's pruner), after the folder is closed.
    """

    def __init__(self, cfg: TrainConfig, data: CIFAR10, run_dir: Path, progress: Progress | None = None,
                 stop: threading.Event | None = None, resume: dict[str, Any] | None = None,
                 notify: Callable[[str], None] | None = None, clock: float | None = None,
                 model: torch.nn.Module | None = None, alone: bool = False,
                 on_epoch: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.on_epoch = on_epoch
        self.cfg, self.data, self.run_dir = dataclasses.replace(cfg), data, run_dir  # a copy: resolved below
        self.progress = progress or NullProgress()
        self.stop = stop or threading.Event()
        self.notices: list[str] = []
        self.notify = notify or (lambda _text: None)
        self.plan: BudgetPlan | None = None
        device = resolve_device(cfg.device)
        # ``alone``: one process's own run, even under torchrun (a group's seeds, each on its own device).
        self.dist = ddp.DistInfo() if alone else ddp.init_distributed(device)
        self.device = ddp.rank_device(device, self.dist) if not alone else ddp.own_device(device)
        parts = build_run(self.cfg, data, self.device, self.dist, fresh=resume is None, instance=model, clock=clock)
        for note in parts.notes:
            self.notify(note)
        self.model, self.forward, self.source = parts.built.model, parts.built.forward, parts.built.source
        self.cast, self.keep_memory, self.step_runner = parts.cast, parts.keep_memory, parts.step
        self.optimizer, self.scheduler, self.peak_lrs = parts.optimizer, parts.scheduler, parts.peak_lrs
        self.scaler, self.lookahead, self.budget = parts.step.scaler, parts.lookahead, parts.budget
        self.train_loader, self.test_loader, self.val_loader = parts.loaders.train, parts.loaders.test, parts.loaders.val
        self.running = RunningMetrics(self.device)
        self.folder = RunFolder(run_dir, self.cfg.model, writer=self.dist.is_main)
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.best_accuracy: float | None = None
        self.best_state: dict[str, torch.Tensor] | None = None  # best weights, kept for the final test (--val-split)
        self.last_eval: EvalResult | None = None
        self.last_val: EvalResult | None = None
        self.best_test: EvalResult | None = None
        self.last_train = (float("nan"), float("nan"))  # (loss, accuracy) of the last epoch record
        self.stored_metrics: dict[str, Any] = {}
        self.stops: dict[int, int] = {}  # parameter groups the schedule stops: the step they leave the backward pass
        # Alone, stop and save requests are checked every step; under DDP every few steps, since the
        # ranks must agree (one small all-reduce) before any of them leaves the loop.
        self.check_every = 1 if not self.dist.enabled else 10
        self.images_seen, self.train_seconds = 0, 0.0
        self.elapsed_before, self.run_started = 0.0, None  # the run's time in earlier sessions; this one's start
        if resume is not None:
            run_state.restore(self, resume)

    @property
    def best_selected_on(self) -> str:
        return "val" if self.val_loader is not None else "test"

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Train to the end of the run (or to a stop request: then ``TrainingInterrupted``)."""
        self.folder.open(self.config_record(), tensorboard=self.cfg.tensorboard, resumed_step=self.global_step)
        try:
            with kept_memory(self.keep_memory):  # glibc keeps the memory each step frees, for the next one
                started = self.run_started = time.perf_counter()
                while not self.finished():
                    self._start_epoch()
                    for x, y in self.train_loader.epoch(self.epoch, self.step_in_epoch):
                        self._train_step(x, y)
                        self._count_step(len(y))
                        self._consult_budget()
                        self._report_step()
                        self._save_or_stop()
                        if self._done():
                            break
                    self._end_epoch()
                return self.result(time.perf_counter() - started, self.images_seen / max(self.train_seconds, 1e-9))
        finally:
            self.folder.close()

    def _start_epoch(self) -> None:
        self.progress.start(self._epoch_label(), len(self.train_loader), "steps")
        self.progress.advance(self.step_in_epoch)
        self._epoch_started, self._epoch_images = time.perf_counter(), 0
        self._last_save = time.perf_counter()
        call_hook(self.model, "on_epoch_start", self.epoch, read_only(self.cfg.to_dict()))
        self.stops = stop_steps(self.cfg, self.optimizer, len(self.train_loader))

    def _epoch_label(self) -> str:
        if self._measuring():  # the run's length is not known until the first steps are measured
            return f"epoch {self.epoch + 1} (measuring this machine)"
        return f"epoch {self.epoch + 1}/{math.ceil(self.cfg.epochs)}"

    def _train_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One optimizer step (``StepRunner``), then the schedule's step and the lookahead's."""
        if self.stops and not self._measuring():
            self._leave_stopped_groups()
        self.step_runner(x, y, self.running)
        step, total = self.global_step + 1, self.cfg.schedule_steps or 1
        if step < total and not self._measuring():  # past its end (a run lengthened on resume) it stays at its final lr
            self.scheduler.step()
        if self.lookahead is not None:
            self.lookahead.step(self.model, step, total)

    def _leave_stopped_groups(self) -> None:
        """A parameter group whose lr the schedule has taken to zero leaves the backward pass: it cannot change any
        more, and its gradient costs time (airbench94's stem bias under the record's recipe stops after 0.19 of
        an epoch, where the frontier's plan counts its steps cheaper; until the next epoch's hook froze it they
        were not)."""
        for index, stop in list(self.stops.items()):
            if self.global_step >= stop:
                for param in self.optimizer.param_groups[index]["params"]:
                    param.requires_grad_(False)
                del self.stops[index]

    def _count_step(self, images: int) -> None:
        self.step_in_epoch += 1
        self.global_step += 1
        self.images_seen += images * self.dist.world_size  # every rank took an equal share
        self._epoch_images += images * self.dist.world_size

    def _report_step(self) -> None:
        """Advance the progress bar; every ``log_every`` steps (and at epoch end) read and log metrics."""
        info: dict[str, object] = {}
        steps = len(self.train_loader)
        if self.global_step % self.cfg.log_every == 0 or self.step_in_epoch == steps or self._done():
            loss, acc = self.running.read()
            rate = self._epoch_images / max(time.perf_counter() - self._epoch_started, 1e-9)
            info = {"loss": loss, "acc": acc, "img_s": rate}
            if self.global_step % self.cfg.log_every == 0:
                self.folder.append({"type": "step", "epoch": self.epoch, "step": self.step_in_epoch,
                                    "global_step": self.global_step, "loss": loss, "acc": acc,
                                    "lr": self.optimizer.param_groups[0]["lr"], "images_per_s": rate})
        self.progress.advance(1, **info)

    def _save_or_stop(self) -> None:
        """Save when due; when asked to stop, save and raise ``TrainingInterrupted``."""
        if self.budget is not None and self.budget.measuring:  # not fixed yet: a checkpoint could not resume to it
            if not self.stop.is_set() or self.dist.enabled:
                return
            self._fit_to_budget(self.budget.step_time_so_far())
        due = (self.global_step % self.cfg.save_every == 0 if self.cfg.save_every
               else time.perf_counter() - self._last_save >= TIME_BETWEEN_SAVES_S)
        stop = self.stop.is_set()
        if self.dist.enabled:  # all ranks must take the same branch: agree every few steps
            if self.global_step % self.check_every:
                return
            stop, due = ddp.any_rank([stop, due], self.device)
        if not (stop or (due and self.step_in_epoch < len(self.train_loader))):  # an epoch end saves anyway
            return
        self.save()
        self._last_save = time.perf_counter()
        if stop:
            self.progress.finish()
            raise TrainingInterrupted(self.run_dir, self.global_step)

    def _done(self) -> bool:
        """--max-steps reached, or a fraction of an epoch that ends the run (--epochs 7.59)."""
        if self.cfg.max_steps is not None and self.global_step >= self.cfg.max_steps:
            return True
        return self.global_step >= math.ceil(self.cfg.epochs * len(self.train_loader))

    def finished(self) -> bool:
        return self.epoch >= self.cfg.epochs or self._done()

    def _end_epoch(self) -> None:
        """Close the epoch (whole, or cut by --max-steps): its record, the evaluation that is due, a checkpoint."""
        self.progress.finish()
        seconds = time.perf_counter() - self._epoch_started
        self.train_seconds += seconds
        steps = len(self.train_loader)
        if self.step_in_epoch == steps:
            self.epoch, self.step_in_epoch = self.epoch + 1, 0
        train_loss, train_acc = self.last_train = self.running.read()
        record: dict[str, Any] = {"type": "epoch", "epoch": round(self.epoch + self.step_in_epoch / steps, 4),
                                  "global_step": self.global_step, "train_loss": train_loss, "train_acc": train_acc,
                                  "lr": self.optimizer.param_groups[0]["lr"], "seconds": round(seconds, 3)}
        final = self.finished()
        cfg = self.cfg
        due = final or (cfg.eval_every and self.step_in_epoch == 0 and self.epoch % cfg.eval_every == 0)
        best = cfg.eval and bool(due) and self._score(record, final)
        self.folder.append(record)
        if self.on_epoch is not None:
            self.on_epoch(record)
        if final and cfg.eval and self.val_loader is not None:
            self._final_test()
        self.save(best=best)
        if self.step_in_epoch == 0:
            self.running.reset()  # the next epoch's train metrics start from zero
        self._refit_budget()

    def _score(self, record: dict[str, Any], final: bool) -> bool:
        """Evaluate at an epoch end into ``record``; True when it is the best so far."""
        if self.val_loader is not None:  # choose on held-out training images; the test set waits
            result = self.last_val = self._evaluate(self.val_loader)
            record.update(val_loss=result.loss, val_acc=result.accuracy)
        else:  # the final evaluation is the reported one: with the recipe's test-time augmentation
            result = self.last_eval = self._evaluate(self.test_loader, self.cfg.tta if final else 0)
            record.update(test_loss=result.loss, test_acc=result.accuracy, tta=result.extra["tta_level"])
        if self.best_accuracy is not None and result.accuracy <= self.best_accuracy:
            return False
        self.best_accuracy = result.accuracy
        if self.val_loader is not None:
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return True

    def _evaluate(self, loader: DeviceLoader, tta: int | str = 0, model: torch.nn.Module | None = None) -> EvalResult:
        if self.dist.enabled:  # ranks update BatchNorm statistics on their own shards: use rank 0's
            for buffer in self.model.buffers():
                torch.distributed.broadcast(buffer, src=0)
        return evaluate_model(model or self.model, loader, len(self.data.classes), amp=self.cfg.eval_amp,
                              progress=self.progress, classes=self.data.classes, tta=tta,
                              tta_fraction=self.cfg.tta_fraction)

    def _final_test(self) -> None:
        """Score ``last.pt`` and ``best.pt`` on the test set, once, at the end of a --val-split run."""
        self.last_eval = self._evaluate(self.test_loader, self.cfg.tta)
        best_state = self.best_state
        if best_state is None and (self.run_dir / "best.pt").is_file():  # chosen before a resume
            best_state = load_checkpoint(self.run_dir / "best.pt")["model"]
        if best_state is not None:
            best_model = copy.deepcopy(self.model)
            best_model.load_state_dict(best_state)
            self.best_test = self._evaluate(self.test_loader, self.cfg.tta, model=best_model)
        record = {"type": "final", "global_step": self.global_step, "test_loss": self.last_eval.loss,
                  "test_acc": self.last_eval.accuracy, "tta": self.cfg.tta}
        if self.best_test is not None:
            record.update(best_test_loss=self.best_test.loss, best_test_acc=self.best_test.accuracy)
        self.folder.append(record)

    # -- the time budget ---------------------------------------------------------------------
    def _consult_budget(self) -> None:
        """While a time budget measures this machine, report the step; plan once it has measured enough."""
        if self._measuring():
            assert self.budget is not None
            step_s = self.budget.step_taken()
            if step_s is not None:
                self._fit_to_budget(step_s)

    def _measuring(self) -> bool:
        return self.budget is not None and self.budget.measuring

    def _fit_to_budget(self, step_s: float) -> None:
        """Fix the run's length (and final TTA level) to what the rest of the budget allows."""
        assert self.budget is not None
        cfg = self.cfg
        level_s = ({level: 0.0 for level in TTA_LEVELS} if not cfg.eval else
                   time_eval_levels(self.model, next(iter(self.test_loader.epoch(0)))[0], cfg.tta, cfg.eval_amp,
                                    cfg.tta_fraction))
        shape = RunShape(len(self.train_loader), len(self.test_loader),
                         len(self.val_loader) if self.val_loader is not None else None, cfg.eval, cfg.eval_every,
                         cfg.tta, cfg.tta_fraction)
        self._apply_plan(self._shared(self.budget.plan(step_s, level_s, shape, self.global_step)))
        self.notify(self.plan.describe(display_name(cfg.model)) if self.plan else "")

    def _refit_budget(self) -> None:
        """At an epoch's end: if the pace changed since the plan, refit the run's length so that it ends on time."""
        if self.budget is None or self.budget.measuring or self.finished():
            return
        before = self.plan.steps if self.plan else 0
        plan = self._shared(self.budget.refit(self.global_step) if self.dist.is_main else None)
        if plan is not None:
            self._apply_plan(plan)
            what = "keep the run within" if plan.steps < before else "use"
            self.notify(f"{plan.note}: {plan.steps:,} steps in all ({plan.epochs:.2f} epochs) {what} its "
                        f"{self.budget.seconds:.0f} s")

    def _shared(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank of this run (``value`` itself for a run alone, whatever group it is in)."""
        return ddp.broadcast_object(value) if self.dist.enabled else value

    def _apply_plan(self, plan: BudgetPlan) -> None:
        """Fix the run's length (and its final TTA level) to ``plan``'s, and the schedule to that length."""
        cfg, self.plan = self.cfg, plan
        cfg.tta = plan.tta
        cfg.schedule_steps = cfg.max_steps = plan.steps
        cfg.epochs = -(-plan.steps // len(self.train_loader))
        self.scheduler = rebuild_scheduler(cfg, self.optimizer, self.peak_lrs, len(self.train_loader),
                                           self.global_step)
        self.stops = stop_steps(cfg, self.optimizer, len(self.train_loader))
        self.folder.write_config(self.config_record())
        self.folder.append({"type": "budget", "global_step": self.global_step, **plan.to_dict()})
        self.progress.relabel(self._epoch_label())

    # -- saving and the result ---------------------------------------------------------------
    def save(self, best: bool = False) -> None:
        """Every rank calls this (it gathers RNG states and metrics); rank 0 writes."""
        self.folder.save(run_state.capture(self), best=best)

    def elapsed(self) -> float:
        """The run's seconds so far, over every session it was trained in."""
        now = time.perf_counter() - self.run_started if self.run_started is not None else 0.0
        return self.elapsed_before + now

    def epochs_trained(self) -> float:
        return round(self.global_step / len(self.train_loader), 4)

    def config_record(self) -> dict[str, Any]:
        """config.json: every setting the run used, and its time budget's plan."""
        plan = {"budget_plan": self.plan.to_dict()} if self.plan else {}
        return {**self.cfg.to_dict(), "world_size": self.dist.world_size, "best_selected_on": self.best_selected_on,
                "model_source": self.source.to_dict(), **plan}

    def stored_result(self) -> TrainResult:
        """The results a finished run recorded in its checkpoint (for a resume with nothing left to do)."""
        stored = self.stored_metrics
        result = self.result(0.0, 0.0)
        result.test_accuracy, result.test_loss = stored.get("test_accuracy"), stored.get("test_loss")
        result.val_accuracy, result.best_test_accuracy = stored.get("val_accuracy"), stored.get("best_test_accuracy")
        result.tta, result.finished_before = stored.get("tta") or 0, True
        result.total_seconds = self.elapsed_before
        return result

    def result(self, seconds: float, images_per_s: float) -> TrainResult:
        test, val, best = self.last_eval, self.last_val, self.best_test
        return TrainResult(
            self.run_dir, self.cfg.model, self.epoch, self.global_step, *self.last_train,
            test.accuracy if test else None, test.loss if test else None, seconds, images_per_s, str(self.device),
            val_accuracy=val.accuracy if val else None, best_test_accuracy=best.accuracy if best else None,
            best_selected_on=self.best_selected_on, tta=test.extra.get("tta_level", 0) if test else 0,
            budget=self.plan.to_dict() if self.plan else None, epochs_trained=self.epochs_trained(),
            total_seconds=self.elapsed())
