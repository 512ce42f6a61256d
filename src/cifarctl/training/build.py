"""What a run trains with, built from its config: the device's policy, the model on its device, the batch
loaders, the optimizer and its schedule, and the time budget (``build_run``: every part of a run but the loop)."""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cifarctl.allocator import keeps_memory
from cifarctl.data.cifar10 import CIFAR10
from cifarctl.data.loader import DeviceLoader, epoch_seed, normalize
from cifarctl.distributed import DistInfo, per_rank_batch
from cifarctl.device import autocast_dtype, needs_grad_scaler, takes_channels_last, uses_channels_last
from cifarctl.errors import CifarctlError, UsageError
from cifarctl.models.hooks import SAMPLE_IMAGES, call_hook, has_hook, read_only
from cifarctl.models.spec import ModelSource, display_name, file_sha256
from cifarctl.models.spec import build_model as build_named
from cifarctl.run.checkpoint import load_checkpoint, load_weights
from cifarctl.run.config import TrainConfig
from cifarctl.trace.api import inspect_model
from cifarctl.training.budget import TimeBudget
from cifarctl.training.frontier import frontier_candidate, run_phases
from cifarctl.training.lookahead import Lookahead
from cifarctl.training.schedule import build_optimizer, build_scheduler, schedule_steps
from cifarctl.training.step import StepRunner


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


@dataclass
class BuiltModel:
    """The model on its device, what the training step calls (its DDP and compiled wrapper), where its code
    came from, its memory format, and what a look at it found worth saying (``notes``: inspect's warnings,
    for a user's model)."""

    model: nn.Module
    forward: nn.Module
    source: ModelSource
    notes: list[str]
    channels_last: bool = False


def build_model(cfg: TrainConfig, num_classes: int, device: torch.device, dist: DistInfo,
                cast: torch.dtype | None, from_checkpoint: bool, instance: nn.Module | None = None) -> BuiltModel:
    """The run's model: ``cfg.model`` built (a registered name or a spec, with ``cfg.model_options``), or the
    caller's ``instance``, in the memory format this device trains it fastest in (``uses_channels_last``).
    ``from_checkpoint``: load ``cfg.init_ckpt``'s weights (a new run from --ckpt)."""
    torch.manual_seed(cfg.seed)
    notes: list[str] = []
    if instance is not None:
        model, source = instance, instance_source(cfg.model, instance)
    else:
        model, source = build_named(cfg.model, cfg.num_classes or num_classes, cfg.model_options,
                                    explicit_classes=cfg.num_classes is not None)
    channels_last = uses_channels_last(model, device, cast, registered=source.kind == "registered",
                                       asked=cfg.channels_last)
    if source.kind != "registered":  # a user's model: does it fit CIFAR's images and classes? (inspect's trace)
        notes = check_fits(model, source.spec, num_classes, channels_last and cfg.channels_last is not None)
    if cfg.init_from_data and not has_hook(model, "init_from_data"):
        raise UsageError(f"--init-from-data applies to models that set themselves from the training images (with an "
                         f"init_from_data hook); {display_name(cfg.model)} has none: drop --init-from-data")
    if cfg.init_ckpt and from_checkpoint:
        load_weights(model, cfg.model, load_checkpoint(cfg.init_ckpt), cfg.init_ckpt, model_source=source)
    if dist.rank:  # every rank starts from the same weights but draws its own dropout masks
        torch.manual_seed(epoch_seed(cfg.seed, -1 - dist.rank))
    if dist.enabled and cfg.sync_bn:
        if device.type != "cuda":
            raise CifarctlError("--sync-bn needs CUDA (SyncBatchNorm runs on GPUs only); drop it on CPU")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    wrapped: nn.Module = model
    if dist.enabled:
        # A model with an epoch hook, or parameter groups the schedule stops, may stop training some parameters
        # (a stem's bias after a few epochs): DDP must then expect parameters without gradients.
        wrapped = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=has_hook(model, "on_epoch_start") or has_hook(model, "parameter_groups"))
    return BuiltModel(model, torch.compile(wrapped) if cfg.compile else wrapped, source, notes, channels_last)


def instance_source(label: str, model: nn.Module) -> ModelSource:
    """What a checkpoint records of a model the caller built: its class, and the file it was defined in."""
    cls = type(model)
    try:
        file: str | None = inspect.getsourcefile(cls)
    except (TypeError, OSError):
        file = None
    digest = file_sha256(file) if file and Path(file).is_file() else None
    return ModelSource(label, "instance", f"{cls.__module__}.{cls.__qualname__}", file, digest)


def check_fits(model: nn.Module, spec: str, num_classes: int, channels_last: bool = False) -> list[str]:
    """Trace ``model`` on two CIFAR images, as ``inspect`` does: a model that does not fit them, or does not
    give ``num_classes`` logits, fails in one line that says where; its warnings come back as notes.
    ``channels_last``: the user asked for that layout (--channels-last), which the model must then take."""
    with torch.random.fork_rng(devices=[]):
        traced = inspect_model(model, [2, 3, 32, 32], name=spec)
        if channels_last and traced.error is None:
            if not takes_channels_last(model):
                raise UsageError(f"{spec} cannot take channels_last images: drop --channels-last, or use .reshape() "
                                 "or .flatten(1) where the model uses .view()")
    if traced.error is not None:
        where = f" at {traced.error.module}" if traced.error.module else ""
        raise UsageError(f"{spec} does not fit 3x32x32 images{where}: {traced.error.message} "
                         f"(`cifarctl inspect {spec} --input 3x32x32` shows where, and how to fix it)")
    if traced.output != [[2, num_classes]]:
        shapes = ", ".join("x".join(map(str, shape)) for shape in traced.output or [])
        raise UsageError(f"{spec} returns {shapes} for 2 images; training needs 2x{num_classes} (one logit per class): "
                         f"give it {num_classes} outputs (--num-classes {num_classes}, or --model-kwargs)")
    return [f"{w.module}: {w.message}" if w.module else w.message for w in traced.warnings]


@dataclass
class Loaders:
    """The run's batches: training (this rank's share), test, and held-out training images (--val-split)."""

    train: DeviceLoader
    test: DeviceLoader
    val: DeviceLoader | None
    train_images: torch.Tensor  # the uint8 images training draws from (without the held-out ones)


def build_loaders(cfg: TrainConfig, data: CIFAR10, device: torch.device, dist: DistInfo,
                  channels_last: bool) -> Loaders:
    shard = dict(rank=dist.rank, world_size=dist.world_size)
    norm: dict[str, Any] = dict(channels_last=channels_last, mean=cfg.mean, std=cfg.std)
    train_images, train_labels = data.train_images, data.train_labels
    val = None
    if cfg.val_split:
        keep, held = validation_split(train_labels, cfg.val_split, cfg.seed)
        val = DeviceLoader(train_images[held], train_labels[held], cfg.eval_batch_size, device, train=False,
                           **norm, **shard)
        train_images, train_labels = train_images[keep], train_labels[keep]
    train = DeviceLoader(train_images, train_labels, per_rank_batch(cfg.batch_size, dist), device, train=True,
                         seed=cfg.seed, translate=cfg.translate, pad_mode=cfg.pad_mode, flip=cfg.flip,
                         color_jitter=cfg.color_jitter, drop_last=cfg.drop_last, **norm, **shard)
    test = DeviceLoader(data.test_images, data.test_labels, cfg.eval_batch_size, device, train=False, **norm,
                        **shard)
    return Loaders(train, test, val, train_images)


def init_from_data(model: nn.Module, cfg: TrainConfig, images: torch.Tensor, device: torch.device) -> None:
    """The model's ``init_from_data`` hook with a seeded sample of training images (normalised, not augmented).

    A random sample, not the first images: a dataset imported from class folders is sorted by class.
    """
    gen = torch.Generator().manual_seed(epoch_seed(cfg.seed, -3000))
    pick = torch.randperm(len(images), generator=gen)[:SAMPLE_IMAGES]
    sample = images[pick].permute(0, 3, 1, 2).to(device)
    call_hook(model, "init_from_data", normalize(sample, mean=cfg.mean, std=cfg.std), read_only(cfg.to_dict()))


@dataclass
class RunParts:
    """Everything a run trains with but the loop: the device's policy (precision, memory, layout), the model,
    the loaders, the optimizer and its schedule, the step, and the time budget (None: a run of fixed length)."""

    device: torch.device
    cast: torch.dtype | None          # the autocast dtype (None: fp32)
    keep_memory: bool                 # glibc keeps the memory a step frees (``cifarctl.allocator``)
    built: BuiltModel
    loaders: Loaders
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    step: StepRunner
    lookahead: Lookahead | None
    budget: TimeBudget | None
    peak_lrs: list[float]             # each group's peak lr: a budget's schedule is rebuilt from them
    notes: list[str]                  # what the user should hear about the run (a user's model's warnings ...)


def build_run(cfg: TrainConfig, data: CIFAR10, device: torch.device, dist: DistInfo, fresh: bool = True,
              instance: nn.Module | None = None, clock: float | None = None) -> RunParts:
    """Build every part of the run ``cfg`` describes, in the order that keeps its random numbers (the model,
    seeded, first). ``fresh``: a new run, which loads ``--ckpt`` weights and calls the model's
    ``init_from_data`` hook (a resumed run's checkpoint has both already). ``cfg.schedule_steps`` is fixed
    here (a resumed run keeps its schedule whatever --epochs says); ``clock``: where a time budget counts from.
    """
    if device.type == "mps" and cfg.compile:
        raise UsageError("--compile is not used on Apple GPUs (torch.compile's MPS backend is experimental): "
                         "drop --compile")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    cast = autocast_dtype(device, cfg.amp)
    built = build_model(cfg, len(data.classes), device, dist, cast, from_checkpoint=fresh, instance=instance)
    notes = [f"warning: {note}" for note in built.notes]
    loaders = build_loaders(cfg, data, device, dist, built.channels_last)
    if fresh and cfg.init_from_data and not cfg.init_ckpt:
        init_from_data(built.model, cfg, loaders.train_images, device)
    budget = None  # a time budget not yet fitted: the run measures its first steps (on the recipe's length meanwhile)
    if cfg.time_budget is not None and cfg.schedule_steps is None and fresh:
        # the frontier's accuracies are test-set runs': never a choice in a run judged on held-out images
        known = frontier_candidate(cfg.model, cfg.recipe) if not data.held_out else None
        budget = TimeBudget(cfg.time_budget, time.monotonic() if clock is None else clock, device,
                            distributed=dist.enabled, accuracy=known.accuracy if known else None,
                            phases=run_phases(cfg.model, cfg.recipe, cfg.choice))
    if cfg.schedule_steps is None:  # fixed now: a resumed run keeps this schedule whatever --epochs says
        cfg.schedule_steps = schedule_steps(cfg, len(loaders.train))
    optimizer = build_optimizer(cfg, built.model)
    if cfg.head_lr is not None and not any(g.get("name") == "head" for g in optimizer.param_groups):
        notes.append(f"{display_name(cfg.model)} has no linear layer to take the classifier's lr (head lr "
                     f"{cfg.head_lr:g}): all of it trains at lr {cfg.lr:g}")
    peak_lrs = [group["lr"] for group in optimizer.param_groups]
    scheduler = build_scheduler(cfg, optimizer, len(loaders.train))
    step = StepRunner(built.forward, optimizer, torch.amp.GradScaler(device.type) if needs_grad_scaler(cast) else None,
                      device.type, cast, cfg.label_smoothing, cfg.micro_batch)
    return RunParts(device, cast, keeps_memory(device, cast, cfg.keep_memory), built, loaders, optimizer, scheduler,
                    step, Lookahead(built.model) if cfg.ema else None, budget, peak_lrs, notes)
