"""A model's own training hooks (cifarctl.models.hooks): called for a model that has them, never otherwise."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Mapping

import pytest
import torch
from torch import nn

from cifarctl.errors import UsageError
from cifarctl.models.hooks import HOOKS, ParameterGroup, call_hook, declared_groups, has_hook
from cifarctl.models.registry import is_model, register_model
from cifarctl.run.checkpoint import load_checkpoint
from cifarctl.run.config import TrainConfig
from cifarctl.training import Trainer, TrainingInterrupted, resume, train
from cifarctl.training.schedule import build_optimizer, build_scheduler

from conftest import StopAfterAdvances, tiny_dataset

CALLS: list[tuple[Any, ...]] = []  # what the hooked model's hooks received, in order


class HookedNet(nn.Module):
    """A user-style model with all three hooks: it records their calls, and acts as airbench94 does
    (sets a layer from the images, freezes a bias after ``freeze_after`` epochs, declares that bias)."""

    def __init__(self, num_classes: int = 10, freeze_after: int = 1) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, num_classes)
        self.freeze_after = freeze_after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.stem(x)).mean((2, 3)))

    def init_from_data(self, images: torch.Tensor, settings: Mapping[str, Any]) -> None:
        CALLS.append(("init", tuple(images.shape), images.dtype, round(float(images.mean()), 3)))
        with torch.no_grad():
            self.stem.weight.fill_(0.01)

    def on_epoch_start(self, epoch: int, settings: Mapping[str, Any]) -> None:
        CALLS.append(("epoch", epoch))
        self.stem.bias.requires_grad_(epoch < self.freeze_after)

    def parameter_groups(self, settings: Mapping[str, Any]) -> list[ParameterGroup]:
        return [ParameterGroup("stem_bias", (self.stem.bias,), train_epochs=self.freeze_after)]


class PlainNet(HookedNet):
    """The same network without a single hook (the names there, but nothing to call)."""

    init_from_data = None  # type: ignore[assignment]
    on_epoch_start = None  # type: ignore[assignment]
    parameter_groups = None  # type: ignore[assignment]


class BareNet(nn.Module):
    """The same layers, and not even the hooks' names."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, num_classes)

    forward = HookedNet.forward


if not is_model("hooked_test_net"):
    @register_model
    def hooked_test_net(num_classes: int = 10, freeze_after: int = 1) -> nn.Module:
        return HookedNet(num_classes, freeze_after)

    @register_model
    def plain_test_net(num_classes: int = 10) -> nn.Module:
        return PlainNet(num_classes)

    @register_model
    def bare_test_net(num_classes: int = 10) -> nn.Module:
        return BareNet(num_classes)


def _cfg(model: str, **overrides: Any) -> TrainConfig:
    values = dict(model=model, epochs=3, batch_size=50, device="cpu", eval_batch_size=50, amp=False, seed=4,
                  optimizer="sgd", lr=0.05, init_from_data=True)
    values.update(overrides)
    return TrainConfig(**values)


def test_a_model_with_hooks_gets_each_called_at_its_point(tmp_path: Path) -> None:
    CALLS.clear()
    train(_cfg("hooked_test_net"), tiny_dataset(), tmp_path / "run")
    init = [c for c in CALLS if c[0] == "init"]
    assert len(init) == 1 and CALLS[0] == init[0]  # once, before the first epoch
    _, shape, dtype, mean = init[0]
    assert shape == (200, 3, 32, 32) and dtype == torch.float32  # all 200 training images (fewer than 5000)
    assert abs(mean) < 3  # normalised, not raw 0-255 pixels
    assert [c for c in CALLS if c[0] == "epoch"] == [("epoch", 0), ("epoch", 1), ("epoch", 2)]
    weights = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    assert not torch.equal(weights["stem.weight"], torch.full_like(weights["stem.weight"], 0.01))  # then trained


def test_the_epoch_hook_freezes_what_it_says(tmp_path: Path) -> None:
    CALLS.clear()
    bias_after: list[torch.Tensor] = []
    train(_cfg("hooked_test_net", epochs=1), tiny_dataset(), tmp_path / "one")
    bias_after.append(load_checkpoint(tmp_path / "one" / "last.pt")["model"]["stem.bias"])
    train(_cfg("hooked_test_net", epochs=3), tiny_dataset(), tmp_path / "three")
    three = load_checkpoint(tmp_path / "three" / "last.pt")["model"]
    assert torch.equal(three["stem.bias"], bias_after[0])  # trained in epoch 1 only, frozen after
    assert not torch.equal(three["head.weight"], load_checkpoint(tmp_path / "one" / "last.pt")["model"]["head.weight"])


def test_init_from_data_needs_the_recipe_and_a_fresh_start(tmp_path: Path) -> None:
    data = tiny_dataset()
    CALLS.clear()
    train(_cfg("hooked_test_net", init_from_data=False, epochs=1), data, tmp_path / "off")
    assert not [c for c in CALLS if c[0] == "init"] and ("epoch", 0) in CALLS
    CALLS.clear()
    train(_cfg("hooked_test_net", epochs=1, init_ckpt=str(tmp_path / "off" / "last.pt")), data, tmp_path / "ckpt")
    assert not [c for c in CALLS if c[0] == "init"]  # weights from a checkpoint are not set again
    stop = threading.Event()
    CALLS.clear()
    with pytest.raises(TrainingInterrupted):
        train(_cfg("hooked_test_net", epochs=2), data, tmp_path / "run", progress=StopAfterAdvances(stop, 6), stop=stop)
    assert [c[0] for c in CALLS].count("init") == 1
    CALLS.clear()
    resume(tmp_path / "run", data)
    assert not [c for c in CALLS if c[0] == "init"] and CALLS[0] == ("epoch", 1)  # the resumed epoch's hook


def test_a_model_without_hooks_is_untouched(tmp_path: Path) -> None:
    plain = PlainNet()
    assert not any(has_hook(plain, name) for name in HOOKS)
    assert call_hook(plain, "on_epoch_start", 0, {}) is None and declared_groups(plain, {}) == []
    muon = dict(init_from_data=False, optimizer="muon", lr_units="sum", lr=0.01, lr_schedule="linear")
    data = tiny_dataset()
    trainers = {name: Trainer(_cfg(name, **muon), data, tmp_path / name) for name in ("plain_test_net", "bare_test_net")}
    for trainer in trainers.values():
        trainer.run()
    # Nothing frozen (the hooked net's stem bias stops after its first epoch), no group set apart ...
    assert all(p.requires_grad for p in trainers["plain_test_net"].model.parameters())
    state = load_checkpoint(tmp_path / "plain_test_net" / "last.pt")
    assert [g["name"] for g in state["optimizer"]["param_groups"]] == ["filters", "head", "other_bias"]
    # ... and the weights those of the same layers without even the hooks' names: trained exactly alike.
    bare = load_checkpoint(tmp_path / "bare_test_net" / "last.pt")["model"]
    assert all(torch.equal(state["model"][k], bare[k]) for k in bare) and state["model"].keys() == bare.keys()
    hooked = Trainer(_cfg("hooked_test_net", **muon), data, tmp_path / "hooked")
    hooked.run()
    assert not hooked.model.stem.bias.requires_grad  # what the hooks would have done: the test can tell
    with pytest.raises(UsageError, match="--init-from-data applies to models that set themselves from the training"):
        train(_cfg("plain_test_net"), data, tmp_path / "init")


def test_declared_groups_go_apart_under_muon_and_reach_zero_when_they_stop() -> None:
    cfg = _cfg("hooked_test_net", optimizer="muon", lr_units="sum", lr=0.01, lr_schedule="linear",
               model_options={"freeze_after": 2}, epochs=4)
    model = HookedNet(freeze_after=2)
    optimizer = build_optimizer(cfg, model)
    names = [g["name"] for g in optimizer.param_groups]
    assert names == ["filters", "head", "stem_bias", "other_bias"]  # before the rest of its ordinary group
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch=10)
    lrs = []
    for _ in range(40):
        lrs.append({g["name"]: g["lr"] for g in optimizer.param_groups})
        optimizer.step()
        scheduler.step()
    assert lrs[19]["stem_bias"] > 0 and lrs[20]["stem_bias"] == 0 and lrs[30]["stem_bias"] == 0  # 2 epochs of 10
    assert lrs[30]["other_bias"] > 0
    plain = build_optimizer(cfg, PlainNet())
    assert [g["name"] for g in plain.param_groups] == ["filters", "head", "other_bias"]
