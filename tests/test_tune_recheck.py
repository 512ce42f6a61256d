"""The re-check of a study's best, and what a study reports besides it (anytime curve, importances, edges)."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from cifarctl.tune import analysis, recheck  # noqa: E402
from cifarctl.tune import session as sessions  # noqa: E402
from cifarctl.tune.search import run_search, validation_view  # noqa: E402
from cifarctl.tune.study import TuneSpec  # noqa: E402

from test_tune import NET  # noqa: E402

LR = optuna.distributions.FloatDistribution(1e-3, 1.0, log=True)
START = datetime(2026, 1, 1, 12, 0, 0)


def _trial(value: float, lr: float = 0.1, **attrs) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(params={"lr": lr}, distributions={"lr": LR}, value=value, user_attrs=attrs)


def _study(*trials: optuna.trial.FrozenTrial) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for trial in trials:
        study.add_trial(trial)
    return study


def test_the_recheck_crowns_the_best_mean_not_the_luckiest_single_value() -> None:
    study = _study(_trial(90.0, 0.5), _trial(88.0, 0.05), _trial(70.0, 0.01),
                   _trial(80.0, 0.5, recheck_of=0, seed=1), _trial(81.0, 0.5, recheck_of=0, seed=2),
                   _trial(86.0, 0.05, recheck_of=1, seed=1), _trial(87.0, 0.05, recheck_of=1, seed=2))
    trials = study.get_trials()
    assert recheck.candidates(trials)[0].number == 0  # by single value trial 0 is best...
    best, checked = recheck.best(trials)
    assert best.number == 1 and checked.mean == pytest.approx(86.5)  # ...by its re-check, trial 1
    assert len(checked.values) == 2
    assert checked.shrinkage == pytest.approx(1.5) and checked.std == pytest.approx(0.7071, abs=1e-4)
    lucky = recheck.checked(trials)[1]
    assert lucky.trial.number == 0 and lucky.shrinkage == pytest.approx(9.5)  # the selected run is not in its mean


def test_before_a_recheck_the_best_is_the_best_single_value() -> None:
    best, checked = recheck.best(_study(_trial(70.0), _trial(75.0, 0.2)).get_trials())
    assert best.number == 1 and checked is None


def test_the_recheck_enqueues_the_top_with_new_seeds_as_far_as_time_holds() -> None:
    spec = TuneSpec("net", None, trial_budget=120.0, time_budget=3600.0, seed=4)
    assert recheck.plan(spec) == recheck.Recheck(3, 2) and recheck.reserve_seconds(spec) == pytest.approx(792.0)
    study = _study(_trial(70.0, 0.01), _trial(75.0, 0.2), _trial(72.0, 0.05), _trial(60.0, 0.9))
    assert recheck.enqueue(study, spec, seconds_left=3 * 130.0) == 3  # three whole runs fit
    waiting = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.WAITING]
    assert [(t.user_attrs["recheck_of"], t.user_attrs["seed"]) for t in waiting] == [(1, 5), (1, 6), (2, 5)]
    assert waiting[0].system_attrs["fixed_params"] == {"lr": 0.2}
    assert recheck.enqueue(study, spec, seconds_left=1e6) == 3  # the rest, never one twice
    assert recheck.enqueue(study, spec, seconds_left=1e6) == 0
    assert recheck.plan(TuneSpec("net", None, trial_budget=120.0, time_budget=900.0)).runs == 2
    assert recheck.plan(TuneSpec("net", None, trial_budget=120.0, time_budget=300.0)).runs == 0  # too short
    assert recheck.plan(TuneSpec("net", None, trial_budget=60.0, time_budget=3600.0, recheck=0)).runs == 0


def test_edges_and_the_anytime_curve() -> None:
    spec = TuneSpec("net", None, trial_budget=60.0, time_budget=3600.0)
    trials = []
    for number, (value, lr) in enumerate([(70.0, 0.01), (80.0, 0.99), (75.0, 0.1)]):
        started = START + timedelta(minutes=2 * number)
        trial = _trial(value, lr)
        trial.number, trial.datetime_start, trial.datetime_complete = number, started, started + timedelta(minutes=1)
        trials.append(trial)
    points = analysis.anytime(trials, spec)
    assert [p["best"] for p in points] == [70.0, 80.0, 80.0]
    assert [p["seconds"] for p in points] == [60.0, 120.0, 180.0]  # the study's time, not the clock's
    assert analysis.edges(trials[1]) == [{"setting": "lr", "value": 0.99, "low": 1e-3, "high": 1.0, "end": "high"}]
    assert analysis.edges(trials[2]) == []


def test_a_study_ends_with_its_best_rechecked_and_reported(cached, tmp_path: Path) -> None:
    (tmp_path / "net.py").write_text(NET)
    data = validation_view(cached, 50, 0)
    spec = TuneSpec(f"{tmp_path / 'net.py'}:Net", None, trial_budget=3.0, time_budget=40.0, val_split=50,
                    base={"device": "cpu", "amp": False}, recheck=2, recheck_seeds=1, optimizers=("sgd",))
    session = sessions.start(tmp_path / "study", spec, data, __import__("torch").device("cpu"))
    run_search(session.study, session.spec, session.folder, data, threading.Event())
    trials = session.study.get_trials()
    checks = [t for t in trials if recheck.is_recheck(t)]
    top = recheck.candidates(trials)[:2]
    assert sorted(t.user_attrs["recheck_of"] for t in checks) == sorted(t.number for t in top)
    assert {t.user_attrs["seed"] for t in checks} == {1} and all(t.state.name == "COMPLETE" for t in checks)
    for check in checks:  # trained whole at the trial budget, with its own seed
        config = json.loads((Path(check.user_attrs["run_dir"]) / "config.json").read_text())
        assert config["seed"] == 1 and config["time_budget"] == 3.0
    files = sessions.write_files(session, final=True)
    report = json.loads(files["report"].read_text())
    assert report["recheck"]["n"] == 1 and report["best"]["number"] in {t.number for t in top}
    assert report["best"]["number"] == max(report["rechecked"], key=lambda c: c["mean"])["trial"]
    assert "re-checked" in files["best"].read_text()
    assert len((files["anytime"]).read_text().splitlines()) >= 2
