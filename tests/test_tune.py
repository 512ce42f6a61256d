"""`cifarctl tune`: a study on tiny synthetic data, judged on held-out training images, never the test set."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

optuna = pytest.importorskip("optuna")

from cifarctl.cli import app  # noqa: E402
from cifarctl.data.cifar10 import write_cache  # noqa: E402
from cifarctl.run.config_file import recipe_settings  # noqa: E402
from cifarctl.tune import session as sessions  # noqa: E402
from cifarctl.tune.search import run_search, validation_view  # noqa: E402
from cifarctl.tune.study import TuneSpec, spent_seconds  # noqa: E402

from conftest import tiny_dataset  # noqa: E402

NET = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.head(torch.relu(self.norm(self.conv(x))).mean((2, 3)))
'''
FAST = ["--device", "cpu", "--offline", "--val-split", "50"]


@pytest.fixture()
def net(tmp_path: Path) -> str:
    (tmp_path / "net.py").write_text(NET)
    return f"{tmp_path / 'net.py'}:Net"


@pytest.fixture()
def train_only(home: Path) -> Path:
    """A cache whose test files are gone: anything that opens them fails."""
    write_cache(tiny_dataset(train=300, test=50))
    gone = [*home.rglob("test_images.npy"), *home.rglob("test_labels.npy")]
    assert len(gone) == 2
    for path in gone:
        path.unlink()
    return home


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "CIFARCTL_HOME": str(home), "PYTHONPATH": os.pathsep.join(sys.path)}


def _trials(folder: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((folder / "trials.csv").open()))


def test_tune_never_opens_the_test_images_and_writes_its_folder(train_only: Path, net: str, tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["train", net, "--max-steps", "1", "--device", "cpu", "--offline"]).exit_code != 0
    study = tmp_path / "study"
    result = runner.invoke(app, ["tune", net, "--time-budget", "24s", "--trial-budget", "4s", "--out", str(study),
                                 *FAST])
    assert result.exit_code == 0, result.output
    rows = _trials(study)
    assert len(rows) >= 2 and any(r["state"] == "COMPLETE" for r in rows)
    for name in ("study.json", "journal.log", "best.toml", "trials.png"):
        assert (study / name).is_file(), name
    best = max((r for r in rows if r["state"] == "COMPLETE"), key=lambda r: float(r["val_accuracy"]))
    assert f"{float(best['val_accuracy']):.2f}%" in result.output
    for row in rows:  # every trial that trained an ordinary run, judged on the 50 held-out images
        if not row["run_dir"]:  # a start still queued when the search ended
            assert row["state"] == "PRUNED" and row["note"] == "the search had ended", row
            continue
        config = json.loads((Path(row["run_dir"]) / "config.json").read_text())
        assert config["time_budget"] == 4.0 and config["val_split"] == 0
    record = json.loads((study / "study.json").read_text())
    assert record["spec"]["val_split"] == 50 and set(record["spec"]["bounds"]) == {"sgd", "adam"}
    assert "test accuracy" not in result.output and "test set" not in result.output


def test_best_toml_trains_the_best_trials_recipe(cached, net: str, tmp_path: Path) -> None:
    data = validation_view(cached, 50, 0)
    spec = TuneSpec(net, None, trial_budget=3.0, time_budget=1e6, val_split=50, base={"device": "cpu", "amp": False})
    session = sessions.start(tmp_path / "study", spec, data, __import__("torch").device("cpu"))
    run_search(session.study, session.spec, session.folder, data, threading.Event(), trials=3)
    files = sessions.write_files(session)
    best = session.best_trial()
    out = tmp_path / "again"
    result = CliRunner().invoke(app, ["train", "--config", str(files["best"]), "--max-steps", "2", "--out", str(out),
                                      "--offline"])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    trial = json.loads((Path(best.user_attrs["run_dir"]) / "config.json").read_text())
    recipe = {k: v for k, v in recipe_settings(trial).items() if k != "tta"}  # (a budget may lower the TTA it ran)
    assert recipe and {k: config[k] for k in recipe} == recipe  # every setting of the trial's recipe, as it trained
    settings = best.user_attrs["settings"]
    assert config["lr"] == pytest.approx(settings["lr"]) and config["batch_size"] == settings["batch_size"]
    assert config["optimizer"] == settings["optimizer"] and config["tta"] == settings["tta"]
    assert config["eval_every"] == 1 and "eval_every" in files["best"].read_text()  # the default recipe's own
    assert "time_budget" not in files["best"].read_text() and "seed =" not in files["best"].read_text()
    trial_file = sessions.write_trial_recipe(session, 0, tmp_path / "t0.toml")
    assert "trial 0" in trial_file.read_text()
    first = session.study.get_trials()[0]  # the model's own recipe, the one to beat
    assert first.user_attrs["default"] is True
    default = first.user_attrs["settings"]
    assert (default["optimizer"], default["batch_size"], default["label_smoothing"], default["tta"], default["ema"]) \
        == ("sgd", 512, 0.1, 1, False)
    assert default["lr"] == pytest.approx(min(0.2, session.spec.bounds["sgd"]))


FLAKY = NET.replace("    def forward(self, x):\n", """    def forward(self, x):
        from pathlib import Path

        if self.training and Path(__file__).with_name("fail").exists():  # made once the study has started
            raise RuntimeError(f"out of memory at batch {x.shape[0]}")
""")


def _config(run_dir: Path) -> dict:
    return json.loads((run_dir / "config.json").read_text())


def test_rungs_compare_like_with_like_and_promoted_configurations_retrain_whole(cached, net: str,
                                                                                tmp_path: Path) -> None:
    data = validation_view(cached, 50, 0)
    spec = TuneSpec(net, None, trial_budget=7.5, time_budget=1e6, val_split=50, min_rung=2.5,
                    base={"device": "cpu", "amp": False})
    session = sessions.start(tmp_path / "study", spec, data, __import__("torch").device("cpu"))
    run_search(session.study, session.spec, session.folder, data, threading.Event(), trials=6)
    trials = session.study.get_trials()
    # The first trials: the default, then the built-in nets' recipes carried over (SGD as the paper's, Muon twice).
    assert trials[0].user_attrs.get("default") and all(t.user_attrs.get("start") for t in trials[1:4])
    assert [t.params["optimizer"] for t in trials[1:4]] == ["sgd", "muon", "muon"]
    assert trials[1].params["batch_size"] == 1024 and trials[1].params["translate"] == 2
    rung0 = []
    for trial in trials[:6]:
        rungs = trial.user_attrs["rungs"]
        assert rungs[0]["budget"] == pytest.approx(2.5)
        assert trial.system_attrs["completed_rung_0"] == rungs[0]["value"] if len(rungs) > 1 or \
            trial.state == optuna.trial.TrialState.PRUNED else True
        first = _config(session.folder / "trials" / f"{trial.number:04d}" / "rung-0")
        assert first["time_budget"] == pytest.approx(2.5) and first["schedule_steps"]  # fitted to its rung
        rung0.append(rungs[0]["value"])
        # Compared with every configuration that ran its first rung before it (whatever became of them since).
        bar = sorted(rung0)[-max(len(rung0) // 3, 1)]
        if trial.state == optuna.trial.TrialState.PRUNED:
            assert not trial.user_attrs.get("default") and len(rungs) == 1 and rungs[0]["value"] < bar
        else:
            assert trial.state == optuna.trial.TrialState.COMPLETE and len(rungs) == 2
            assert trial.user_attrs.get("default") or rungs[0]["value"] >= bar
            second = _config(session.folder / "trials" / f"{trial.number:04d}" / "rung-1")
            assert second["time_budget"] == pytest.approx(7.5)  # a new run, its schedule fitted to the longer budget
            assert second["schedule_steps"] > first["schedule_steps"]
            assert trial.value == rungs[1]["value"]
    assert trials[0].state == optuna.trial.TrialState.COMPLETE  # the default always runs whole
    sessions.write_files(session)
    rows = _trials(session.folder)
    assert all(r["rungs"].startswith("2s ") for r in rows[:6])  # 2.5 s shown as 2s, then > 8s for the promoted
    assert all(" > 8s " in r["rungs"] for r in rows if r["state"] == "COMPLETE")


def test_a_failing_trial_is_recorded_with_its_cause_and_the_search_goes_on(cached, tmp_path: Path) -> None:
    from cifarctl.errors import CifarctlError
    from cifarctl.tune.search import MAX_FAILURES

    (tmp_path / "flaky.py").write_text(FLAKY)
    data = validation_view(cached, 50, 0)
    spec = TuneSpec(f"{tmp_path / 'flaky.py'}:Net", None, trial_budget=3.0, time_budget=1e6, val_split=50,
                    base={"device": "cpu", "amp": False})
    session = sessions.start(tmp_path / "study", spec, data, __import__("torch").device("cpu"))
    (tmp_path / "fail").touch()  # from here on every trial's model raises
    with pytest.raises(CifarctlError, match=f"the last {MAX_FAILURES} trials failed"):
        run_search(session.study, session.spec, session.folder, data, threading.Event(), trials=MAX_FAILURES + 3)
    trials = session.study.get_trials()
    assert len(trials) >= MAX_FAILURES  # each failure was told, and the next trial ran, until the run of them
    for trial in trials[:MAX_FAILURES]:
        assert trial.state == optuna.trial.TrialState.FAIL
        assert trial.user_attrs["error"].startswith("RuntimeError: out of memory at batch ")
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    sessions.write_files(session)
    assert _trials(session.folder)[1]["error"].startswith("RuntimeError: out of memory")


def test_the_default_stopped_is_trained_again_when_the_study_goes_on(cached, net: str, tmp_path: Path) -> None:
    data = validation_view(cached, 50, 0)
    spec = TuneSpec(net, None, trial_budget=3.0, time_budget=1e6, val_split=50, base={"device": "cpu", "amp": False})
    session = sessions.start(tmp_path / "study", spec, data, __import__("torch").device("cpu"))
    stopped = session.study.ask()  # trial 0, the default, stopped (Ctrl-C marks it failed)
    assert stopped.user_attrs.get("default")
    session.study.tell(stopped, state=optuna.trial.TrialState.FAIL)
    resumed = sessions.join(session.folder)
    run_search(resumed.study, resumed.spec, resumed.folder, data, threading.Event(), trials=4)
    defaults = [t for t in resumed.study.get_trials() if t.user_attrs.get("default")]
    assert [t.state for t in defaults] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    assert defaults[1].params == defaults[0].system_attrs["fixed_params"]  # the same recipe, trained whole


def test_resume_after_sigkill_goes_on(cached, home: Path, net: str, tmp_path: Path) -> None:
    study = tmp_path / "study"
    command = [sys.executable, "-m", "cifarctl", "tune", net, "--time-budget", "32s", "--trial-budget", "4s", "--out",
               str(study), *FAST]
    process = subprocess.Popen(command, env=_env(home), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list((study / "trials").glob("*/metrics.jsonl")) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = sessions.join(study)
    assert any(t.state == optuna.trial.TrialState.RUNNING for t in before.study.get_trials())
    done = subprocess.run([sys.executable, "-m", "cifarctl", "tune", "--resume", str(study), "--offline"],
                          env=_env(home), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    after = sessions.join(study).study.get_trials()
    assert after[0].state == optuna.trial.TrialState.FAIL  # the killed one
    assert any(t.state == optuna.trial.TrialState.COMPLETE for t in after[1:])
    assert not any(t.state == optuna.trial.TrialState.RUNNING for t in after)
    assert spent_seconds(sessions.join(study).study, sessions.join(study).spec) <= 32 + 4.4


def test_two_processes_share_one_journal(cached, home: Path, net: str, tmp_path: Path) -> None:
    study = tmp_path / "study"
    result = subprocess.run([sys.executable, "-m", "cifarctl", "tune", net, "--time-budget", "20s", "--trial-budget",
                             "4s", "--jobs", "2", "--out", str(study), *FAST], env=_env(home), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    trials = sessions.join(study).study.get_trials()
    assert len({t.user_attrs["pid"] for t in trials}) == 2  # both processes ran trials of the one study
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    assert len(_trials(study)) == len(trials)


@pytest.mark.parametrize("args, words", [
    (["--time-budget", "1m", "--trial-budget", "2m"], "longer than --time-budget"),
    (["--time-budget", "5m", "--storage", "postgresql://me:secret@127.0.0.1:1/none"], "cannot open it"),
])
def test_bad_inputs_are_one_line_and_leave_nothing(cached, net: str, tmp_path: Path, args, words) -> None:
    study = tmp_path / "study"
    result = CliRunner().invoke(app, ["tune", net, "--out", str(study), *FAST, *args])
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code != 0 and len(lines) == 1 and words in lines[0], result.output
    assert "secret" not in result.output
    assert not study.exists()


def test_an_unknown_model_is_one_line(cached, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["tune", "resnet5O", "--time-budget", "5m", "--out", str(tmp_path / "s"), *FAST])
    assert result.exit_code != 0 and "resnet50" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()


def test_without_optuna_tune_says_how_to_get_it(cached, net: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)
    result = CliRunner().invoke(app, ["tune", net, "--time-budget", "1m", *FAST])
    assert result.exit_code != 0 and "pip install 'cifarctl[tune]'" in result.output


def test_confirm_alone_reads_the_test_set_and_runs_lists_the_study(cached, net: str, tmp_path: Path) -> None:
    study = tmp_path / "study"
    runner = CliRunner()
    result = runner.invoke(app, ["tune", net, "--time-budget", "14s", "--trial-budget", "3s", "--confirm", "2",
                                 "--out", str(study), *FAST])
    assert result.exit_code == 0, result.output
    assert "test set: default" in result.output and "best - default" in result.output
    best = sessions.join(study).best_trial().number
    for label in ("default-2-seeds", f"best-trial-{best}-2-seeds"):  # on seeds that no trial trained with
        summary = json.loads((study / "confirm" / label / "summary.json").read_text())
        assert len(summary["runs"]) == 2 and all(r["test_accuracy"] is not None for r in summary["runs"])
        assert json.loads((study / "confirm" / label / "seed-1000" / "config.json").read_text())["val_split"] == 0
    listed = runner.invoke(app, ["runs", "--json"])
    studies = [r for r in json.loads(listed.stdout) if r.get("kind") == "study"]
    assert [Path(s["path"]) for s in studies] == [study] and studies[0]["trials"]
    written = runner.invoke(app, ["tune", "--resume", str(study), "--trial", "0", "--out", str(tmp_path / "t0.toml"),
                                  "--offline"])
    assert written.exit_code == 0, written.output
    again = runner.invoke(app, ["train", "--config", str(tmp_path / "t0.toml"), "--max-steps", "1", "--offline",
                                "--out", str(tmp_path / "t0")])
    assert again.exit_code == 0, again.output


def test_the_range_test_tells_a_dead_network_from_noise() -> None:
    from cifarctl.tune.lr_range import diverged

    assert diverged(float("nan"), 2.0, 2.3, 1) and diverged(float("inf"), 2.0, 2.3, 30)
    assert diverged(8.5, 2.0, 2.3, 30)                    # 4x its lowest
    assert diverged(2.30, 1.6, 2.3, 30)                   # back to guessing after it had learned
    assert not diverged(2.30, 2.25, 2.3, 30)              # it never learned: no sign either way
    assert not diverged(1.75, 1.6, 2.3, 30)               # a wobble near its lowest
    assert not diverged(9.0, 2.0, 2.3, 3)                 # the first steps are not judged
