"""`train --tensorboard`: the scalars of metrics.jsonl, as TensorBoard event files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cifarctl.cli import app
from cifarctl.engine import TrainConfig, train
from conftest import tiny_dataset

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    events = event_accumulator.EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_event_files_hold_what_metrics_jsonl_holds(tmp_path: Path) -> None:
    cfg = TrainConfig(model="resnet50", epochs=2, batch_size=50, device="cpu", log_every=2, tensorboard=True)
    result = train(cfg, tiny_dataset(), out_dir=tmp_path / "run")
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    scalars = _scalars(result.run_dir / "tensorboard")
    assert {"train/loss", "train/accuracy", "train/lr", "train/images_per_s", "epoch/train_loss",
            "epoch/train_accuracy", "test/accuracy", "test/loss"} <= set(scalars)
    steps = [r for r in records if r["type"] == "step"]
    assert [s for s, _ in scalars["train/loss"]] == [r["global_step"] for r in steps] == [2, 4, 6, 8]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([r["loss"] for r in steps], rel=1e-6)
    epochs = [r for r in records if r["type"] == "epoch"]
    assert [v for _, v in scalars["test/accuracy"]] == pytest.approx([r["test_acc"] for r in epochs if "test_acc" in r])
    assert scalars["test/accuracy"][-1][0] == result.global_step


def test_train_flag_and_missing_package(tmp_path: Path, cached, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    done = runner.invoke(app, ["train", "resnet50", "--epochs", "1", "--device", "cpu", "--batch-size", "50",
                               "--offline", "--tensorboard", "--out", str(tmp_path / "r")])
    assert done.exit_code == 0, done.output
    assert "test/accuracy" in _scalars(tmp_path / "r" / "tensorboard")
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)   # as if the extra were not installed
    missing = runner.invoke(app, ["train", "resnet50", "--epochs", "1", "--device", "cpu", "--offline",
                                  "--tensorboard", "--out", str(tmp_path / "s")])
    assert missing.exit_code == 2 and "pip install 'cifarctl[tensorboard]'" in missing.output
    assert not (tmp_path / "s").exists()


def test_a_resumed_run_drops_the_events_after_its_checkpoint(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    from cifarctl.engine import resume

    data = tiny_dataset()
    cfg = TrainConfig(model="resnet50", epochs=2, batch_size=50, device="cpu", log_every=1, max_steps=3,
                      tensorboard=True, eval=False)
    run = train(cfg, data, out_dir=tmp_path / "run").run_dir
    stray = SummaryWriter(str(run / "tensorboard"))     # a crash after step 3 had logged steps 4 and 5
    for step in (4, 5):
        stray.add_scalar("train/loss", 99.0, step)
    stray.close()
    resume(run, data, {"max_steps": 6})
    losses = _scalars(run / "tensorboard")["train/loss"]
    assert [s for s, _ in losses] == [1, 2, 3, 4, 5, 6] and 99.0 not in [v for _, v in losses]
