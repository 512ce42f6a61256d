import dataclasses
import json
import threading
from pathlib import Path

import pytest
import torch

from cifarctl.engine import TrainConfig, TrainingInterrupted, evaluate, load_checkpoint, resume, train
from cifarctl.errors import CifarctlError, UsageError
from cifarctl.models import create_model
from cifarctl.progress import NullProgress

from conftest import FAST, plain_cnn, tiny_dataset


class StopAfter(NullProgress):
    """Asks the loop to stop once ``steps`` optimizer steps were reported."""

    def __init__(self, stop: threading.Event, steps: int) -> None:
        self.stop, self.left = stop, steps

    def advance(self, amount: float = 0, **info: object) -> None:
        if "loss" in info:  # step reports carry metrics; progress catch-up and eval do not
            self.left -= 1
            if self.left == 0:
                self.stop.set()


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_train_writes_a_run_folder(tmp_path: Path) -> None:
    result = train(TrainConfig(epochs=1, **FAST), tiny_dataset(), tmp_path / "run")
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {"last.pt", "best.pt", "config.json", "metrics.jsonl"}
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["model_name"] == "resnet50" and state["epoch"] == 1 and state["global_step"] == 4
    assert state["world_size"] == 1 and "optimizer" in state and "rng" in state
    assert json.loads((run / "config.json").read_text())["optimizer"] == "adam"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in records if r["type"] == "step"] == [1, 2, 3, 4]
    assert records[-1]["type"] == "epoch" and records[-1]["test_acc"] == result.test_accuracy
    assert result.global_step == 4 and 0 <= result.test_accuracy <= 100


def test_max_steps_stops_mid_epoch_and_evaluates(tmp_path: Path) -> None:
    result = train(TrainConfig(epochs=3, max_steps=3, **FAST), tiny_dataset(), tmp_path / "run")
    assert result.global_step == 3 and result.epochs_completed == 0
    assert result.test_accuracy is not None


def test_learning_happens(tmp_path: Path) -> None:
    data = tiny_dataset()
    # The course's own Adam lr (1e-3): at 3e-3 one CPU (a Xeon, fp32) ended at exactly 30%, on the line.
    result = train(TrainConfig(epochs=8, **FAST), data, tmp_path / "run")
    assert result.test_accuracy > 30  # classes differ by colour: chance is 10%


def test_stop_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    data = tiny_dataset()
    cfg = TrainConfig(epochs=2, **FAST)
    train(cfg, data, tmp_path / "straight")
    stop = threading.Event()
    with pytest.raises(TrainingInterrupted) as info:
        train(cfg, data, tmp_path / "stopped", progress=StopAfter(stop, 6), stop=stop)
    assert info.value.global_step == 6
    resume(tmp_path / "stopped", data)
    a, b = _weights(tmp_path / "straight" / "last.pt"), _weights(tmp_path / "stopped" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = [json.loads(x) for x in (tmp_path / "stopped" / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in lines if r["type"] == "step"] == list(range(1, 9))


def test_resume_refuses_a_weights_only_file(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    torch.save({"w": torch.ones(1)}, tmp_path / "run" / "last.pt")
    with pytest.raises(CifarctlError, match="weights-only"):
        resume(tmp_path / "run", tiny_dataset())


def test_existing_run_folder_is_not_overwritten(tmp_path: Path) -> None:
    train(TrainConfig(epochs=1, max_steps=1, eval=False, **FAST), tiny_dataset(), tmp_path / "run")
    with pytest.raises(CifarctlError, match="--resume"):
        train(TrainConfig(epochs=1, **FAST), tiny_dataset(), tmp_path / "run")


def test_init_from_a_course_state_dict(tmp_path: Path) -> None:
    from cifarctl.models import create_model

    from cifarctl.training.trainer import Trainer

    torch.manual_seed(123)  # not the run's seed: the init must come from the file, not from the seed
    course = create_model("resnet50")
    torch.save(course.state_dict(), tmp_path / "resnet50_285.pt")
    cfg = TrainConfig(epochs=1, max_steps=1, eval=False, init_ckpt=str(tmp_path / "resnet50_285.pt"), **FAST)
    trainer = Trainer(cfg, tiny_dataset(), tmp_path / "run")
    before = trainer.model.state_dict()
    assert all(torch.equal(before[k], v) for k, v in course.state_dict().items())  # weights before step 1
    trainer.run()
    after = _weights(tmp_path / "run" / "last.pt")
    assert not torch.equal(after["fc.weight"], course.state_dict()["fc.weight"])  # one step was taken from it


@pytest.mark.parametrize("recipe", [
    dict(optimizer="sgd", lr=0.05, nesterov=True, weight_decay=5e-4, lr_schedule="onecycle"),
    dict(lr_schedule="cosine", warmup_epochs=0.5, label_smoothing=0.1),
    dict(lr_schedule="step"),
    dict(amp=True),  # bf16 where this CPU has it natively, fp32 elsewhere
])
def test_recipes_run(tmp_path: Path, recipe: dict) -> None:
    cfg = TrainConfig(epochs=1, max_steps=2, eval=False, **{**FAST, **recipe})
    result = train(cfg, tiny_dataset(), tmp_path / "run")
    assert result.global_step == 2
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    groups = state["optimizer"]["param_groups"]
    assert {g["name"] for g in groups} == {"weights", "norm_bias", "other_bias"}
    decay = {g["name"]: g["weight_decay"] for g in groups}
    assert decay["weights"] == cfg.weight_decay and decay["norm_bias"] == decay["other_bias"] == 0
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not all(torch.equal(v, create_model("resnet50").state_dict()[k]) for k, v in state["model"].items())


def _plain_net() -> torch.nn.Module:
    torch.manual_seed(3)
    return plain_cnn()


def test_micro_batches_take_the_whole_batchs_step(tmp_path: Path) -> None:
    data = tiny_dataset()
    # A step that trains rather than diverges: at lr 0.5 this net's weights grew to 60 within 4 steps, where one
    # CPU's summation order (AVX-512's against AVX2's) moved them by 6e-5, the chunks' sum included.
    cfg = TrainConfig(model="plain", epochs=1, batch_size=50, device="cpu", eval=False, amp=False, log_every=1,
                      optimizer="sgd", lr=0.05, momentum=0.9, label_smoothing=0.2)
    whole = train(cfg, data, tmp_path / "whole", model=_plain_net())
    chunked = train(dataclasses.replace(cfg, micro_batch=20), data, tmp_path / "chunked",
                    model=_plain_net())  # 50 images as chunks of 16, 17 and 17: weighted by their sizes
    a, b = _weights(tmp_path / "whole" / "last.pt"), _weights(tmp_path / "chunked" / "last.pt")
    assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-5) for k in a)
    assert not torch.equal(a["4.weight"], _plain_net().state_dict()["4.weight"])  # 4 steps moved it
    assert whole.train_loss == pytest.approx(chunked.train_loss, rel=1e-6)
    assert whole.train_accuracy == chunked.train_accuracy
    assert json.loads((tmp_path / "chunked" / "config.json").read_text())["micro_batch"] == 20
    with pytest.raises(UsageError, match="micro-batch"):
        TrainConfig(model="vgg16", micro_batch=0)


def test_bad_settings_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="optimizer"):
        TrainConfig(model="vgg16", optimizer="adagrad")
    with pytest.raises(UsageError, match="schedule"):
        TrainConfig(model="vgg16", lr_schedule="exponential")


def test_evaluate_reports_confusion_and_per_class(tmp_path: Path) -> None:
    data = tiny_dataset()
    train(TrainConfig(epochs=1, max_steps=1, eval=False, **FAST), data, tmp_path / "run")
    result = evaluate("resnet50", tmp_path / "run" / "last.pt", data, device="cpu", batch_size=16)
    assert result.images == 50 and sum(map(sum, result.confusion)) == 50
    correct = sum(result.confusion[i][i] for i in range(10))
    assert result.accuracy == pytest.approx(100 * correct / 50)
    assert set(result.per_class) == set(data.classes)


def test_schedules_shape() -> None:
    from cifarctl.training.schedule import build_optimizer, build_scheduler

    def lrs(**kw) -> list[float]:
        cfg = TrainConfig(**{"model": "vgg16", "epochs": 10, "lr": 1.0, **kw})
        opt = build_optimizer(cfg, torch.nn.Linear(1, 1))
        sched = build_scheduler(cfg, opt, steps_per_epoch=10)
        out = []
        for _ in range(cfg.epochs * 10):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    one = lrs(lr_schedule="onecycle")
    assert one[0] == pytest.approx(1 / 25) and max(one) == pytest.approx(1.0, abs=1e-3) and one[-1] < 1e-3
    assert lrs(lr_schedule="cosine")[50] == pytest.approx(0.5, abs=0.02)
    warm = lrs(lr_schedule="none", warmup_epochs=1)
    assert warm[0] == pytest.approx(0.01) and warm[5] == pytest.approx(0.01 + 0.99 * 0.5) and warm[10:] == [1.0] * 90
    step = lrs(lr_schedule="step", epochs=50)
    assert step[199] == 1.0 and step[200] == pytest.approx(1 / 3) and step[400] == pytest.approx(1 / 9)


def test_lengthening_a_finished_schedule_continues_at_its_final_lr(tmp_path: Path) -> None:
    data = tiny_dataset()
    cfg = TrainConfig(epochs=2, optimizer="sgd", lr=0.1, lr_schedule="onecycle", eval=False, **FAST)
    train(cfg, data, tmp_path / "run")
    resume(tmp_path / "run", data, {"epochs": 4})
    lrs = [r["lr"] for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
           if r["type"] == "step"]
    assert len(lrs) == 16 and max(lrs[8:]) <= lrs[7] < 1e-4  # no jump back up the curve
    assert load_checkpoint(tmp_path / "run" / "last.pt")["config"]["schedule_steps"] == 8


def test_resume_refuses_settings_that_shaped_the_run(tmp_path: Path) -> None:
    from cifarctl.run.resume import resume_config

    data = tiny_dataset()
    train(TrainConfig(epochs=2, max_steps=1, eval=False, **FAST), data, tmp_path / "run")
    with pytest.raises(UsageError, match=r"--batch-size, --lr cannot change"):
        resume(tmp_path / "run", data, {"lr": 0.5, "batch_size": 10, "epochs": 3})
    with pytest.raises(UsageError, match="is a resnet50 run, not vgg16"):
        resume_config(tmp_path / "run", "vgg16")
    assert resume_config(tmp_path / "run", "resnet50", {"epochs": 3, "lr": 1e-3}).epochs == 3  # same lr: fine


def test_resuming_a_finished_run_returns_its_stored_results(tmp_path: Path) -> None:
    data = tiny_dataset()
    first = train(TrainConfig(epochs=1, **FAST), data, tmp_path / "run")
    notes: list[str] = []
    again = resume(tmp_path / "run", data, notify=notes.append)
    assert again.finished_before and "already finished" in notes[0]
    assert again.test_accuracy == first.test_accuracy and again.train_loss == first.train_loss
    assert again.global_step == first.global_step
