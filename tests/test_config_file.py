"""Config files: --config FILE under the command line, config.toml beside config.json, metrics.csv."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cifarctl.cli import app
from cifarctl.run.config_file import merge, read_config, run_settings, to_toml, train_keys
from cifarctl.errors import UsageError

STEPS = ["--device", "cpu", "--offline", "--no-amp", "--batch-size", "50", "--log-every", "1"]


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


def _config(run_dir: Path) -> dict:
    return json.loads((run_dir / "config.json").read_text())


def _one_line(result) -> str:
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code != 0 and len(lines) == 1, result.output
    return lines[0]


def test_the_command_line_overrides_the_file(runner: CliRunner, cached, tmp_path: Path) -> None:
    config = tmp_path / "recipe.toml"
    config.write_text('model = "resnet50"\nlr = 0.01\noptimizer = "sgd"\nlabel-smoothing = 0.2\nepochs = 3\n'
                      'model_options = { }\n')
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--config", str(config), "--lr", "0.02", "--max-steps", "1", "--out",
                                 str(out), *STEPS])
    assert result.exit_code == 0, result.output
    values = _config(out)
    assert values["model"] == "resnet50" and values["optimizer"] == "sgd" and values["label_smoothing"] == 0.2
    assert values["lr"] == 0.02  # the command line's
    assert values["max_steps"] == 1 and values["epochs"] == 1  # a length given replaces the file's whole length


def test_a_length_on_the_command_line_replaces_the_files() -> None:
    assert merge({"epochs": 3, "lr": 0.1}, {"time_budget": 60.0, "lr": None}) == {"lr": 0.1, "time_budget": 60.0}
    assert merge({"time_budget": 60.0, "seed": 1}, {"epochs": 2}) == {"seed": 1, "epochs": 2}
    assert merge({"model_options": {"a": 1, "b": 2}}, {"model_options": {"b": 3}}) == {"model_options": {"a": 1, "b": 3}}


def test_an_unknown_key_names_the_closest_option(runner: CliRunner, cached, tmp_path: Path) -> None:
    config = tmp_path / "typo.toml"
    config.write_text('lr_shedule = "cosine"\n')
    line = _one_line(runner.invoke(app, ["train", "resnet50", "--config", str(config), *STEPS]))
    assert "lr_shedule" in line and "lr_schedule" in line and "--lr-schedule" in line
    with pytest.raises(UsageError, match="unknown key 'zzz'"):
        (tmp_path / "far.toml").write_text("zzz = 1\n")
        read_config(tmp_path / "far.toml", train_keys())


@pytest.mark.parametrize("text, words", [("lr = \n", "not TOML"), (None, "no such file")])
def test_a_bad_file_is_one_line(runner: CliRunner, cached, tmp_path: Path, text, words) -> None:
    config = tmp_path / "bad.toml"
    if text is not None:
        config.write_text(text)
    line = _one_line(runner.invoke(app, ["train", "resnet50", "--config", str(config), *STEPS]))
    assert words in line and str(config) in line


def test_a_runs_config_toml_makes_the_same_run_again(runner: CliRunner, cached, tmp_path: Path) -> None:
    first, again = tmp_path / "first", tmp_path / "again"
    result = runner.invoke(app, ["train", "resnet50", "--optimizer", "sgd", "--lr", "0.03", "--label-smoothing", "0.1",
                                 "--color-jitter", "0.1,0.2", "--epochs", "1", "--out", str(first), *STEPS])
    assert result.exit_code == 0, result.output
    assert (first / "config.toml").read_text().startswith("#")
    result = runner.invoke(app, ["train", "--config", str(first / "config.toml"), "--out", str(again), "--offline"])
    assert result.exit_code == 0, result.output
    assert _config(again) == _config(first)


def test_a_budgeted_runs_file_keeps_its_budget_not_the_length_it_chose() -> None:
    config = {"model": "x", "time_budget": 120.0, "epochs": 4, "max_steps": 400, "schedule_steps": 400, "lr": 0.1,
              "choice": {"a": 1}, "world_size": 1, "head_lr": None}
    assert run_settings(config) == {"model": "x", "time_budget": 120.0, "lr": 0.1, "head_lr": None}  # None kept
    text = to_toml({"model": "x", "color_jitter": (0.1, 0.2), "model_options": {"width": 2}, "lr": None})
    assert "color_jitter = [\n    0.1,\n    0.2,\n]" in text or "color_jitter = [0.1, 0.2]" in text
    assert text.index("[model_options]") > text.index("color_jitter") and 'lr = "none"' in text


def test_metrics_csv_has_a_row_per_epoch(runner: CliRunner, cached, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "resnet50", "--epochs", "2", "--out", str(out), *STEPS])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [float(r["epoch"]) for r in rows] == [1.0, 2.0]
    assert {"train_loss", "train_acc", "test_acc", "lr", "global_step"} <= set(rows[0])
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in epochs if r["type"] == "epoch"] == [float(r["train_loss"]) for r in rows]


def test_evaluate_takes_a_runs_config(runner: CliRunner, cached, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "resnet50", "--max-steps", "1", "--tta", "1", "--out", str(out), *STEPS])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["evaluate", "--config", str(out / "config.toml"), "--offline", "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout[result.stdout.index("{"):])
    assert body["model"] == "resnet50" and body["tta_level"] == 1
    assert Path(body["checkpoint"]) == out / "last.pt"
