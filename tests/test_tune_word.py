"""What `cifarctl tune` promises about the settings it is given and the files it writes: a config file's keys
reach every trial and the range tests, best.toml re-makes its trial, no secret on disk, a seed re-runs the
search, a failing trial never ends it (with --jobs too), and --confirm follows the best."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

optuna = pytest.importorskip("optuna")

from cifarctl.cli import app  # noqa: E402
from cifarctl.data.cifar10 import write_cache  # noqa: E402
from cifarctl.run.config_file import RUN_KEYS  # noqa: E402
from cifarctl.tune import session as sessions  # noqa: E402
from cifarctl.tune import study as studies  # noqa: E402
from cifarctl.tune.files import read_study_file, write_study_file  # noqa: E402
from cifarctl.tune.search import run_search, validation_view  # noqa: E402
from cifarctl.tune.space import suggest  # noqa: E402
from cifarctl.tune.study import TuneSpec  # noqa: E402

from conftest import tiny_dataset  # noqa: E402
from test_tune import FAST, NET, _env, _trials  # noqa: E402

# What differs between two runs of one recipe by design: the length a time budget chose on the machine, the
# search's own evaluation every epoch on the held-out images (val_split 0 there: they are its test split).
ONE_RUN = {*RUN_KEYS, "budget_plan", "eval_every"}


def test_a_config_files_keys_reach_every_trial_and_the_range_tests(cached, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from cifarctl.tune import search

    (tmp_path / "net.py").write_text(NET)
    (tmp_path / "fixed.toml").write_text('micro_batch = 32\nseed = 3\nval_split = 40\ndevice = "cpu"\n'
                                         'label_smoothing = 0.05\n')
    tested = []
    real = search.lr_range_test
    monkeypatch.setattr(search, "lr_range_test", lambda cfg, *a, **k: tested.append(cfg) or real(cfg, *a, **k))
    study = tmp_path / "study"
    result = CliRunner().invoke(app, ["tune", f"{tmp_path / 'net.py'}:Net", "--config", str(tmp_path / "fixed.toml"),
                                      "--time-budget", "20s", "--trial-budget", "3s", "--out", str(study),
                                      "--offline"])
    assert result.exit_code == 0, result.output
    spec = read_study_file(study)["spec"]
    assert spec["val_split"] == 40 and spec["seed"] == 3  # the file's, not the command line's defaults
    assert tested and all(c.micro_batch == 32 and c.device == "cpu" and c.seed == 3 for c in tested)
    ran = [r for r in _trials(study) if r["run_dir"]]
    assert ran
    for row in ran:
        config = json.loads((Path(row["run_dir"]) / "config.json").read_text())
        assert config["micro_batch"] == 32 and config["device"] == "cpu" and config["label_smoothing"] == 0.05
        assert config["seed"] == (3 if not row["recheck_of"] else int(row["seed"]))


def test_best_toml_remakes_an_sgd_trial_on_a_muon_recipe_key_for_key(cached, tmp_path: Path) -> None:
    data = validation_view(cached, 50, 0)
    spec = TuneSpec("airbench94_quarter", "muon", trial_budget=8.0, time_budget=1e6, val_split=50,
                    base={"device": "cpu", "amp": False}, bounds={"sgd": 1.0, "adam": 0.01})
    study = studies.create_study(optuna.storages.InMemoryStorage(), "s", spec)
    study.enqueue_trial({"optimizer": "sgd", "batch_size": 128, "lr_factor": 0.1, "weight_decay": 5e-4,
                         "label_smoothing": 0.2, "ema": False, "flip": "alternate", "translate": 2,
                         "pad_mode": "reflect", "head_share": 0.1, "momentum": 0.9, "warmup_fraction": 0.2,
                         "tta": "0"})
    session = sessions.Session(tmp_path / "study", study, spec, "s", None)
    session.folder.mkdir()
    run_search(study, spec, session.folder, data, threading.Event(), trials=1)
    trial = session.best_trial()
    assert trial is not None and trial.user_attrs["settings"]["optimizer"] == "sgd"
    ran = json.loads((Path(trial.user_attrs["run_dir"]) / "config.json").read_text())
    assert ran["bias_lr"] is None and ran["micro_batch"] is None  # what the recipe has and the trial did not use
    files = sessions.write_files(session)
    again = tmp_path / "again"
    result = CliRunner().invoke(app, ["train", "--config", str(files["best"]), "--time-budget", "8s",
                                      "--out", str(again), "--offline"])
    assert result.exit_code == 0, result.output
    remade = json.loads((again / "config.json").read_text())
    keys = set(ran) - ONE_RUN
    assert {k: remade[k] for k in keys} == {k: ran[k] for k in keys}
    assert remade["time_budget"] == ran["time_budget"]


@pytest.mark.parametrize("line, words", [
    ('lr = "fast"', "lr = \"fast\" is not a number"),
    ('amp = "false"', "amp = \"false\" is not"),
    ('epochs = "3"', "epochs = \"3\" is not"),
])
def test_a_value_of_the_wrong_type_is_one_line(cached, tmp_path: Path, line: str, words: str) -> None:
    (tmp_path / "bad.toml").write_text(f'model = "resnet18"\n{line}\n')
    for command in (["train"], ["tune", "--time-budget", "1m"]):
        result = CliRunner().invoke(app, [*command, "--config", str(tmp_path / "bad.toml"), "--offline",
                                          "--device", "cpu"])
        lines = [text for text in result.output.strip().splitlines() if text.strip()]
        assert result.exit_code != 0 and len(lines) == 1 and words in lines[0], result.output
        assert "Traceback" not in result.output


def test_none_in_a_config_file_is_an_unset_setting(cached, tmp_path: Path) -> None:
    (tmp_path / "f.toml").write_text('model = "airbench94_quarter"\nrecipe = "muon"\nmicro_batch = "none"\n'
                                     'bias_lr = "none"\n')
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "f.toml"), "--max-steps", "1",
                                      "--device", "cpu", "--out", str(out), "--offline"])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["micro_batch"] is None and config["bias_lr"] is None
    assert 'micro_batch = "none"' in (out / "config.toml").read_text()


def test_study_json_holds_no_password(tmp_path: Path) -> None:
    spec = TuneSpec("net", None, trial_budget=60.0, time_budget=600.0)
    write_study_file(tmp_path, spec, "postgresql://me:s3cret@db.example/tune", "s")
    text = (tmp_path / "study.json").read_text()
    assert "s3cret" not in text and read_study_file(tmp_path)["storage"] == "postgresql://me@db.example/tune"


def _asked(spec: TuneSpec, worker: str, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    monkeypatch.setenv(studies.WORKER, worker)
    study = optuna.create_study(direction="maximize", sampler=studies.sampler(spec))
    asked = []
    for _ in range(10):  # past TPE's random starts
        trial = study.ask()
        settings = suggest(trial, {"sgd": 1.0, "adam": 0.01}, 512, ("sgd", "adam", "muon"))
        study.tell(trial, settings["lr"] * 100 % 97)
        asked.append(trial.params)
    return asked


def test_a_seed_runs_the_search_again_to_the_same_suggestions(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = TuneSpec("net", None, trial_budget=60.0, time_budget=600.0, seed=5)
    assert _asked(spec, "0", monkeypatch) == _asked(spec, "0", monkeypatch)
    assert _asked(spec, "0", monkeypatch) != _asked(spec, "1", monkeypatch)  # each worker its own draws


RAISES = '''
import torch
from torch import nn


class Net(nn.Module):
    """Trains at any batch, then fails to evaluate after batches of 1024, as a model out of memory would."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, num_classes)
        self.seen = 0

    def forward(self, x):
        if self.training:
            self.seen = max(self.seen, x.shape[0])
        elif self.seen >= 1024:
            raise RuntimeError(f"out of memory at batch {self.seen}")
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))
'''


def test_with_two_jobs_a_failing_trial_is_recorded_and_the_search_goes_on(home: Path, tmp_path: Path) -> None:
    write_cache(tiny_dataset(train=1100, test=20))  # batches of 1024 after 50 are held out
    (tmp_path / "net.py").write_text(RAISES)
    study = tmp_path / "study"
    result = subprocess.run([sys.executable, "-m", "cifarctl", "tune", f"{tmp_path / 'net.py'}:Net", "--time-budget",
                             "30s", "--trial-budget", "3s", "--jobs", "2", "--out", str(study), *FAST],
                            env=_env(home), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = _trials(study)
    failed = [r for r in rows if r["state"] == "FAIL"]
    assert failed and all(r["error"] == "RuntimeError: out of memory at batch 1024" for r in failed)
    assert all(r["batch_size"] == "1024" for r in failed)  # the good starts at batch 1024 among them
    assert len({r["run_dir"].split("/trials/")[0] for r in rows if r["run_dir"]}) == 1
    assert any(r["state"] == "COMPLETE" for r in rows) and not any(r["state"] == "RUNNING" for r in rows)


def test_confirm_trains_again_when_the_best_or_n_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cifarctl.groups as groups
    import cifarctl.run.compare as compare

    trained, resumed = [], []
    monkeypatch.setattr(groups, "train_group", lambda cfg, seeds, data, folder, **_: (
        trained.append((folder.name, tuple(seeds))), folder.mkdir(parents=True), (folder / "group.json").write_text("{}")))
    monkeypatch.setattr(groups, "resume_group", lambda folder, *a, **k: resumed.append(folder.name))
    monkeypatch.setattr(compare, "compare_folders", lambda a, b: None)
    monkeypatch.setattr("cifarctl.run.group.is_group", lambda folder: (folder / "group.json").is_file())
    spec = TuneSpec(f"{tmp_path / 'net.py'}:Net", None, trial_budget=3.0, time_budget=60.0, seed=2)
    (tmp_path / "net.py").write_text(NET)
    study = optuna.create_study(direction="maximize")
    lr = optuna.distributions.FloatDistribution(1e-3, 1.0)
    study.add_trial(optuna.trial.create_trial(params={"lr": 0.1}, distributions={"lr": lr}, value=70.0,
                                              user_attrs={"settings": {"lr": 0.1}}))
    session = sessions.Session(tmp_path / "study", study, spec, "s", None)
    seeds = sessions.confirm_seeds(spec, 2)
    assert seeds == [1002, 1003]  # none a trial of the study trained with
    sessions.confirm(session, seeds, None)
    sessions.confirm(session, seeds, None)  # the same best and N: resumed, not trained again
    study.add_trial(optuna.trial.create_trial(params={"lr": 0.2}, distributions={"lr": lr}, value=80.0,
                                              user_attrs={"settings": {"lr": 0.2}}))
    sessions.confirm(session, seeds, None)  # a new best: its own group
    sessions.confirm(session, sessions.confirm_seeds(spec, 3), None)  # another N: new groups
    assert [name for name, _ in trained] == ["default-2-seeds", "best-trial-0-2-seeds", "best-trial-1-2-seeds",
                                             "default-3-seeds", "best-trial-1-3-seeds"]
    assert sorted(resumed) == ["best-trial-0-2-seeds", "default-2-seeds", "default-2-seeds"]
