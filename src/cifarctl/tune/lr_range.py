"""The lr range test that bounds ``tune``'s lr search: a short run whose lr grows step by step, read off its
smoothed loss (Smith's test, as fastai's ``lr_find`` runs it).

Its suggestion alone is known to mislead (an early spike, a flat curve, a minimum that is only where a
short test had trained longest), so ``tune`` does not train with it: it only bounds the search, whose
trials train and are judged on held-out images. The bound is the largest lr before the loss diverged
(its smoothed value rose to 4x its lowest, gave back half of what it had gained, or stopped being finite:
a network whose units died at a large lr returns to the loss of guessing, which is no rise of 4x): no
peak lr above it can train. The
search runs from a thousandth of it up to it; the lr of the lowest loss is kept for the record. A test whose
loss never fell a tenth cannot tell divergence from a network that stopped learning: its bound is then ten
times the lr of its lowest loss.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from cifarctl.data import CIFAR10
from cifarctl.run.config import TrainConfig

START_LR = {"sgd": 1e-4, "adam": 1e-6}
END_LR = {"sgd": 30.0, "adam": 1.0}
STEPS = 80
SMOOTHING = 0.9       # the loss's exponential average (bias-corrected)
DIVERGED = 4.0        # the smoothed loss at this multiple of its lowest: the test stops
INFORMATIVE = 0.9     # a test whose loss fell below this share of where it started has seen the lr train


def diverged(value: float, lowest: float, first: float, step: int) -> bool:
    """Whether the smoothed loss ``value`` says the lr is past what trains: not finite; after the first steps,
    4x its lowest; or, once it had fallen a tenth below where it started, back above the middle of the two."""
    if not math.isfinite(value):
        return True
    if step <= 5:
        return False
    return value > DIVERGED * lowest or (lowest < INFORMATIVE * first and value > (lowest + first) / 2)


@dataclass
class RangeTest:
    """One optimizer's test: the lrs tried, the smoothed loss at each, and the bound it gives."""

    optimizer: str
    lrs: list[float]
    losses: list[float]
    bound: float            # the largest lr before the loss diverged
    lowest: float           # the lr at the lowest smoothed loss
    filters: bool = False   # whether the model has conv filters (4-d weights, Muon's)
    norm_free: bool = False  # whether it has no normalisation layer (its recipe's lr_without_norm applies)

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def lr_range_test(cfg: TrainConfig, data: CIFAR10, device: torch.device, steps: int = STEPS) -> RangeTest:
    """Train ``cfg`` (its optimizer, batch, augmentation, precision) from a fresh model for at most ``steps``
    steps, the lr growing geometrically from ``START_LR`` to ``END_LR``, every parameter group at that lr times
    its recipe's multiple of it (``norm_bias_lr_scale``: airbench's norm biases at 64x), as a trial gives them:
    the bound is on the lr that each group of a trial may get.
    Usage: ``lr_range_test(TrainConfig.for_model("net.py:Net", optimizer="adam"), data, torch.device("cpu"))``"""
    from cifarctl.distributed import DistInfo
    from cifarctl.training.build import build_run
    from cifarctl.training.metrics import RunningMetrics
    from cifarctl.training.schedule import has_norm_layers

    name = cfg.optimizer
    cfg = dataclasses.replace(cfg, lr_schedule="none", head_lr=None, lr_without_norm=None, bias_lr=None, ema=False,
                              time_budget=None, max_steps=None, schedule_steps=steps, eval=False)
    start, end = START_LR[name], END_LR[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        parts = build_run(cfg, data, device, DistInfo(), fresh=True)
        filters = any(p.ndim == 4 and p.requires_grad for p in parts.built.model.parameters())
        norm_free = not has_norm_layers(parts.built.model)
        multiples = [group["lr"] / cfg.lr for group in parts.optimizer.param_groups]  # cfg.lr: 1 in torch's units
        lrs, losses, smoothed, lowest = [], [], 0.0, math.inf
        batches = (batch for epoch in range(10**6) for batch in parts.loaders.train.epoch(epoch))
        for step in range(steps):
            lr = start * (end / start) ** (step / max(steps - 1, 1))
            for group, multiple in zip(parts.optimizer.param_groups, multiples):
                group["lr"] = lr * multiple
            x, y = next(batches)
            running = RunningMetrics(device)
            parts.step(x, y, running)
            loss = running.read()[0]
            smoothed = SMOOTHING * smoothed + (1 - SMOOTHING) * loss
            value = smoothed / (1 - SMOOTHING ** (step + 1))
            if diverged(value, lowest, losses[0] if losses else value, step):
                break
            lrs.append(lr)
            losses.append(value)
            lowest = min(lowest, value)
    if not losses:
        return RangeTest(name, [], [], start, start, filters, norm_free)
    lowest = lrs[losses.index(min(losses))]
    # A loss that never fell a tenth (a slow learner such as LeNet in 80 steps) tells no divergence from a
    # network that stopped learning: the bound is then ten times the lr of its lowest point.
    bound = lrs[-1] if min(losses) < INFORMATIVE * losses[0] else min(lrs[-1], 10 * lowest)
    return RangeTest(name, lrs, losses, bound, lowest, filters, norm_free)
