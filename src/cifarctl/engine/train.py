"""The training loop: one run folder, checkpoints that resume at the exact step, metrics.jsonl.

A run folder holds ``config.json``, ``last.pt``, ``best.pt`` (best test accuracy) and
``metrics.jsonl``. Batches are a pure function of ``(seed, epoch, step)`` (see the loader) and the
checkpoint carries the model, optimizer, scheduler and RNG states, so a run killed at any point and
resumed from its last checkpoint ends with the same weights as one never interrupted (on CPU).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import threading
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from cifarctl import paths
from cifarctl.atomic import write_text
from cifarctl.data.cifar10 import CIFAR10
from cifarctl.data.loader import DeviceLoader, epoch_seed, normalize
from cifarctl.engine.budget import CALIBRATION_MAX_STEPS, CALIBRATION_MIN_S, CALIBRATION_SHARE, CALIBRATION_STEPS, \
    BudgetPlan, Stopwatch, plan_steps
from cifarctl.engine.checkpoint import find_latest, load_checkpoint, load_weights, save_checkpoint
from cifarctl.engine import distributed as ddp
from cifarctl.engine.config import TrainConfig
from cifarctl.engine.device import autocast_dtype, default_channels_last, needs_grad_scaler, resolve_device
from cifarctl.engine.evaluate import EvalResult, evaluate_model, tta_logits
from cifarctl.engine.ema import Lookahead
from cifarctl.engine.metrics import MetricsLog, RunningMetrics, TensorBoardWriter
from cifarctl.engine.runs import register_run
from cifarctl.engine.schedule import build_optimizer, build_scheduler, schedule_steps
from cifarctl.errors import CheckpointError, CifarctlError, FileSystemError, RunInUse, UsageError
from cifarctl.locks import exclusive
from cifarctl.models import create_model
from cifarctl.progress import NullProgress, Progress

TIME_BETWEEN_SAVES_S = 180.0  # default checkpoint interval when --save-every is not given
TTA_VIEWS = {0: 1, 1: 2, 2: 6}  # forward passes per image at each test-time augmentation level
# Under a time budget the recipe's test-time augmentation stays unless its final evaluation would take
# more than this share of the budget (on a 2-core AVX2 CPU, airbench94's level 2 takes 150 s).
TTA_BUDGET_SHARE = 0.25
WHITENING_IMAGES = 5000       # training images whose 2x2 patches set a whitening stem (airbench's number)


class TrainingInterrupted(CifarctlError):
    """Training stopped on request after saving; ``run_dir`` resumes it."""

    exit_code = 130

    def __init__(self, run_dir: Path, global_step: int) -> None:
        super().__init__(f"stopped at step {global_step}; the checkpoint is in {run_dir}")
        self.run_dir, self.global_step = run_dir, global_step


@dataclass
class TrainResult:
    """What a run achieved; accuracies in percent (test ones are None with ``eval=False``)."""

    run_dir: Path
    model: str
    epochs_completed: int
    global_step: int
    train_loss: float
    train_accuracy: float
    test_accuracy: float | None
    test_loss: float | None
    seconds: float                   # wall time of the run, evaluation included
    images_per_s: float              # training throughput (evaluation excluded)
    device: str
    val_accuracy: float | None = None     # last validation accuracy (with --val-split)
    best_test_accuracy: float | None = None  # best.pt on the test set (with --val-split)
    best_selected_on: str = "test"   # which split chose best.pt
    tta: int = 0                     # test-time augmentation level of the test numbers
    finished_before: bool = False    # a resumed run that had nothing left to do
    budget: dict[str, Any] | None = None  # the time-budget plan (BudgetPlan.to_dict()), with --time-budget


def new_run_dir(model_name: str) -> Path:
    """A fresh folder ``<runs>/<model>/<timestamp>`` (suffixed if taken)."""
    base = paths.runs_root() / model_name / datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def latest_run_dir(model_name: str) -> Path:
    """The most recently written run folder of ``model_name`` that has a ``last.pt``."""
    return find_latest(model_name).parent


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    elif device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
    elif device.type == "mps" and "mps" in state:
        torch.mps.set_rng_state(state["mps"])


def validation_split(labels: torch.Tensor, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train_indices, val_indices)``: ``size`` images held out, stratified by class, seeded.

    Each class gives its share of ``size`` (largest remainders first); which of its images go is a
    seeded permutation, so the same seed always holds out the same images.
    """
    if not 0 < size < len(labels):
        raise UsageError(f"--val-split must be between 1 and {len(labels) - 1} images, got {size}")
    classes, counts = torch.unique(labels, return_counts=True)
    exact = counts.double() * size / len(labels)
    take = exact.floor().long()
    remainder = exact - take
    take[remainder.argsort(descending=True, stable=True)[: size - int(take.sum())]] += 1
    gen = torch.Generator().manual_seed(epoch_seed(seed, -2000))
    held = []
    for cls, n in zip(classes.tolist(), take.tolist()):
        members = torch.nonzero(labels == cls).flatten()
        held.append(members[torch.randperm(len(members), generator=gen)[:n]])
    val = torch.cat(held).sort().values
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[val] = False
    return torch.nonzero(keep).flatten(), val


class Trainer:
    """One training run. Use ``train()`` unless you need the pieces."""

    def __init__(self, cfg: TrainConfig, data: CIFAR10, run_dir: Path, progress: Progress | None = None,
                 stop: threading.Event | None = None, resume: dict[str, Any] | None = None,
                 notify: Callable[[str], None] | None = None, clock: float | None = None) -> None:
        """``clock``: the ``time.monotonic()`` from which ``cfg.time_budget`` counts (default: now)."""
        clock = time.monotonic() if clock is None else clock
        self.cfg, self.data, self.run_dir = dataclasses.replace(cfg), data, run_dir  # a copy: resolved below
        self.progress = progress or NullProgress()
        self.stop = stop or threading.Event()
        self.notices: list[str] = []
        self.notify = notify or (lambda _text: None)
        self.plan: BudgetPlan | None = None
        device = resolve_device(cfg.device)
        if device.type == "mps" and cfg.compile:
            raise UsageError("--compile is not used on Apple GPUs (torch.compile's MPS backend is experimental): "
                             "drop --compile")
        self.dist = ddp.init_distributed(device)
        self.device = ddp.rank_device(device, self.dist)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.cast = autocast_dtype(self.device, cfg.amp)
        channels_last = cfg.channels_last
        if channels_last is None:
            channels_last = default_channels_last(self.device, self.cast)
        self.model, self.forward = self._build_model(len(data.classes), channels_last, init=resume is None)
        self.scaler = torch.amp.GradScaler(self.device.type) if needs_grad_scaler(self.cast) else None
        shard = dict(rank=self.dist.rank, world_size=self.dist.world_size)
        norm = dict(channels_last=channels_last, mean=cfg.mean, std=cfg.std)
        train_images, train_labels = data.train_images, data.train_labels
        self.val_loader: DeviceLoader | None = None
        if cfg.val_split:
            keep, held = validation_split(train_labels, cfg.val_split, cfg.seed)
            self.val_loader = DeviceLoader(train_images[held], train_labels[held], cfg.eval_batch_size, self.device,
                                           train=False, **norm, **shard)
            train_images, train_labels = train_images[keep], train_labels[keep]
        self.train_loader = DeviceLoader(train_images, train_labels, ddp.per_rank_batch(cfg.batch_size, self.dist),
                                         self.device, train=True, seed=cfg.seed, translate=cfg.translate,
                                         pad_mode=cfg.pad_mode, flip=cfg.flip, **norm, **shard)
        self.test_loader = DeviceLoader(data.test_images, data.test_labels, cfg.eval_batch_size, self.device,
                                        train=False, **norm, **shard)
        cfg = self.cfg
        if resume is None and cfg.whiten and not cfg.init_ckpt:
            self._init_whitening(train_images)
        self.optimizer = build_optimizer(cfg, self.model)
        self.peak_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.clock, self.measured_steps, self.first_step_s = clock, 0, 0.0
        # A time budget not yet fitted: the run measures its first steps (on the recipe's own length meanwhile).
        self.budget_watch: Stopwatch | None = None
        if cfg.time_budget is not None and cfg.schedule_steps is None and resume is None:
            self.budget_watch = Stopwatch(self.device)
        if cfg.schedule_steps is None:  # fixed now, so a resumed run keeps this schedule whatever --epochs says
            cfg.schedule_steps = schedule_steps(cfg, len(self.train_loader))
        self.scheduler = build_scheduler(cfg, self.optimizer, len(self.train_loader))
        self.lookahead = Lookahead(self.model) if cfg.ema else None
        self.running = RunningMetrics(self.device)
        self.log = MetricsLog(run_dir / "metrics.jsonl")
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.saved_step: int | None = None    # the step of the last.pt on disk (None: none yet)
        self.best_accuracy: float | None = None
        self.best_state: dict[str, torch.Tensor] | None = None  # best weights, kept for the final test (--val-split)
        self.last_eval: EvalResult | None = None
        self.last_val: EvalResult | None = None
        self.best_test: EvalResult | None = None
        self.last_train = (float("nan"), float("nan"))  # (loss, accuracy) of the last epoch record
        self.stored_metrics: dict[str, Any] = {}
        # Alone, stop and save requests are checked every step; under DDP every few steps, since the
        # ranks must agree (one small all-reduce) before any of them leaves the loop.
        self.check_every = 1 if not self.dist.enabled else 10
        if resume is not None:
            self._restore(resume)

    @property
    def best_selected_on(self) -> str:
        return "val" if self.val_loader is not None else "test"

    # -- the time budget ---------------------------------------------------------------------
    # The first steps of a run with a time budget measure the step time. While they run the lr is held
    # at the schedule's first value, which is the same whatever its length; then the length is fixed,
    # the schedule built for it and advanced to the step reached. Nothing is thrown away.
    @property
    def measuring(self) -> bool:
        return self.budget_watch is not None

    def _measure_step(self) -> None:
        """After each step while measuring: start the clock after the first, plan once enough are timed."""
        assert self.cfg.time_budget is not None and self.budget_watch is not None
        self.measured_steps += 1
        if self.measured_steps == 1:  # the first step builds kernels and caches: not typical
            self.first_step_s = self.budget_watch.seconds()
            self.budget_watch = Stopwatch(self.device)
            if time.monotonic() - self.clock > self.cfg.time_budget and not self.dist.enabled:
                self._fit_to_budget(self.first_step_s)  # over already: says so now
            return
        timed, seconds = self.measured_steps - 1, self.budget_watch.seconds()
        enough = timed >= CALIBRATION_STEPS and (self.dist.enabled or seconds >= CALIBRATION_MIN_S)
        # A slow machine stops measuring after a twentieth of the budget: those steps run at the held lr.
        slow = not self.dist.enabled and seconds >= CALIBRATION_SHARE * self.cfg.time_budget
        if enough or slow or timed >= CALIBRATION_MAX_STEPS:  # under DDP a fixed count: every rank plans at once
            self._fit_to_budget(seconds / timed)

    def _fit_to_budget(self, step_s: float) -> None:
        """Fix the run's length to what the rest of the budget allows, and rebuild the schedule for it."""
        cfg = self.cfg
        assert cfg.time_budget is not None
        level_s = self._time_eval_levels() if cfg.eval else {level: 0.0 for level in TTA_VIEWS}
        cfg.tta, note = choose_tta(cfg.tta, level_s, len(self.test_loader), cfg.time_budget)
        per_epoch = self.val_loader if self.val_loader is not None else self.test_loader
        eval_s = level_s[0] * len(per_epoch) if cfg.eval and cfg.eval_every else 0.0
        final_eval_s = level_s[cfg.tta] * len(self.test_loader)
        if self.val_loader is not None:  # the val pass at the end, and last.pt and best.pt on the test set
            final_eval_s = eval_s + 2 * final_eval_s
        spent = time.monotonic() - self.clock
        plan = plan_steps(cfg.time_budget, spent, step_s, len(self.train_loader), eval_s, final_eval_s,
                          cfg.eval_every if cfg.eval else 0, done_steps=self.global_step)
        plan.tta, plan.note, plan.measured_steps = cfg.tta, note, self.global_step
        self.plan = plan = ddp.broadcast_object(plan)  # every rank trains the same number of steps
        cfg.tta = plan.tta
        cfg.schedule_steps = cfg.max_steps = plan.steps
        cfg.epochs = -(-plan.steps // len(self.train_loader))
        self.scheduler = self._schedule_from(self.global_step)
        self.budget_watch = None
        self._write_config()
        if self.dist.is_main:
            self.log.append({"type": "budget", "global_step": self.global_step, **plan.to_dict()})
        self.notify(plan.describe(cfg.model))

    def _schedule_from(self, step: int) -> Any:
        """A fresh schedule of ``cfg.schedule_steps`` steps over the optimizer's peak lrs, advanced to ``step``."""
        for group, peak in zip(self.optimizer.param_groups, self.peak_lrs):
            group["lr"] = peak
            group.pop("initial_lr", None)
        scheduler = build_scheduler(self.cfg, self.optimizer, len(self.train_loader))
        with warnings.catch_warnings():  # "step() before optimizer.step()": the steps were taken before it existed
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(step):
                scheduler.step()
        return scheduler

    def _time_eval_levels(self) -> dict[int, float]:
        """Seconds per evaluation batch at each test-time augmentation level.

        Level 0 is timed on a whole batch, after a first pass that builds the kernels for its shape
        (a 100-image sample underestimated a 500-image batch by 1.3x on a CPU). The run's own level
        costs more than its views (its flips and shifts: level 2 is 6.9x level 0 on a CPU, not 6x),
        so its ratio to level 0 is timed on 100 images; the level between is scaled by its views.
        """
        cast = autocast_dtype(self.device, self.cfg.eval_amp)
        x, _ = next(iter(self.test_loader.epoch(0)))

        def timed(batch: torch.Tensor, level: int) -> float:
            watch = Stopwatch(self.device)
            tta_logits(self.model, batch, level)
            return watch.seconds()

        tta = self.cfg.tta
        self.model.eval()
        try:
            with torch.inference_mode(), torch.autocast(self.device.type, dtype=cast or torch.float32,
                                                        enabled=cast is not None):
                # The larger of two timings each: one pass is noisy, and running over the budget is worse
                # than a step less (one pass under-estimated a 10,000-image TTA 2 evaluation by a third).
                tta_logits(self.model, x, 0)
                level0 = max(timed(x, 0), timed(x, 0))
                ratio = 1.0
                if tta:
                    sample = x[:100]
                    tta_logits(self.model, sample, 0)
                    ratio = max(timed(sample, tta) / max(timed(sample, 0), 1e-9) for _ in range(2))
        finally:
            self.model.train()
        per_view = level0 * ratio / TTA_VIEWS[tta]
        return {level: level0 if level == 0 else level0 * ratio if level == tta else per_view * views
                for level, views in TTA_VIEWS.items()}

    def _init_whitening(self, images: torch.Tensor) -> None:
        """Set the model's whitening stem from a seeded sample of training images (normalised, not augmented).

        A random sample, not the first images: a dataset imported from class folders is sorted by class.
        """
        init = getattr(self.model, "init_whitening", None)
        if init is None:
            raise UsageError(f"--whiten applies to models with a whitening stem (airbench94), not {self.cfg.model}")
        gen = torch.Generator().manual_seed(epoch_seed(self.cfg.seed, -3000))
        pick = torch.randperm(len(images), generator=gen)[:WHITENING_IMAGES]
        sample = images[pick].permute(0, 3, 1, 2).to(self.device)
        init(normalize(sample, mean=self.cfg.mean, std=self.cfg.std))

    def _set_whitening_bias(self) -> None:
        """The whitening stem's bias trains for the first ``whiten_bias_epochs`` epochs, then is frozen."""
        stem = getattr(self.model, "whiten", None)
        if self.cfg.whiten and isinstance(stem, torch.nn.Conv2d) and stem.bias is not None:
            stem.bias.requires_grad_(self.epoch < self.cfg.whiten_bias_epochs)

    def _build_model(self, num_classes: int, channels_last: bool, init: bool) -> tuple[torch.nn.Module, Any]:
        """The model on its device (and its DDP / compiled wrapper for the forward pass)."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        model = create_model(cfg.model, num_classes=num_classes, **cfg.model_options)
        if cfg.init_ckpt and init:
            load_weights(model, cfg.model, load_checkpoint(cfg.init_ckpt), cfg.init_ckpt)
        if self.dist.rank:  # every rank starts from the same weights but draws its own dropout masks
            torch.manual_seed(epoch_seed(cfg.seed, -1 - self.dist.rank))
        if self.dist.enabled and cfg.sync_bn:
            if self.device.type != "cuda":
                raise CifarctlError("--sync-bn needs CUDA (SyncBatchNorm runs on GPUs only); drop it on CPU")
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(self.device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        wrapped: torch.nn.Module = model
        if self.dist.enabled:
            # A whitening stem's bias stops training after a few epochs (requires_grad off): DDP must then
            # expect parameters without gradients.
            wrapped = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=cfg.whiten)
        return model, torch.compile(wrapped) if cfg.compile else wrapped

    # -- checkpoints -------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict() if self.scaler else None,
            "model_name": self.cfg.model, "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step, "world_size": self.dist.world_size, "rng": self._rng_states(),
            "config": self.cfg.to_dict(), "running": self.running.state_dict(), "best_accuracy": self.best_accuracy,
            "metrics": self._metrics_summary(), "lookahead": self.lookahead.state_dict() if self.lookahead else None,
            "last_train": list(self.last_train), "best_selected_on": self.best_selected_on,
            "classes": list(self.data.classes), "budget": self.plan.to_dict() if self.plan else None,
        }

    def _metrics_summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.last_eval is not None:
            out.update(test_accuracy=self.last_eval.accuracy, test_loss=self.last_eval.loss,
                       tta=self.last_eval.extra.get("tta_level", 0))
        if self.last_val is not None:
            out.update(val_accuracy=self.last_val.accuracy, val_loss=self.last_val.loss)
        if self.best_test is not None:
            out.update(best_test_accuracy=self.best_test.accuracy, best_test_loss=self.best_test.loss)
        return out

    def _rng_states(self) -> dict[str, Any] | list[dict[str, Any]]:
        """This process's RNG state alone; every rank's (a list, by rank) under DDP."""
        states = ddp.gather_objects(_rng_state(self.device))
        return states[0] if len(states) == 1 else states

    def save(self, best: bool = False) -> None:
        """Every rank calls this (it gathers RNG states and metrics); rank 0 writes.

        A failed write (a full disk) leaves the previous checkpoint in place and says so.
        """
        state = self._state()
        if not self.dist.is_main:
            return
        try:
            save_checkpoint(self.run_dir / "last.pt", state)
            self.saved_step = self.global_step
            if best:
                save_checkpoint(self.run_dir / "best.pt", state)
        except FileSystemError as exc:
            raise FileSystemError(f"{exc}; {self._what_is_kept()}", exc.errno) from None

    def _what_is_kept(self) -> str:
        last = self.run_dir / "last.pt"
        if self.saved_step is None:
            return "no checkpoint of this run was written before; free some space and train again"
        return (f"{last} (step {self.saved_step}) is intact, and best.pt as it was: free some space, then "
                f"`cifarctl train {self.cfg.model} --resume {self.run_dir}` continues from step {self.saved_step}")

    def _restore(self, state: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(state["model"])  # a model fills in what older checkpoints lack
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.scaler is not None and state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
            self.global_step = self.saved_step = int(state["global_step"])
            if self.dist.is_main:  # the sums cover all ranks; rank 0 carries them on
                self.running.load_state_dict(state["running"])
            self.best_accuracy = state.get("best_accuracy")
            if state.get("budget"):
                self.plan = BudgetPlan(**{k: v for k, v in state["budget"].items() if k != "epochs"})
            if self.lookahead is not None:
                self.lookahead.load_state_dict(state["lookahead"])
            self.last_train = tuple(state.get("last_train") or self.last_train)
            self.stored_metrics = dict(state.get("metrics") or {})
            self._restore_rng(state)
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{self.run_dir / 'last.pt'} cannot be resumed ({exc})") from None
        # Records after the checkpoint describe work that is about to be redone.
        if self.dist.is_main:
            self.log.truncate_after(self.global_step)

    def _restore_rng(self, state: dict[str, Any]) -> None:
        saved = int(state.get("world_size", 1))
        rng = state["rng"]
        if saved == self.dist.world_size:
            _set_rng_state(rng[self.dist.rank] if isinstance(rng, list) else rng, self.device)
            return
        self.notices.append(
            f"the checkpoint was written by {saved} process(es), this run has {self.dist.world_size}: the data "
            "order, augmentation and global batches continue exactly (--batch-size is global), but dropout "
            "randomness starts afresh, so the result will not be bit-identical to an uninterrupted run")

    # -- the loop ----------------------------------------------------------------------------
    def _optimizer_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, backward and one optimizer step; ``(loss, logits)``."""
        with torch.autocast(self.device.type, dtype=self.cast or torch.float32, enabled=self.cast is not None):
            logits = self.forward(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=self.cfg.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        return loss, logits

    def _train_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        loss, logits = self._optimizer_step(x, y)
        step, total = self.global_step + 1, self.cfg.schedule_steps or 1
        if step < total and not self.measuring:  # past its end (a run lengthened on resume) it stays at its final lr
            self.scheduler.step()
        if self.lookahead is not None:
            self.lookahead.step(self.model, step, total)
        self.running.update(loss, logits, y)

    def _done(self) -> bool:
        return self.cfg.max_steps is not None and self.global_step >= self.cfg.max_steps

    def _evaluate(self, loader: DeviceLoader, tta: int = 0, model: torch.nn.Module | None = None) -> EvalResult:
        if self.dist.enabled:  # ranks update BatchNorm statistics on their own shards: use rank 0's
            for buffer in self.model.buffers():
                torch.distributed.broadcast(buffer, src=0)
        return evaluate_model(model or self.model, loader, len(self.data.classes), amp=self.cfg.eval_amp,
                              progress=self.progress, classes=self.data.classes, tta=tta)

    def _finished(self) -> bool:
        return self.epoch >= self.cfg.epochs or self._done()

    def _end_epoch(self, seconds: float) -> None:
        cfg = self.cfg
        train_loss, train_acc = self.running.read()
        self.last_train = (train_loss, train_acc)
        steps = len(self.train_loader)
        record: dict[str, Any] = {"type": "epoch", "epoch": round(self.epoch + self.step_in_epoch / steps, 4),
                                  "global_step": self.global_step, "train_loss": train_loss, "train_acc": train_acc,
                                  "lr": self.optimizer.param_groups[0]["lr"], "seconds": round(seconds, 3)}
        final = self._finished()
        due = final or (cfg.eval_every and self.step_in_epoch == 0 and self.epoch % cfg.eval_every == 0)
        best = False
        if cfg.eval and due:
            if self.val_loader is not None:  # choose on held-out training images; the test set waits
                result = self.last_val = self._evaluate(self.val_loader)
                record.update(val_loss=result.loss, val_acc=result.accuracy)
            else:  # the final evaluation is the reported one: with the recipe's test-time augmentation
                result = self.last_eval = self._evaluate(self.test_loader, cfg.tta if final else 0)
                record.update(test_loss=result.loss, test_acc=result.accuracy, tta=result.extra["tta_level"])
            best = self.best_accuracy is None or result.accuracy > self.best_accuracy
            if best:
                self.best_accuracy = result.accuracy
                if self.val_loader is not None:
                    self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if self.dist.is_main:
            self.log.append(record)
        if final and cfg.eval and self.val_loader is not None:
            self._final_test()
        self.save(best=best)

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
        if self.dist.is_main:
            self.log.append(record)

    def _report_step(self, steps: int, epoch_images: int, epoch_started: float) -> None:
        """Advance the progress bar; every ``log_every`` steps (and at epoch end) read and log metrics."""
        info: dict[str, object] = {}
        if self.global_step % self.cfg.log_every == 0 or self.step_in_epoch == steps or self._done():
            loss, acc = self.running.read()
            rate = epoch_images / max(time.perf_counter() - epoch_started, 1e-9)
            info = {"loss": loss, "acc": acc, "img_s": rate}
            if self.global_step % self.cfg.log_every == 0 and self.dist.is_main:
                self.log.append({"type": "step", "epoch": self.epoch, "step": self.step_in_epoch,
                                 "global_step": self.global_step, "loss": loss, "acc": acc,
                                 "lr": self.optimizer.param_groups[0]["lr"], "images_per_s": rate})
        self.progress.advance(1, **info)

    def _save_or_stop(self, steps: int, since_save: float) -> bool:
        """Save when due or asked to stop (then raise TrainingInterrupted); True if it saved."""
        if self.measuring:  # the length is not fixed yet: a checkpoint now could not be resumed to the budget
            if not self.stop.is_set() or self.dist.enabled:
                return False
            assert self.budget_watch is not None
            timed = self.measured_steps - 1
            self._fit_to_budget(self.budget_watch.seconds() / timed if timed else self.first_step_s)
        due = (self.global_step % self.cfg.save_every == 0 if self.cfg.save_every
               else since_save >= TIME_BETWEEN_SAVES_S)
        stop = self.stop.is_set()
        if self.dist.enabled:  # all ranks must take the same branch: agree every few steps
            if self.global_step % self.check_every:
                return False
            stop, due = ddp.any_rank([stop, due], self.device)
        if not (stop or (due and self.step_in_epoch < steps)):  # an epoch end saves anyway
            return False
        self.save()
        if stop:
            self.progress.finish()
            raise TrainingInterrupted(self.run_dir, self.global_step)
        return True

    def run(self) -> TrainResult:
        cfg = self.cfg
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            register_run(self.run_dir)
            self._write_config()
        if cfg.tensorboard and self.dist.is_main:
            # Events after the checkpoint belong to work the resume redoes (as metrics.jsonl drops them).
            purge = self.global_step + 1 if self.global_step else None
            self.log.mirror = TensorBoardWriter(self.run_dir / "tensorboard", purge_step=purge)
        try:
            return self._run()
        finally:
            self.log.close()

    def _run(self) -> TrainResult:
        cfg = self.cfg
        started = last_save = time.perf_counter()
        images_seen, train_seconds = 0, 0.0
        while self.epoch < cfg.epochs and not self._done():
            steps = len(self.train_loader)
            self.progress.start(f"epoch {self.epoch + 1}/{cfg.epochs}", steps, "steps")
            self.progress.advance(self.step_in_epoch)
            epoch_started, epoch_images = time.perf_counter(), 0
            self._set_whitening_bias()
            for x, y in self.train_loader.epoch(self.epoch, self.step_in_epoch):
                self._train_step(x, y)
                self.step_in_epoch += 1
                self.global_step += 1
                if self.measuring:
                    self._measure_step()
                images_seen += len(y) * self.dist.world_size  # every rank took an equal share
                epoch_images += len(y) * self.dist.world_size
                self._report_step(steps, epoch_images, epoch_started)
                if self._save_or_stop(steps, time.perf_counter() - last_save):
                    last_save = time.perf_counter()
                if self._done():
                    break
            self.progress.finish()
            train_seconds += time.perf_counter() - epoch_started
            if self.step_in_epoch == steps:
                self.epoch, self.step_in_epoch = self.epoch + 1, 0
            self._end_epoch(time.perf_counter() - epoch_started)
            if self.step_in_epoch == 0:
                self.running.reset()  # the next epoch's train metrics start from zero
            last_save = time.perf_counter()
        return self.result(time.perf_counter() - started, images_seen / max(train_seconds, 1e-9))

    def _write_config(self) -> None:
        if not self.dist.is_main:
            return
        plan = {"budget_plan": self.plan.to_dict()} if self.plan else {}
        write_text(self.run_dir / "config.json", json.dumps(
            {**self.cfg.to_dict(), "world_size": self.dist.world_size, "best_selected_on": self.best_selected_on,
             **plan}, indent=2) + "\n")

    def stored_result(self) -> TrainResult:
        """The results a finished run recorded in its checkpoint (for a resume with nothing left to do)."""
        stored = self.stored_metrics
        result = self.result(0.0, 0.0)
        result.test_accuracy, result.test_loss = stored.get("test_accuracy"), stored.get("test_loss")
        result.val_accuracy, result.best_test_accuracy = stored.get("val_accuracy"), stored.get("best_test_accuracy")
        result.tta, result.finished_before = int(stored.get("tta") or 0), True
        return result

    def result(self, seconds: float, images_per_s: float) -> TrainResult:
        test, val, best = self.last_eval, self.last_val, self.best_test
        return TrainResult(
            self.run_dir, self.cfg.model, self.epoch, self.global_step, *self.last_train,
            test.accuracy if test else None, test.loss if test else None, seconds, images_per_s, str(self.device),
            val_accuracy=val.accuracy if val else None, best_test_accuracy=best.accuracy if best else None,
            best_selected_on=self.best_selected_on, tta=test.extra.get("tta_level", 0) if test else 0,
            budget=self.plan.to_dict() if self.plan else None)


def choose_tta(level: int, batch_s: dict[int, float], batches: int, budget_s: float) -> tuple[int, str]:
    """The test-time augmentation a time budget can afford: the recipe's ``level``, unless its final evaluation
    would take more than ``TTA_BUDGET_SHARE`` of the budget; then the highest level that fits (at least 0).

    Returns the level and a note for the user ("" when the recipe's level stays).
    """
    affordable = [lv for lv in range(level, -1, -1) if batch_s[lv] * batches <= TTA_BUDGET_SHARE * budget_s]
    chosen = affordable[0] if affordable else 0
    if chosen == level:
        return level, ""
    return chosen, (f"test-time augmentation {level} would take {batch_s[level] * batches:.0f} s of the budget; "
                    f"the final evaluation uses level {chosen} ({batch_s[chosen] * batches:.0f} s) and training the rest")


def train(cfg: TrainConfig, data: CIFAR10, out_dir: Path | None = None, progress: Progress | None = None,
          stop: threading.Event | None = None, notify: Callable[[str], None] | None = None,
          clock: float | None = None) -> TrainResult:
    """Train ``cfg.model`` on ``data`` into ``out_dir`` (default: a new run folder).

    With ``cfg.time_budget`` the run fits its length to that many seconds, counted from ``clock``
    (a ``time.monotonic()``; default: now) and says what it chose through ``notify``.
    Usage: ``train(TrainConfig("resnet50", epochs=1, device="cpu"), load_cifar10())``
    """
    run_dir = Path(out_dir) if out_dir else new_run_dir(cfg.model)
    with run_lock(run_dir):
        if (run_dir / "last.pt").exists():
            raise CifarctlError(f"{run_dir} already holds a run: resume it with --resume {run_dir}, "
                                "or choose another --out")
        return Trainer(cfg, data, run_dir, progress, stop, notify=notify, clock=clock).run()


def run_lock(run_dir: Path) -> Any:
    """Hold ``run_dir``'s lock while training in it: a second writer is refused at once, naming the holder.

    The kernel drops the lock when its process dies (even by SIGKILL). Under torchrun rank 0 alone
    takes it (the other ranks write nothing). Reading a run (evaluate, predict, export, runs) never
    takes it, so never waits.
    """
    if int(os.environ.get("RANK", "0")) != 0:
        return contextlib.nullcontext()

    def refuse(who: str) -> None:
        raise RunInUse(f"{run_dir} is in use: {who} is training in it; wait for it to finish or stop it "
                       "(a run folder has one writer at a time)")

    return exclusive(Path(run_dir), refuse)


# Settings that may change when a run is resumed: none of them alters the part already trained.
RESUMABLE = frozenset({"epochs", "device", "max_steps", "eval", "save_every", "log_every", "tensorboard"})


def load_run(run_dir: Path) -> tuple[TrainConfig, dict[str, Any]]:
    """The config and last checkpoint of the run in ``run_dir``."""
    state = load_checkpoint(run_dir / "last.pt")
    if "config" not in state or "optimizer" not in state:
        raise CheckpointError(f"{run_dir / 'last.pt'} is a weights-only checkpoint; it cannot be resumed "
                              "(use --ckpt to start from its weights)")
    return TrainConfig.from_dict(state["config"]), state


def resume_config(run_dir: Path, model: str | None = None, overrides: dict[str, Any] | None = None,
                  loaded: tuple[TrainConfig, dict[str, Any]] | None = None) -> TrainConfig:
    """The config a resumed run continues with: the run's own, plus the overrides it allows.

    A ``model`` other than the run's, or an override of a setting that shaped the finished part
    (``--lr``, ``--batch-size``, ``--data`` ...), is refused with the names of what differs.
    """
    cfg, _ = loaded or load_run(run_dir)
    if model is not None and model != cfg.model:
        raise UsageError(f"{run_dir} is a {cfg.model} run, not {model}: "
                         f"resume it with `cifarctl train {cfg.model} --resume {run_dir}`")
    stored = cfg.to_dict()
    changed = sorted(k for k, v in (overrides or {}).items()
                     if v is not None and k not in RESUMABLE and k in stored and stored[k] != v)
    if changed:
        flags = ", ".join(f"--{k.replace('_', '-')}" for k in changed)
        raise UsageError(f"{flags} cannot change when a run is resumed (the run was trained with "
                         f"{', '.join(f'{k}={stored[k]!r}' for k in changed)}); drop them, or start a new run "
                         "with --ckpt to fine-tune from its weights")
    stored.update({k: v for k, v in (overrides or {}).items() if k in RESUMABLE and v is not None})
    return TrainConfig.from_dict(stored)


def resume(run_dir: Path, data: CIFAR10, overrides: dict[str, Any] | None = None,
           progress: Progress | None = None, stop: threading.Event | None = None,
           notify: Callable[[str], None] | None = None,
           loaded: tuple[TrainConfig, dict[str, Any]] | None = None) -> TrainResult:
    """Continue the run in ``run_dir`` from its last checkpoint, at the exact step.

    Everything comes from the checkpoint; ``overrides`` may change only ``RESUMABLE`` settings
    (others are refused, see ``resume_config``). ``notify`` receives notices (e.g. a changed world
    size, or a run that was already finished, whose stored results come back). ``loaded``, the
    caller's ``load_run(run_dir)``, is accepted for compatibility; the run is read again under its lock.
    Usage: ``resume(Path("runs/resnet50/2026..."), load_cifar10())``
    """
    with run_lock(run_dir):
        # Read again under the lock (``loaded`` served the caller's checks): a writer that finished after the
        # caller read the run may have moved it on.
        return _resume_locked(run_dir, data, overrides, progress, stop, notify)


def _resume_locked(run_dir: Path, data: CIFAR10, overrides: dict[str, Any] | None, progress: Progress | None,
                   stop: threading.Event | None, notify: Callable[[str], None] | None) -> TrainResult:
    loaded = load_run(run_dir)
    cfg = resume_config(run_dir, None, overrides, loaded)
    state = loaded[1]
    trainer = Trainer(cfg, data, run_dir, progress, stop, resume=state)
    for notice in trainer.notices:
        (notify or (lambda _text: None))(notice)
    if trainer._finished():
        (notify or (lambda _text: None))(f"the run in {run_dir} is already finished ({trainer.global_step:,} steps, "
                                          f"{trainer.epoch} epochs): its stored results follow; raise --epochs "
                                          "to train on")
        return trainer.stored_result()
    return trainer.run()
