"""The final evaluation's test-time augmentation under a time budget: what each level costs here, and which
one a budget buys (by the frontier's prediction, or by a share of the budget where a model has none)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from cifarctl.device import Stopwatch, autocast_dtype
from cifarctl.evaluation import levels_upto, selective_cost, tta_logits, tta_views
from cifarctl.run.config import DEFAULT_TTA_FRACTION, SELECTIVE
from cifarctl.training.plan import BudgetPlan

# Under a time budget the recipe's test-time augmentation stays unless its final evaluation would take
# more than this share of the budget (on a 2-core AVX2 CPU, airbench94's level 2 takes 150 s).
TTA_BUDGET_SHARE = 0.25


def tta_preference(accuracy: float, tta: int | str, fraction: float) -> tuple[float, float]:
    """How plans at several TTA levels rank: the highest predicted accuracy, and at equal predictions (to
    1e-6 of a point) the level of fewer views (selective's at the run's ``fraction``), which costs less. Usage: ``max(options, key=lambda p: tta_preference(...))``"""
    return round(accuracy, 6), -tta_views(tta, fraction)


def choose_tta(level: int | str, batch_s: dict[int | str, float], batches: int,
               budget_s: float) -> tuple[int | str, str]:
    """The test-time augmentation a time budget can afford: the recipe's ``level``, unless its final evaluation
    would take more than ``TTA_BUDGET_SHARE`` of the budget; then the dearest level that fits (at least 0).

    Returns the level and a note for the user ("" when the recipe's level stays).
    """
    affordable = [lv for lv in reversed(levels_upto(level)) if batch_s[lv] * batches <= TTA_BUDGET_SHARE * budget_s]
    chosen = affordable[0] if affordable else 0
    if chosen == level:
        return level, ""
    return chosen, (f"test-time augmentation {level} would take {batch_s[level] * batches:.0f} s of the budget; "
                    f"the final evaluation uses level {chosen} ({batch_s[chosen] * batches:.0f} s) and training the rest")


def choose_tta_by_frontier(plan_at: Callable[[int | str], BudgetPlan], level: int | str,
                           accuracy: Callable[[float, int | str], float],
                           fraction: float = DEFAULT_TTA_FRACTION) -> BudgetPlan:
    """The plan, among the TTA levels up to ``level`` (``levels_upto``: selective among them where the recipe
    asks for 2), whose predicted accuracy is highest: a level's evaluation costs the steps its time would
    have trained, and the frontier says what those steps were worth.

    ``plan_at(tta)`` plans the run with that final level (a level that leaves no time to train is
    skipped); ``accuracy(epochs, tta)`` is the frontier's prediction. At equal predictions, the cheaper level
    (``tta_preference``, selective's cost at the run's ``fraction``).
    """
    from cifarctl.errors import UsageError

    options: list[tuple[float, BudgetPlan]] = []
    failure: UsageError | None = None
    for tta in levels_upto(level):
        try:
            plan = plan_at(tta)
        except UsageError as exc:
            failure = failure or exc
            continue
        options.append((accuracy(plan.epochs, tta), plan))
    if not options:
        assert failure is not None
        raise failure
    best_acc, best = max(options, key=lambda o: tta_preference(o[0], o[1].tta, fraction))
    if best.tta != level:
        at_level = next(((acc, plan) for acc, plan in options if plan.tta == level), None)
        than = (f", against {at_level[0]:.1f}% with TTA {level} ({at_level[1].epochs:.2f} epochs)"
                if at_level else f" (TTA {level} leaves no time to train)")
        best.note = (f"the final evaluation uses TTA {best.tta}: with the {best.epochs:.2f} epochs it leaves, "
                     f"the frontier predicts {best_acc:.1f}%{than}")
    return best


def time_eval_levels(model: nn.Module, batch: torch.Tensor, tta: int | str, amp: bool,
                     fraction: float = DEFAULT_TTA_FRACTION) -> dict[int | str, float]:
    """Seconds per evaluation batch (``batch``, one of the test loader's) at each test-time augmentation level.

    Level 0 is timed on a whole batch, after a first pass that builds the kernels for its shape
    (a 100-image sample underestimated a 500-image batch by 1.3x on a CPU). The dearest level the run
    may use costs more than its views (its flips and shifts: level 2 is 6.9x level 0 on a CPU, not 6x),
    so its ratio to level 0 is timed on 100 images; a level between is scaled by its views, and the
    selective level is level 0 plus level 2's other views for its ``fraction`` of the images.
    """
    device = batch.device
    cast = autocast_dtype(device, amp)
    measured = 2 if tta == SELECTIVE else tta

    def timed(images: torch.Tensor, level: int) -> float:
        watch = Stopwatch(device)
        tta_logits(model, images, level)
        return watch.seconds()

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), torch.autocast(device.type, dtype=cast or torch.float32,
                                                    enabled=cast is not None):
            # The larger of two timings each: one pass is noisy, and running over the budget is worse
            # than a step less (one pass under-estimated a 10,000-image TTA 2 evaluation by a third).
            tta_logits(model, batch, 0)
            level0 = max(timed(batch, 0), timed(batch, 0))
            ratio = 1.0
            if measured:
                sample = batch[:100]
                tta_logits(model, sample, 0)
                ratio = max(timed(sample, measured) / max(timed(sample, 0), 1e-9) for _ in range(2))
    finally:
        model.train(was_training)
    per_view = level0 * ratio / tta_views(measured)
    levels: dict[int | str, float] = {level: level0 if level == 0 else level0 * ratio if level == measured
                                      else per_view * tta_views(level) for level in (0, 1, 2)}
    levels[SELECTIVE] = selective_cost(level0, levels[2], fraction)
    return levels
