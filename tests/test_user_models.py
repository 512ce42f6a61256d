"""Your own model, trained: files, modules and torchvision models through train, resume, evaluate, predict, export."""

from __future__ import annotations

import inspect
import json
import sys
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from cifarctl.cli import app
from cifarctl.errors import CheckpointError, UsageError
from cifarctl.evaluation import evaluate, evaluate_model, load_model
from cifarctl.models import model_card
from cifarctl.models.spec import ModelSourceChanged, parse_model_kwargs, run_folder_name
from cifarctl.run.checkpoint import load_checkpoint, save_checkpoint
from cifarctl.run.config import TrainConfig
from cifarctl.training import request_run, resume, train
from cifarctl.training.schedule import build_optimizer

from conftest import tiny_dataset

WITH_BN = '''
import torch.nn as nn
import torch.nn.functional as F


class SmallResNet(nn.Module):
    """Conv-BN stem, one residual block, a linear head (as CIFAR repositories write them)."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.linear = nn.Linear(8, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)) + out)
        out = F.adaptive_avg_pool2d(out, 1)
        return self.linear(out.view(out.size(0), -1))
'''

WITHOUT_BN = '''
import torch.nn as nn
import torch.nn.functional as F


class LeNet(nn.Module):
    def __init__(self):
        super(LeNet, self).__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        out = F.max_pool2d(F.relu(self.conv1(x)), 2)
        out = F.max_pool2d(F.relu(self.conv2(out)), 2)
        out = out.view(out.size(0), -1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(out)))))
'''

FACTORY = '''
import torch.nn as nn


def make_net(width, depth=1, num_classes=10):
    """A factory with a required argument and a keyword one."""
    layers = [nn.Conv2d(3, width, 3, padding=1), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))
'''

SIDE_EFFECT = '''
from pathlib import Path

Path(__file__).with_suffix(".imported").write_text("this file was imported")
'''


def _write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def _cfg(model: str, **values: object) -> TrainConfig:
    settings = dict(epochs=1, max_steps=2, batch_size=50, device="cpu", eval_batch_size=50, amp=False, log_every=1)
    settings.update(values)
    return request_run(model, settings=settings).cfg


def _png(path: Path) -> Path:
    Image.new("RGB", (40, 30), (200, 30, 30)).save(path)
    return path


def test_a_users_file_goes_through_every_command(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxruntime")
    file = _write(tmp_path / "models", "small.py", WITH_BN)
    spec, run, runner = f"{file}:SmallResNet", tmp_path / "run", CliRunner()
    common = ["--data", "fake", "--device", "cpu"]
    small = tiny_dataset()
    monkeypatch.setattr("cifarctl.data.cifar10.fake_cifar10", lambda: small)
    result = runner.invoke(app, ["train", spec, "--max-steps", "2", "--batch-size", "50", "--out", str(run), *common])
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == spec and config["model_source"]["qualname"] == "SmallResNet"
    assert config["recipe"] == "default" and config["head_lr"] == 0.01
    result = runner.invoke(app, ["train", spec, "--resume", str(run), "--max-steps", "4", "--data", "fake"])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(run / "last.pt")["global_step"] == 4
    result = runner.invoke(app, ["evaluate", spec, "--ckpt", str(run / "last.pt"), "--json", *common])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["images"] == 50
    result = runner.invoke(app, ["predict", spec, "--ckpt", str(run / "last.pt"), str(_png(tmp_path / "red.png")),
                                 "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["predictions"][0]["class"] in small.classes
    result = runner.invoke(app, ["export", spec, "--ckpt", str(run / "last.pt"), "--out", str(tmp_path / "m.onnx"),
                                 "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["max_abs_diff"] < 1e-4
    result = runner.invoke(app, ["runs", spec, "--json"])
    assert [r["model"] for r in json.loads(result.stdout)] == [spec]


def test_runs_of_a_spec_have_their_own_folder_and_newest_checkpoint(home: Path, tmp_path: Path) -> None:
    file = _write(tmp_path / "models", "small.py", WITH_BN)
    other = _write(tmp_path / "elsewhere", "small.py", WITH_BN)  # the same file name in another folder
    data = tiny_dataset()
    first = train(_cfg(f"{file}:SmallResNet"), data)
    train(_cfg(f"{other}:SmallResNet"), data)
    assert first.run_dir.parent.name == run_folder_name(f"{file}:SmallResNet") == "small.SmallResNet"
    from cifarctl.run.checkpoint import find_latest

    assert find_latest(f"{file}:SmallResNet") == first.run_dir / "last.pt"  # not the other file's run


def test_the_default_recipe_finds_the_classifier_and_spares_a_model_without_norm(tmp_path: Path) -> None:
    lenet = _write(tmp_path, "lenet.py", WITHOUT_BN)
    cfg = _cfg(f"{lenet}:LeNet")
    assert cfg.recipe == "default" and cfg.optimizer == "sgd" and cfg.lr_schedule == "onecycle"
    from cifarctl.models.spec import build_model

    model, _ = build_model(f"{lenet}:LeNet")
    groups = {g["name"]: g for g in build_optimizer(cfg, model).param_groups}
    assert [p.shape for p in groups["head"]["params"]] == [model.fc3.weight.shape]  # the final layer, not fc1, fc2
    assert groups["weights"]["lr"] == pytest.approx(cfg.lr_without_norm)  # no BatchNorm: every layer like the head
    assert groups["head"]["lr"] == pytest.approx(cfg.head_lr)
    small = _write(tmp_path, "small.py", WITH_BN)
    bn_model, _ = build_model(f"{small}:SmallResNet")
    groups = {g["name"]: g for g in build_optimizer(cfg, bn_model).param_groups}
    assert groups["weights"]["lr"] == pytest.approx(cfg.lr) and groups["head"]["lr"] == pytest.approx(cfg.head_lr)
    # A built-in model's recipe, by name or as MODEL:RECIPE; an unknown one lists them.
    assert request_run(f"{lenet}:LeNet", "resnet18:onecycle").cfg.lr == model_card("resnet18").recipe["lr"]
    assert request_run(f"{lenet}:LeNet", "course").cfg.optimizer == "adam"
    with pytest.raises(UsageError, match="airbench94:muon"):
        request_run(f"{lenet}:LeNet", "fastest")


def test_model_kwargs_and_num_classes_reach_the_constructor_and_config(home: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    factory = _write(tmp_path, "nets.py", FACTORY)
    assert parse_model_kwargs(["width=6", "depth=2", "name=wide", "sizes=(1, 2)"]) == \
        {"width": 6, "depth": 2, "name": "wide", "sizes": (1, 2)}
    with pytest.raises(UsageError, match="KEY=VALUE"):
        parse_model_kwargs(["width"])
    runner = CliRunner()
    monkeypatch.setattr("cifarctl.data.cifar10.fake_cifar10", tiny_dataset)
    result = runner.invoke(app, ["train", f"{factory}:make_net", "--data", "fake", "--max-steps", "1"])
    assert result.exit_code == 2 and "--model-kwargs" in result.output and "width" in result.output
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", f"{factory}:make_net", "--model-kwargs", "width=6", "depth=2",
                                 "--num-classes", "10", "--data", "fake", "--max-steps", "1", "--batch-size", "50",
                                 "--device", "cpu", "--out", str(out), "--no-eval"])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["model_options"] == {"width": 6, "depth": 2} and config["num_classes"] == 10
    assert load_checkpoint(out / "last.pt")["model"]["2.weight"].shape == (6, 6, 3, 3)  # depth 2: a second conv
    result = runner.invoke(app, ["train", f"{factory}:make_net", "--model-kwargs", "width=6", "--num-classes",
                                 "7", "--data", "fake", "--max-steps", "1", "--device", "cpu", "--no-eval"])
    assert result.exit_code == 2 and "returns 2x7 for 2 images; training needs 2x10" in result.output


def test_a_changed_file_is_refused_in_one_line_or_warned_about(tmp_path: Path) -> None:
    file = _write(tmp_path, "small.py", WITH_BN)
    data = tiny_dataset()
    result = train(_cfg(f"{file}:SmallResNet"), data, tmp_path / "run")
    ckpt = result.run_dir / "last.pt"
    file.write_text(WITH_BN + "\n# a comment: the weights still fit\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evaluate(f"{file}:SmallResNet", ckpt, data, device="cpu")
    assert any(issubclass(w.category, ModelSourceChanged) and "changed since the checkpoint" in str(w.message)
               for w in caught)
    file.write_text(WITH_BN.replace("nn.Conv2d(8, 8, 3", "nn.Conv2d(8, 8, 5").replace("padding=1, bias=False)\n"
                                                                                       "        self.bn2",
                                                                                       "padding=2, bias=False)\n"
                                                                                       "        self.bn2"))
    with pytest.raises(CheckpointError) as info:
        evaluate(f"{file}:SmallResNet", ckpt, data, device="cpu")
    message = str(info.value)
    assert "conv2.weight: checkpoint 8x8x3x3, model 8x8x5x5" in message and "changed since" in message
    assert "\n" not in message


@pytest.mark.parametrize("wrap", ["raw", "state_dict", "model", "module_prefix"])
def test_course_style_checkpoints_load_into_a_users_file(tmp_path: Path, wrap: str) -> None:
    file = _write(tmp_path, "lenet.py", WITHOUT_BN)
    spec = f"{file}:LeNet"
    from cifarctl.models.spec import build_model

    torch.manual_seed(7)
    weights = build_model(spec)[0].state_dict()
    saved = {"raw": weights, "state_dict": {"state_dict": weights, "epoch": 285},
             "model": {"model": weights}, "module_prefix": {f"module.{k}": v for k, v in weights.items()}}[wrap]
    torch.save(saved, tmp_path / "given.pt")
    loaded = load_model(spec, tmp_path / "given.pt")
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in weights.items())
    wrong = {**weights, "fc3.weight": torch.zeros(10, 42)}
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(CheckpointError, match=r"fc3\.weight: checkpoint 10x42, model 10x84"):
        load_model(spec, tmp_path / "wrong.pt")


def test_the_course_checkpoint_with_the_students_own_file_matches_the_builtin(tmp_path: Path) -> None:
    """The course's "load the given checkpoint" with the student's own ResNet-50 file gives exactly the built-in's."""
    from cifarctl.models import create_model, resnet

    source = inspect.getsource(resnet)
    source = source[:source.index("@register_model")].replace(
        "from cifarctl.models.registry import Recipe, register_model\n", "")
    file = _write(tmp_path, "my_resnet.py", source)
    torch.manual_seed(3)
    course = create_model("resnet50")
    for module in course.modules():  # trained-looking BatchNorm statistics
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    torch.save(course.state_dict(), tmp_path / "resnet50_285.pt")
    data = tiny_dataset()
    builtin = evaluate("resnet50", tmp_path / "resnet50_285.pt", data, device="cpu")
    mine = evaluate(f"{file}:ResNet50Course", tmp_path / "resnet50_285.pt", data, device="cpu")
    assert mine.accuracy == builtin.accuracy and mine.confusion == builtin.confusion
    assert mine.loss == builtin.loss  # the same model, layout and kernels: to the last bit


def test_a_checkpoint_never_imports_the_code_it_names(tmp_path: Path) -> None:
    """A checkpoint is data: the file its record names is not imported by evaluate, predict, export or runs."""
    pytest.importorskip("safetensors")
    side = _write(tmp_path / "theirs", "net.py", SIDE_EFFECT + WITHOUT_BN)
    mine = _write(tmp_path / "mine", "net.py", WITHOUT_BN)
    marker = side.with_suffix(".imported")
    from cifarctl.models.spec import build_model

    model, source = build_model(f"{mine}:LeNet")
    record = {**source.to_dict(), "spec": f"{side}:LeNet", "file": str(side)}
    save_checkpoint(tmp_path / "received.pt", {"model": model.state_dict(), "model_name": f"{side}:LeNet",
                                               "model_source": record,
                                               "config": {"model": f"{side}:LeNet", "model_options": {}}})
    assert not marker.exists()
    evaluate(f"{mine}:LeNet", tmp_path / "received.pt", tiny_dataset(), device="cpu")
    runner = CliRunner()
    result = runner.invoke(app, ["predict", f"{mine}:LeNet", "--ckpt", str(tmp_path / "received.pt"),
                                 str(_png(tmp_path / "red.png"))])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["export", f"{mine}:LeNet", "--ckpt", str(tmp_path / "received.pt"),
                                 "--format", "safetensors", "--out", str(tmp_path / "m.safetensors")])
    assert result.exit_code == 0, result.output
    assert not marker.exists()


EVIL_MODULE = '''
import os
from pathlib import Path

Path(os.environ["CIFARCTL_TEST_MARKER"]).write_text("evilmod was imported")


def make(**kwargs):
    import torch.nn as nn
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
'''


def _crafted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, Path, str]:
    """A genuine run of the user's LeNet file (``good``), and a copy of it (``crafted``) whose last.pt and
    config.json were rewritten to name ``evilmod:make``, a module on the path that writes a marker when
    imported, and re-sealed: its digest is in order (integrity is not origin)."""
    import shutil

    spec = f"{_write(tmp_path / 'mine', 'lenet.py', WITHOUT_BN)}:LeNet"
    good, crafted = tmp_path / "good", tmp_path / "crafted"
    train(_cfg(spec), tiny_dataset(), good)
    shutil.copytree(good, crafted)
    _write(tmp_path / "evil", "evilmod.py", EVIL_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path / "evil"))
    marker = tmp_path / "marker"
    monkeypatch.setenv("CIFARCTL_TEST_MARKER", str(marker))
    state = load_checkpoint(crafted / "last.pt")
    evil = {"spec": "evilmod:make", "kind": "module", "qualname": "make", "file": None, "sha256": None}
    state.update(model_name="evilmod:make", model_source=evil, config={**state["config"], "model": "evilmod:make"})
    save_checkpoint(crafted / "last.pt", state)
    config = json.loads((crafted / "config.json").read_text())
    (crafted / "config.json").write_text(json.dumps({**config, "model": "evilmod:make", "model_source": evil}))
    return good, crafted, marker, spec


def test_a_crafted_run_folder_makes_nothing_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run folder is data everywhere: resume() and --resume import a spec only when the caller names it."""
    from cifarctl.run.resume import load_run

    good, crafted, marker, spec = _crafted_run(tmp_path, monkeypatch)
    data = tiny_dataset()
    with pytest.raises(UsageError, match="cifarctl runs no code because a run folder names it"):
        resume(crafted, data)
    with pytest.raises(UsageError, match=r"not lenet.py:LeNet \(so its checkpoint says\): resuming it would import and run"):
        resume(crafted, data, model_spec=spec)
    # Read benign before the lock, crafted under it (the folder was swapped meanwhile): the second read is checked.
    with pytest.raises(UsageError, match="is a evilmod:make run"):
        resume(crafted, data, loaded=load_run(good), model_spec=spec)
    assert not marker.exists()
    runner, pt = CliRunner(), str(crafted / "last.pt")
    for args in (["train", spec, "--resume", str(crafted), "--data", "fake"],
                 ["train", "airbench", "--resume", str(crafted), "--data", "fake"],
                 ["train", "resnet50", "--resume", str(crafted), "--data", "fake"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert result.output.count("error:") == 1 and "Traceback" not in result.output
    for args in (["evaluate", spec, "--ckpt", pt, "--data", "fake", "--device", "cpu"],
                 ["predict", spec, "--ckpt", pt, str(_png(tmp_path / "red.png"))],
                 ["export", spec, "--ckpt", pt, "--format", "safetensors", "--out", str(tmp_path / "m.safetensors")],
                 ["runs", "--json"], ["runs", "evilmod:make"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output)
    assert not marker.exists()
    # A group of seeds whose summary.json names the module: data too.
    from cifarctl.run.group import GroupRecord, write_group
    from cifarctl.groups import resume_group

    group = tmp_path / "group"
    write_group(group, GroupRecord("evilmod:make", {**load_checkpoint(good / "last.pt")["config"],
                                                    "model": "evilmod:make"}, [0, 1]))
    with pytest.raises(UsageError, match="cifarctl runs no code because a run folder names it"):
        resume_group(group, data)
    for args, code in ((["train", spec, "--resume", str(group), "--data", "fake"], 2),
                       (["runs", str(group), "--json"], 0), (["runs", "--json"], 0)):
        result = runner.invoke(app, args)
        assert result.exit_code == code, (args, result.output)
    assert not marker.exists()
    # The one way in: the user names the code. Then it is theirs to run (here it does not fit the weights).
    with pytest.raises(CheckpointError, match="cannot be resumed"):
        resume(crafted, data, model_spec="evilmod:make")
    assert marker.exists()


def test_a_package_module_and_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path / "mypkg", "__init__.py", "")
    _write(tmp_path / "mypkg", "nets.py", WITH_BN)
    monkeypatch.syspath_prepend(str(tmp_path))
    data = tiny_dataset()
    result = train(_cfg("mypkg.nets:SmallResNet"), data, tmp_path / "pkg")
    assert result.global_step == 2 and result.run_dir.name == "pkg"
    assert evaluate("mypkg.nets:SmallResNet", tmp_path / "pkg" / "last.pt", data, device="cpu").images == 50
    notes: list[str] = []
    result = train(_cfg("torchvision:resnet18", max_steps=1, batch_size=16, eval=False), data, tmp_path / "tv",
                   notify=notes.append)
    assert result.global_step == 1
    assert any("stem shrinks" in note for note in notes)  # inspect's warning, at the start of training
    sys.modules.pop("mypkg.nets", None)


def test_train_and_evaluate_take_a_module_built_in_python(tmp_path: Path) -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))

    data = tiny_dataset()
    cfg = TrainConfig(model="my-notebook-net", epochs=1, max_steps=2, batch_size=50, device="cpu", amp=False)
    net = Net()
    result = train(cfg, data, tmp_path / "run", model=net)
    assert result.global_step == 2 and load_checkpoint(tmp_path / "run" / "last.pt")["model_source"]["kind"] == "instance"
    assert torch.equal(net.fc.weight, load_checkpoint(tmp_path / "run" / "last.pt")["model"]["fc.weight"])
    with pytest.raises(UsageError, match="model=a_fresh_instance"):
        resume(tmp_path / "run", data, {"max_steps": 3})
    again = Net()
    assert resume(tmp_path / "run", data, {"max_steps": 3}, model=again).global_step == 3
    from cifarctl.data.loader import DeviceLoader

    loader = DeviceLoader(data.test_images, data.test_labels, 25, torch.device("cpu"), train=False)
    assert evaluate_model(again, loader).images == 50


def test_train_help_is_grouped() -> None:
    result = CliRunner().invoke(app, ["train", "--help"])
    assert result.exit_code == 0
    headings = [line.rstrip(":") for line in result.output.splitlines() if line and not line.startswith(" ")
                and line.endswith(":")]
    assert headings[:9] == ["Arguments", "Model", "Schedule and optimizer", "Augmentation", "Evaluation", "Speed",
                            "Seeds", "Run and output", "Options"]
