"""Device choice: the auto order (CUDA, MPS, CPU), MPS refusals and precision, with the device simulated.

No Apple GPU is on the machines these tests run on: MPS availability, its bf16 support and its RNG
are patched; what is tested is cifarctl's side of each decision.
"""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest
import torch

from cifarctl import device as dev
from cifarctl.run.checkpoint import load_checkpoint, on_cpu, save_checkpoint
from cifarctl.errors import DeviceError


@pytest.fixture()
def machine(monkeypatch: pytest.MonkeyPatch):
    """``machine(cuda=..., mps=..., built=...)`` patches what the torch build and the host offer."""

    def set_up(cuda: bool = False, mps: bool = False, built: bool = True) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(dev, "mps_available", lambda: mps)
        monkeypatch.setattr(dev, "mps_built", lambda: built)

    return set_up


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (True, False, "cuda"),
                                                 (False, True, "mps"), (False, False, "cpu")])
def test_auto_prefers_cuda_then_mps_then_cpu(machine, cuda: bool, mps: bool, expected: str) -> None:
    machine(cuda=cuda, mps=mps)
    assert dev.resolve_device("auto").type == expected
    assert dev.resolve_device("").type == expected


def test_mps_is_resolved_when_there(machine) -> None:
    machine(mps=True)
    assert dev.resolve_device("mps") == torch.device("mps")
    assert dev.resolve_device("MPS:0") == torch.device("mps:0")
    with pytest.raises(DeviceError, match="one Apple GPU"):
        dev.resolve_device("mps:1")


def test_mps_refusals_say_why_in_one_line(machine) -> None:
    machine(mps=False, built=False)
    with pytest.raises(DeviceError, match="this torch has no MPS support") as info:
        dev.resolve_device("mps")
    assert "\n" not in str(info.value)
    machine(mps=False, built=True)
    with pytest.raises(DeviceError, match="no Apple GPU is visible"):
        dev.resolve_device("mps")
    with pytest.raises(DeviceError, match="auto, cpu, cuda, cuda:N or mps"):
        dev.resolve_device("tpu")


@pytest.mark.parametrize("bf16, expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_mps_autocast_is_bf16_where_the_gpu_has_it(monkeypatch: pytest.MonkeyPatch, bf16: bool,
                                                   expected: torch.dtype) -> None:
    monkeypatch.setattr(dev, "mps_supports_bf16", lambda: bf16)
    monkeypatch.setattr(torch.amp, "is_autocast_available", lambda kind: kind in ("cpu", "cuda", "mps"))
    mps = torch.device("mps")
    assert dev.autocast_dtype(mps, amp=True) == expected
    assert dev.needs_grad_scaler(expected) == (expected == torch.float16)  # fp16 needs loss scaling, bf16 not
    assert dev.autocast_dtype(mps, amp=False) is None                        # --no-amp: fp32
    monkeypatch.setattr(torch.amp, "is_autocast_available", lambda kind: kind != "mps")
    assert dev.autocast_dtype(mps, amp=True) is None                         # a torch without MPS autocast


def test_cpu_and_cuda_precision_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert dev.autocast_dtype(torch.device("cuda"), True) == torch.float16
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: True)
    assert dev.autocast_dtype(torch.device("cpu"), True) == torch.bfloat16
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: False)
    assert dev.autocast_dtype(torch.device("cpu"), True) is None


def test_channels_last_default_follows_the_measurements(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert dev.default_channels_last(torch.device("cuda"), torch.bfloat16)
    assert dev.default_channels_last(cpu, torch.bfloat16)
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: True)
    assert not dev.default_channels_last(cpu, None)      # fp32 on a bf16 CPU (--no-amp): measured slower
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: False)
    assert dev.default_channels_last(cpu, None)          # fp32 on an AVX2 CPU: measured 1.16-1.44x faster
    assert not dev.default_channels_last(torch.device("mps"), torch.bfloat16)


def test_torchrun_refuses_mps(monkeypatch: pytest.MonkeyPatch) -> None:
    from cifarctl import distributed as ddp

    monkeypatch.setattr(ddp, "launched_by_torchrun", lambda: True)
    with pytest.raises(DeviceError, match="no distributed backend for MPS"):
        ddp.init_distributed(torch.device("mps"))


def test_compile_is_refused_on_mps(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from cifarctl.engine import TrainConfig
    from cifarctl.training.trainer import Trainer
    from cifarctl.errors import UsageError

    from conftest import tiny_dataset

    train_module = __import__("importlib").import_module("cifarctl.training.trainer")
    monkeypatch.setattr(train_module, "resolve_device", lambda spec: torch.device("mps"))
    with pytest.raises(UsageError, match="--compile"):
        Trainer(TrainConfig(model="resnet50", device="mps", compile=True), tiny_dataset(), tmp_path / "run")


def test_an_mps_checkpoint_is_written_from_the_cpu_side_and_loads_on_cpu(monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path) -> None:
    train_module = __import__("importlib").import_module("cifarctl.training.state")
    mps_state = torch.arange(8, dtype=torch.uint8)
    restored: list[torch.Tensor] = []
    monkeypatch.setattr(torch.mps, "get_rng_state", lambda: mps_state.clone())
    monkeypatch.setattr(torch.mps, "set_rng_state", lambda state: restored.append(state))
    rng = train_module.rng_state(torch.device("mps"))
    assert torch.equal(rng["mps"], mps_state)

    weight = mock.MagicMock(spec=torch.Tensor)                 # a tensor that lives on the Apple GPU
    weight.device = torch.device("mps")
    weight.detach.return_value.cpu.return_value = torch.ones(3)
    converted = on_cpu({"model": {"w": weight}, "rng": rng, "steps": [torch.zeros(1)], "epoch": 2})
    assert torch.equal(converted["model"]["w"], torch.ones(3)) and converted["epoch"] == 2

    save_checkpoint(tmp_path / "last.pt", converted)
    loaded = load_checkpoint(tmp_path / "last.pt")              # on a machine without MPS
    assert loaded["model"]["w"].device.type == "cpu" and torch.equal(loaded["rng"]["mps"], mps_state)
    train_module.set_rng_state(loaded["rng"], torch.device("mps"))
    assert torch.equal(restored[0], mps_state)


def test_cli_device_mps_on_a_machine_without_it_is_one_line(cached, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from cifarctl.cli import app

    monkeypatch.setattr(dev, "mps_built", lambda: False)
    for command in (["train", "resnet50", "--device", "mps", "--offline", "--max-steps", "1"],
                    ["evaluate", "resnet50", "--device", "mps", "--offline", "--ckpt", "missing.pt"]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code != 0, command
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and "no MPS support" in lines[0] and "Traceback" not in result.output, result.output
