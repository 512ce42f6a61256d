"""What a study has learnt besides its best: the best so far over the study's time (the anytime curve), which
settings mattered (Optuna's PED-ANOVA importances), and which of the best's settings sit at an edge of the
range searched (where a wider range might find more)."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from cifarctl.tune import recheck
from cifarctl.tune.study import TuneSpec, require_optuna, spent_seconds

EDGE = 0.05  # a value within this share of its range's ends (on the range's own scale) is at the edge
MIN_TRIALS = 8  # complete configurations before importances say anything


def anytime(trials: list[Any], spec: TuneSpec) -> list[dict[str, Any]]:
    """The best held-out accuracy of the search after each complete configuration, by the study's time then
    (seconds of its budget spent): what a shorter ``--time-budget`` would have found."""
    optuna = require_optuna()
    done = sorted((t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None
                   and not recheck.is_recheck(t) and t.datetime_complete is not None),
                  key=lambda t: t.datetime_complete)
    points, best = [], -math.inf
    for trial in done:
        best = max(best, float(trial.value))
        points.append({"seconds": round(spent_seconds_at(trials, spec, trial.datetime_complete), 1),
                       "trial": trial.number, "value": trial.value, "best": best})
    return points


def spent_seconds_at(trials: list[Any], spec: TuneSpec, moment: datetime) -> float:
    """The study's time spent up to ``moment``."""
    return spent_seconds(_Trials(trials), spec, now=moment)


class _Trials:
    """A list of trials where ``spent_seconds`` wants a study."""

    def __init__(self, trials: list[Any]) -> None:
        self.trials = trials

    def get_trials(self, deepcopy: bool = False) -> list[Any]:
        return self.trials


def importances(study: Any) -> dict[str, float]:
    """Each searched setting's share of the held-out accuracy's variation among the better configurations
    (PED-ANOVA, which needs no model fitted, over the settings every complete trial has); empty below
    ``MIN_TRIALS`` complete trials or where Optuna cannot tell."""
    optuna = require_optuna()
    complete = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if not recheck.is_recheck(t)]
    if len(complete) < MIN_TRIALS:
        return {}
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            evaluator = optuna.importance.PedAnovaImportanceEvaluator()
            return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
    except (RuntimeError, ValueError, ZeroDivisionError):  # a space too small or too uniform to say
        return {}


def edges(trial: Any) -> list[dict[str, Any]]:
    """The settings of ``trial`` (numbers searched in a range) whose value is within ``EDGE`` of an end."""
    optuna = require_optuna()
    found = []
    for name, value in trial.params.items():
        distribution = trial.distributions.get(name)
        if not isinstance(distribution, (optuna.distributions.FloatDistribution,
                                         optuna.distributions.IntDistribution)):
            continue
        low, high = distribution.low, distribution.high
        if high <= low:
            continue
        scale = math.log if distribution.log and low > 0 else (lambda x: x)
        where = (scale(value) - scale(low)) / (scale(high) - scale(low))
        if where <= EDGE or where >= 1 - EDGE:
            found.append({"setting": name, "value": value, "low": low, "high": high,
                          "end": "low" if where <= EDGE else "high"})
    return found
