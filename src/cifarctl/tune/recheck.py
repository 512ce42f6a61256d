"""The re-check: the search's best few configurations trained again, with new seeds, before one is crowned.

A study's best single value is the largest of many noisy draws, so it is biased upwards (the winner's curse:
on a 2-minute budget one configuration's held-out accuracy moves by a point or more from seed to seed). When
the search's time is up (``reserve_seconds`` before the end, or on the first Ctrl-C with what is left), the
``top`` configurations by single value are enqueued again, ``seeds`` times each at the whole trial budget with
seeds the search never used; the winner is the best *mean of the re-check runs* (the selected run itself is
left out of that mean, being the one picked for its luck), and the study reports how far its single value
shrank. A re-check run is an ordinary trial of the study (``recheck_of``: the configuration's trial number),
so it is in trials.csv, counts in the study's time, survives a kill, and is shared by ``--jobs`` workers.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from cifarctl.tune.study import TuneSpec, require_optuna

SHARE = 0.2   # of the study's time budget kept for the re-check, where a study is long enough for it
MAX_TOP = 3
MIN_TRIALS = 6  # trial budgets a study's time must hold for a re-check: a shorter one needs all of it to search


@dataclass(frozen=True)
class Recheck:
    """How a study re-checks its best: ``top`` configurations, ``seeds`` new runs each."""

    top: int
    seeds: int

    @property
    def runs(self) -> int:
        return self.top * self.seeds


def plan(spec: TuneSpec) -> Recheck:
    """The study's re-check: ``spec.recheck`` configurations (``None``: as many as a fifth of the time budget
    holds, 1 to 3), ``spec.recheck_seeds`` runs each; none where the study is shorter than ``MIN_TRIALS``
    trials."""
    if spec.recheck == 0 or spec.recheck_seeds == 0 or spec.time_budget < MIN_TRIALS * spec.trial_budget:
        return Recheck(0, 0)
    if spec.recheck is not None:
        return Recheck(spec.recheck, spec.recheck_seeds)
    fits = math.floor(SHARE * spec.time_budget / (spec.recheck_seeds * spec.trial_budget))
    return Recheck(max(1, min(MAX_TOP, fits)), spec.recheck_seeds)


def reserve_seconds(spec: TuneSpec) -> float:
    """The time the search leaves at its end for the re-check (a tenth over, as a trial may run over)."""
    return plan(spec).runs * spec.trial_budget * 1.1


def recheck_seed(spec: TuneSpec, index: int) -> int:
    """The ``index``-th re-check run's seed: after every seed the search itself used."""
    return spec.seed + 1 + index


def is_recheck(trial: Any) -> bool:
    return trial.user_attrs.get("recheck_of") is not None


def enqueue(study: Any, spec: TuneSpec, seconds_left: float) -> int:
    """Enqueue the re-check runs of the best configurations that are not enqueued yet, as many whole runs as
    ``seconds_left`` holds (top first); how many were enqueued."""
    trials = study.get_trials(deepcopy=False)
    wanted = plan(spec)
    done = {(t.user_attrs["recheck_of"], t.user_attrs.get("seed")) for t in trials if is_recheck(t)}
    fits = int(seconds_left // (spec.trial_budget * 1.05))
    added = 0
    for trial in candidates(trials)[:wanted.top]:
        for index in range(wanted.seeds):
            seed = recheck_seed(spec, index)
            if (trial.number, seed) in done:
                continue
            if added >= fits:
                return added
            study.enqueue_trial(dict(trial.params), user_attrs={"recheck_of": trial.number, "seed": seed})
            added += 1
    return added


def candidates(trials: list[Any]) -> list[Any]:
    """The search's complete configurations (not re-check runs), best single value first."""
    optuna = require_optuna()
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and not is_recheck(t)
            and t.value is not None]
    return sorted(done, key=lambda t: t.value, reverse=True)


@dataclass
class Checked:
    """A configuration and its re-check: its single search value, the re-check runs' values."""

    trial: Any
    values: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    @property
    def shrinkage(self) -> float:
        return self.trial.value - self.mean

    def to_dict(self) -> dict[str, Any]:
        return {"trial": self.trial.number, "single": self.trial.value, "mean": self.mean, "std": self.std,
                "n": len(self.values), "shrinkage": self.shrinkage, "values": self.values}


def checked(trials: list[Any]) -> list[Checked]:
    """Every re-checked configuration with its complete re-check runs, best mean first."""
    optuna = require_optuna()
    by_number = {t.number: t for t in trials}
    values: dict[int, list[float]] = {}
    for trial in trials:
        if is_recheck(trial) and trial.state == optuna.trial.TrialState.COMPLETE and trial.value is not None:
            values.setdefault(int(trial.user_attrs["recheck_of"]), []).append(float(trial.value))
    found = [Checked(by_number[number], runs) for number, runs in values.items() if number in by_number]
    return sorted(found, key=lambda c: c.mean, reverse=True)


def best(trials: list[Any]) -> tuple[Any | None, Checked | None]:
    """The study's best configuration: the best re-checked mean where a re-check has run, else the best single
    value; with its re-check (None where it has none)."""
    found = checked(trials)
    if found:
        return found[0].trial, found[0]
    ranked = candidates(trials)
    return (ranked[0], None) if ranked else (None, None)
