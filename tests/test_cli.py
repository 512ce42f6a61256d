"""The commands end to end through Typer's CliRunner, on tiny synthetic data in an isolated home."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cifarctl.cli import app
from cifarctl.models import create_model

SEED = f"{Path(__file__).parent / 'fixtures' / 'seed_resnet.py'}:ResNet50_layer4"
REAL = Path(__file__).parent / 'realworld_models.py'
FAST = ["--device", "cpu", "--batch-size", "50"]


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


def test_version_and_help(runner: CliRunner) -> None:
    assert "cifarctl" in runner.invoke(app, ["--version"]).output
    result = runner.invoke(app, ["--help"])
    for command in ("download", "inspect", "train", "evaluate"):
        assert command in result.output


def test_download_from_archive_then_again(runner: CliRunner, home: Path, official_archive: Path) -> None:
    first = runner.invoke(app, ["download", "--from", str(official_archive)])
    assert first.exit_code == 0, first.output
    assert "200 train + 50 test" in first.output and str(home) in first.output
    second = runner.invoke(app, ["download", "--from", str(official_archive)])
    assert second.exit_code == 0 and "already" in second.output
    forced = runner.invoke(app, ["download", "--from", str(official_archive), "--force"])
    assert forced.exit_code == 0 and "ready" in forced.output


def test_download_from_image_tree(runner: CliRunner, home: Path, image_tree: Path) -> None:
    result = runner.invoke(app, ["download", "--from", str(image_tree)])
    assert result.exit_code == 0, result.output
    assert "40 train + 20 test" in result.output


def test_download_from_nonsense_is_one_line(runner: CliRunner, home: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    result = runner.invoke(app, ["download", "--from", str(tmp_path / "notes.txt")])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "expected the official" in errors[0] and "Traceback" not in result.output


def test_train_then_evaluate_newest(runner: CliRunner, cached, home: Path) -> None:
    result = runner.invoke(app, ["train", "resnet50", "--epochs", "1", "--max-steps", "2", *FAST, "--offline"])
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output
    runs = list((home / "data" / "runs" / "resnet50").glob("*/last.pt"))
    assert len(runs) == 1
    state = torch.load(runs[0], weights_only=True)
    assert state["global_step"] == 2 and state["model_name"] == "resnet50"

    evaluated = runner.invoke(app, ["evaluate", "resnet50", "--ckpt", "--json", "--device", "cpu", "--offline"])
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.stdout)
    assert report["checkpoint"] == str(runs[0]) and report["images"] == 50
    assert {"model", "accuracy", "loss", "per_class", "confusion"} <= set(report)
    assert len(report["confusion"]) == 10 and sum(map(sum, report["confusion"])) == 50


def test_evaluate_a_course_state_dict(runner: CliRunner, cached, tmp_path: Path) -> None:
    torch.save(create_model("vgg16").state_dict(), tmp_path / "vgg16_250.pt")
    result = runner.invoke(app, ["evaluate", "vgg16", "--ckpt", str(tmp_path / "vgg16_250.pt"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output and "confusion matrix" in result.output


def test_train_json_and_out_dir(runner: CliRunner, cached, tmp_path: Path) -> None:
    out = tmp_path / "myrun"
    result = runner.invoke(app, ["train", "resnet50", "--max-steps", "1", "--no-eval", *FAST, "--out", str(out),
                                 "--json", "--offline", "--no-keep-memory"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["run_dir"] == str(out) and report["global_step"] == 1 and report["test_accuracy"] is None
    assert json.loads((out / "config.json").read_text())["keep_memory"] is False


def test_fake_data_needs_no_dataset(runner: CliRunner, home: Path, monkeypatch) -> None:
    monkeypatch.setattr("cifarctl.data.cifar10.fake_cifar10", lambda: __import__("conftest").tiny_dataset())
    result = runner.invoke(app, ["train", "resnet50", "--data", "fake", "--max-steps", "1", "--no-eval", *FAST])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("args, code, words", [
    (["train", "resnet5"], 2, "did you mean resnet50"),
    (["train", "resnet50", "--offline"], 1, "cifarctl download --from"),
    (["evaluate", "vgg16", "--ckpt", "--offline"], 1, "no vgg16 checkpoint"),
    (["train", "vgg16", "--device", "cuda:7", "--data", "fake"], 1, "--device cuda:7"),
    (["train", "vgg16", "--optimizer", "adagrad", "--data", "fake"], 2, "unknown optimizer"),
])
def test_bad_input_is_one_line(runner: CliRunner, home: Path, monkeypatch, args, code, words) -> None:
    monkeypatch.setattr("cifarctl.data.cifar10.fake_cifar10", lambda: __import__("conftest").tiny_dataset())
    if "cuda:7" in args:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    result = runner.invoke(app, args)
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and words in result.output.replace("\n", " ")
    assert "Traceback" not in result.output


def test_cuda_absent_is_explained(runner: CliRunner, home: Path, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("cifarctl.data.cifar10.fake_cifar10", lambda: __import__("conftest").tiny_dataset())
    result = runner.invoke(app, ["train", "vgg16", "--device", "cuda", "--data", "fake"])
    assert result.exit_code == 1 and "use --device cpu" in result.output


def test_wrong_architecture_checkpoint(runner: CliRunner, cached, tmp_path: Path) -> None:
    torch.save(create_model("vgg16").state_dict(), tmp_path / "w.pt")
    result = runner.invoke(app, ["evaluate", "resnet50", "--ckpt", str(tmp_path / "w.pt"), "--device", "cpu"])
    assert result.exit_code == 1 and "is a vgg16 checkpoint, not resnet50" in result.output


def test_inspect_json_numbers(runner: CliRunner) -> None:
    for name, params, macs in (("vgg16", 14_983_498, 313.5e6), ("resnet50", 14_750_730, 92.7e6)):
        result = runner.invoke(app, ["inspect", name, "--input", "3x32x32", "--json"])
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["ok"] and report["total_params"] == params and report["output"] == [2, 10]
        assert report["batch"] == 2 and "FLOPs / 2" in report["macs_counted"]
        assert abs(report["total_macs"] - macs) / macs < 1e-3
        assert {"module", "type", "parent", "input", "output", "params", "macs"} <= set(report["layers"][1])
    one = json.loads(runner.invoke(app, ["inspect", "resnet50", "--batch", "1", "--json"]).stdout)
    assert one["input"] == [1, 3, 32, 32] and one["output"] == [1, 10] and one["total_macs"] == report["total_macs"]


def test_inspect_seed_json(runner: CliRunner) -> None:
    result = runner.invoke(app, ["inspect", SEED, "--input", "3x32x32", "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["error"]["module"] == "layer2.2"
    assert {"module", "type", "message", "hint"} <= set(report["error"])
    assert [w["module"] for w in report["warnings"]][:2] == ["layer2.0", "layer2.1"]


def test_inspect_table_and_exit_codes(runner: CliRunner) -> None:
    ok = runner.invoke(app, ["inspect", "resnet50", "--depth", "1"])
    assert ok.exit_code == 0 and "Output: 2x10" in ok.output and "(batch 2)" in ok.output
    broken = runner.invoke(app, ["inspect", SEED])
    assert broken.exit_code == 1 and "fix:" in broken.output and "layer2.2" in broken.output
    assert runner.invoke(app, ["inspect", "vgg61"]).exit_code == 2
    assert runner.invoke(app, ["inspect", "vgg16", "--input", "32x32"]).exit_code == 2
    assert runner.invoke(app, ["inspect", "nowhere.py:Net"]).exit_code == 2
    init_bug = runner.invoke(app, ["inspect", f"{REAL}:InitBug"])
    assert init_bug.exit_code == 2 and "realworld_models.py:" in init_bug.output
    assert "Traceback" not in init_bug.output and len(init_bug.output.strip().splitlines()) == 1


def test_runs_lists_runs_and_plots(runner: CliRunner, cached, home: Path, tmp_path: Path) -> None:
    assert "no runs" in runner.invoke(app, ["runs"]).output
    result = runner.invoke(app, ["train", "resnet50", "--epochs", "1", *FAST, "--offline", "--plot",
                                 "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r" / "curves.png").read_bytes()[:4] == b"\x89PNG"
    runner.invoke(app, ["train", "resnet50", "--max-steps", "1", "--no-eval", *FAST, "--offline"])
    listed = json.loads(runner.invoke(app, ["runs", "resnet50", "--json"]).stdout)
    # Oldest first; the --out run outside the root is listed too (from the runs index).
    assert [r["global_step"] for r in listed] == [4, 1] and listed[0]["path"] == str((tmp_path / "r").resolve())
    table = runner.invoke(app, ["runs"])
    assert table.exit_code == 0 and "resnet50" in table.output
    plot = tmp_path / "confusion.png"
    evaluated = runner.invoke(app, ["evaluate", "resnet50", "--ckpt", str(tmp_path / "r" / "best.pt"),
                                    "--device", "cpu", "--plot", str(plot)])
    assert evaluated.exit_code == 0, evaluated.output
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_plot_without_matplotlib_says_how_to_get_it(runner: CliRunner, cached, monkeypatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    result = runner.invoke(app, ["train", "resnet50", "--plot", "--max-steps", "1", *FAST, "--offline"])
    assert result.exit_code == 1 and "pip install 'cifarctl[plot]'" in result.output


def test_train_bare_ckpt_starts_from_the_newest(runner: CliRunner, cached, home: Path) -> None:
    first = runner.invoke(app, ["train", "resnet50", "--max-steps", "1", "--no-eval", *FAST, "--offline"])
    assert first.exit_code == 0, first.output
    second = runner.invoke(app, ["train", "resnet50", "--ckpt", "--max-steps", "1", "--no-eval", *FAST, "--offline"])
    assert second.exit_code == 0, second.output
    assert "initialising resnet50 from" in second.output and "last.pt" in second.output


def test_models_lists_every_model_with_its_recipe(runner: CliRunner) -> None:
    from cifarctl.models import list_models

    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert set(rows) == {*list_models(), "FILE.py:Name"}  # and the default recipe of a model of your own
    assert "head lr 0.01" in rows["FILE.py:Name"]["recipe"] and "without norm layers" in rows["FILE.py:Name"]["recipe"]
    assert rows["airbench94"]["params"] == 1_972_792 and rows["resnet50"]["macs"] == 92_727_296
    assert "nesterov sgd lr 11.5 per 1024" in rows["airbench94"]["recipe"] and "2404.00498" in rows["airbench94"]["reference"]
    muon = next(r for r in rows["airbench94"]["recipes"] if r["name"] == "muon")
    assert "batch 2000 in chunks of 1000" in muon["summary"] and "chunks" not in rows["airbench94"]["recipe"]
    half = {r["name"]: r for r in rows["airbench94_half"]["recipes"]}
    assert half["record"]["measured"] == {"accuracy": 88.45, "n": 3, "std": 0.21, "cpu": "Zen 3 fp32",
                                          "length": "7.59 epochs, 482 s", "args": ""}
    assert half["record"]["command"] == "cifarctl train airbench94_half --recipe record"
    assert half["paper"]["command"] == "cifarctl train airbench94_half"  # the default needs no --recipe


def test_models_gives_one_line_a_recipe_and_the_rest_by_name(runner: CliRunner) -> None:
    table = runner.invoke(app, ["models"], terminal_width=120)
    assert table.exit_code == 0, table.output
    rows = json.loads(runner.invoke(app, ["models", "--json"]).stdout)
    recipes = sum(len(r["recipes"]) for r in rows)
    lines = [line for line in table.output.splitlines() if "cifarctl train " in line and "│" in line]
    assert len(lines) == recipes  # one line each, however wide the terminal: no cell wraps
    half = next(line for line in lines if "cifarctl train airbench94_half --recipe record" in line)
    assert "88.45% ± 0.21 (n=3), Zen 3 fp32, 7.59 epochs, 482 s" in half
    assert len(table.output.splitlines()) < recipes + 8
    one = runner.invoke(app, ["models", "airbench94_half"])
    assert one.exit_code == 0 and "smoothing 0.09" in one.output  # the record recipe in full
    assert "train it: cifarctl train airbench94_half --recipe record" in one.output and "reference: measured here" in one.output
    shown = json.loads(runner.invoke(app, ["models", "airbench94", "--json"]).stdout)
    assert shown["name"] == "airbench94" and "2404.00498" in shown["recipes"][0]["reference"]
    unknown = runner.invoke(app, ["models", "airbench49"])
    assert unknown.exit_code == 2 and "airbench94" in unknown.output and unknown.output.count("error:") == 1


def test_resume_takes_the_data_and_model_from_the_run(runner: CliRunner, home: Path, tmp_path: Path,
                                                      monkeypatch) -> None:
    monkeypatch.setattr("cifarctl.data.cifar10.fake_cifar10", lambda: __import__("conftest").tiny_dataset())
    run = tmp_path / "run"
    first = runner.invoke(app, ["train", "resnet50", "--data", "fake", "--epochs", "1", "--max-steps", "1",
                                "--no-eval", *FAST, "--out", str(run)])
    assert first.exit_code == 0, first.output
    # No dataset in this home, and --offline: resuming works only if the run's own --data fake is used.
    resumed = runner.invoke(app, ["train", "resnet50", "--resume", str(run), "--offline", "--max-steps", "2",
                                  "--json"])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["global_step"] == 2
    wrong_model = runner.invoke(app, ["train", "vgg16", "--resume", str(run)])
    assert wrong_model.exit_code == 2 and "is a resnet50 run, not vgg16" in wrong_model.output
    changed = runner.invoke(app, ["train", "resnet50", "--resume", str(run), "--lr", "0.1"])
    assert changed.exit_code == 2 and "--lr cannot change" in changed.output
    # An --out run is listed by `runs` and found by a bare --resume.
    listed = json.loads(runner.invoke(app, ["runs", "--json"]).stdout)
    assert [r["path"] for r in listed] == [str(run.resolve())] and listed[0]["best_selected_on"] == "test"
    again = runner.invoke(app, ["train", "resnet50", "--resume", "--offline", "--max-steps", "4", "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["global_step"] == 4  # one epoch of 200 images, batch 50: finished
    finished = runner.invoke(app, ["train", "resnet50", "--resume", "--offline"])
    assert finished.exit_code == 0 and "already finished" in finished.output and "nan" not in finished.output
