"""Optimizers and learning-rate schedules, stepped once per optimizer step."""

from __future__ import annotations

import math
from typing import Iterable

import torch

from cifarctl.engine.config import TrainConfig

# The course divides the learning rate by 3 every 20 epochs.
STEP_EPOCHS = 20
STEP_FACTOR = 1 / 3
ONECYCLE_START = 1 / 25     # initial lr / peak lr
ONECYCLE_END = 1 / 25e4     # final lr / peak lr


def build_optimizer(cfg: TrainConfig, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    total = max(cfg.epochs * steps_per_epoch, 1)
    warmup = cfg.warmup_epochs * steps_per_epoch
    if cfg.lr_schedule == "onecycle" and not warmup:
        warmup = 0.25 * total  # OneCycle's customary 25% ramp

    def factor(step: int) -> float:
        if cfg.lr_schedule == "onecycle":
            # Ramp linearly from lr/25 to lr, then anneal along a cosine to lr/25e4 (OneCycle's bounds).
            if step < warmup:
                return ONECYCLE_START + (1 - ONECYCLE_START) * step / warmup
            t = min((step - warmup) / max(total - warmup, 1), 1.0)
            return ONECYCLE_END + (1 - ONECYCLE_END) * 0.5 * (1 + math.cos(math.pi * t))
        scale = min(1.0, (step + 1) / warmup) if warmup else 1.0
        if cfg.lr_schedule == "step":
            scale *= STEP_FACTOR ** (step // (STEP_EPOCHS * steps_per_epoch))
        elif cfg.lr_schedule == "cosine":
            scale *= 0.5 * (1 + math.cos(math.pi * min(step / total, 1.0)))
        return scale

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
