"""The arithmetic of a time budget's plan: durations, what a plan keeps back, and the most steps that fit.

No clock and no model here: ``TimeBudget`` (``training.budget``) measures, ``training.tta_choice`` prices the
final evaluation, and this module turns their seconds into a length in optimizer steps.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smh])")

# What a plan keeps back (``reserve_for``): process exit, the last checkpoint and metrics writes, and the
# drift of the step time over the run (measured on this CPU: the first steps after warm-up are typical).
RESERVE_S = 1.5
RESERVE_FRACTION = 0.02

def parse_duration(text: str | float | int) -> float:
    """Seconds in ``"90s"``, ``"5m"``, ``"1h"``, ``"1h30m"`` or a plain number of seconds.

    Usage: ``parse_duration("5m") == 300.0``
    """
    from cifarctl.errors import UsageError

    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        spec = text.strip().lower().replace(" ", "")
        try:
            seconds = float(spec)
        except ValueError:
            parts = _DURATION.findall(spec)
            if not parts or "".join(n + u for n, u in parts) != spec:
                raise UsageError(f"--time-budget {text!r} is not a duration: write 90s, 5m, 1h or 1h30m") from None
            seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise UsageError(f"--time-budget {text!r} must be a positive duration (90s, 5m, 1h)")
    return seconds


def format_duration(seconds: float) -> str:
    """``298.4`` -> ``"4m58s"``; ``45`` -> ``"45s"``; ``3600`` -> ``"1h"``."""
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else "", f"{secs}s" if secs else ""]
    return "".join(parts) or "0s"


@dataclass
class BudgetPlan:
    """How a time budget was spent: what was measured and the length chosen."""

    budget_s: float
    spent_s: float               # before training: start-up, data, model, calibration
    step_s: float                # seconds per optimizer step, measured
    eval_s: float                # one evaluation pass (per-epoch, no TTA), estimated
    final_eval_s: float          # the final evaluation (with the recipe's TTA), estimated
    reserve_s: float
    steps: int
    steps_per_epoch: int
    evaluations: int             # per-epoch evaluations before the final one
    tta: int | str = 0           # the test-time augmentation of the final evaluation
    note: str = ""               # what the budget changed besides the length (the TTA level)
    measured_steps: int = 0      # steps taken (at the schedule's first lr) while measuring, part of ``steps``
    eval_every: int = 0          # epochs between the per-epoch evaluations (0: none)
    # Steps up to ``phase_steps`` cost ``step_s``, later ones ``later_step_s`` (None: the same), where a
    # model's declared parameters stop training after its first epochs and the backward pass gets shorter.
    phase_steps: int = 0
    later_step_s: float | None = None

    @property
    def epochs(self) -> float:
        return self.steps / self.steps_per_epoch

    def cost(self, start: int, stop: int) -> float:
        """The planned seconds of steps ``start`` to ``stop`` (step counts), their per-epoch evaluations included."""
        if stop <= start:
            return 0.0
        early = max(min(stop, self.phase_steps) - start, 0)
        later_s = self.step_s if self.later_step_s is None else self.later_step_s
        evals = (evaluations_before_end(stop, self.steps_per_epoch, self.eval_every)
                 - evaluations_before_end(start, self.steps_per_epoch, self.eval_every))
        return early * self.step_s + (stop - start - early) * later_s + evals * self.eval_s

    def evaluates_at(self, step: int) -> bool:
        """Whether the run makes a per-epoch evaluation at ``step`` (an epoch's end that is due one)."""
        return (self.eval_every > 0 and step > 0 and step % self.steps_per_epoch == 0
                and (step // self.steps_per_epoch) % self.eval_every == 0)

    def most_steps(self, start: int, seconds: float, slowdown: float = 1.0) -> int:
        """The largest step count ``n`` whose steps from ``start`` cost at most ``seconds`` at ``slowdown`` times the
        planned pace (``start`` when not one more fits)."""
        fastest = min(self.step_s, self.later_step_s or self.step_s) * slowdown
        low, high = start, start + max(int(seconds // max(fastest, 1e-12)), 0)
        while low < high:  # cost grows with the steps: bisect
            middle = (low + high + 1) // 2
            if self.cost(start, middle) * slowdown <= seconds:
                low = middle
            else:
                high = middle - 1
        return low

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "epochs": round(self.epochs, 4)}

    def describe(self, model: str) -> str:
        """``5m allows 4.2 epochs of airbench94 here (...)``"""
        evals = f", {self.evaluations} evaluations" if self.evaluations else ""
        note = f"; {self.note}" if self.note else ""
        return (f"{format_duration(self.budget_s)} allows {self.epochs:.2f} epochs of {model} here: "
                f"{self.steps:,} steps at {self.step_s:.3g} s each{evals}, {self.final_eval_s:.0f} s for the final "
                f"evaluation (TTA {self.tta}); start-up and {self.measured_steps} measured steps took {self.spent_s:.0f} s{note}")


def reserve_for(budget_s: float) -> float:
    """The seconds of ``budget_s`` a plan keeps back, the chooser's and the run's alike."""
    return RESERVE_S + RESERVE_FRACTION * budget_s


def evaluations_before_end(steps: int, steps_per_epoch: int, eval_every: int) -> int:
    """Per-epoch evaluations a run of ``steps`` makes before its final one (at epoch ends that are not the last)."""
    if eval_every <= 0 or steps <= steps_per_epoch:
        return 0
    full_epochs_before_end = (steps - 1) // steps_per_epoch
    return full_epochs_before_end // eval_every


def plan_steps(budget_s: float, spent_s: float, step_s: float, steps_per_epoch: int, eval_s: float = 0.0,
               final_eval_s: float = 0.0, eval_every: int = 0, reserve_s: float | None = None,
               done_steps: int = 0, phases: tuple[int, float] | None = None) -> BudgetPlan:
    """The run's length in optimizer steps: the ``done_steps`` already taken (in ``spent_s``) and the most
    steps whose training and evaluations fit in what is left of ``budget_s``. ``phases``: ``(steps, ratio)``,
    steps after the first ``steps`` cost ``ratio`` times ``step_s``.

    Usage: ``plan_steps(300, spent_s=6, step_s=1.2, steps_per_epoch=49, final_eval_s=30).steps``
    """
    from cifarctl.errors import UsageError

    if step_s <= 0 or steps_per_epoch < 1:
        raise ValueError("plan_steps needs a positive step time and steps per epoch")
    reserve = reserve_for(budget_s) if reserve_s is None else reserve_s
    available = budget_s - spent_s - reserve - final_eval_s
    phase_steps, ratio = phases or (0, 1.0)
    plan = BudgetPlan(budget_s, spent_s, step_s, eval_s, final_eval_s, reserve, done_steps, steps_per_epoch, 0,
                      measured_steps=done_steps, eval_every=eval_every, phase_steps=phase_steps,
                      later_step_s=step_s * ratio if phases else None)
    if available < 0:
        raise UsageError(f"a time budget of {format_duration(budget_s)} is too short here: start-up and the first "
                         f"{done_steps} steps took {spent_s:.0f} s and the final evaluation takes about {final_eval_s:.0f} s; "
                         "give at least "
                         f"{format_duration(math.ceil((spent_s + reserve + final_eval_s + 10 * step_s) * 1.2))}")
    plan.steps = plan.most_steps(done_steps, available)
    if plan.steps < 1:
        need = spent_s + reserve + final_eval_s + step_s
        raise UsageError(f"a time budget of {format_duration(budget_s)} leaves no time to train here: start-up "
                         f"took {spent_s:.0f} s, a step takes {step_s:.2g} s and the final evaluation about "
                         f"{final_eval_s:.0f} s; give at least {format_duration(math.ceil(need * 1.5))}")
    plan.evaluations = evaluations_before_end(plan.steps, steps_per_epoch, eval_every)
    return plan
