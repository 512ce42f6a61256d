"""DDP on CPU: two gloo processes end with identical weights, equal to one process on the same global batch."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from cifarctl.models.registry import is_model, register_model

from conftest import tiny_dataset

if not is_model("ddp_test_cnn"):
    @register_model
    def ddp_test_cnn(num_classes: int = 10) -> nn.Module:
        """No BatchNorm and no dropout, so 2 ranks x 25 images compute what 1 x 50 does."""
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten(),
                             nn.Linear(8 * 8 * 8, num_classes))


def _config():
    from cifarctl.engine import TrainConfig

    return TrainConfig(model="ddp_test_cnn", epochs=2, batch_size=50, device="cpu", eval_batch_size=20,
                       log_every=1, amp=False, seed=5)


def _airbench_config():
    from cifarctl.engine import TrainConfig

    # 4 epochs: the whitening bias stops training after 3, so DDP sees a parameter go quiet.
    return TrainConfig.for_model("airbench94", epochs=4, batch_size=50, device="cpu", eval_batch_size=25,
                                 amp=False, seed=5)


def _rank_main(rank: int, world_size: int, port: int, out: str, config=_config) -> None:
    """What torchrun starts on each rank, with its environment."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from cifarctl.engine import distributed as ddp
    from cifarctl.engine.train import Trainer

    trainer = Trainer(config(), tiny_dataset(), Path(out))
    result = trainer.run()
    torch.save({"weights": trainer.model.state_dict(), "accuracy": result.test_accuracy},
               Path(out) / f"rank{rank}.pt")
    ddp.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(sys.platform == "win32", reason="gloo on POSIX")
def test_two_gloo_ranks_match_one_process(tmp_path: Path) -> None:
    from cifarctl.engine.train import Trainer

    single = Trainer(_config(), tiny_dataset(), tmp_path / "single").run()
    mp.spawn(_rank_main, args=(2, _free_port(), str(tmp_path / "ddp")), nprocs=2, join=True)
    one = torch.load(tmp_path / "single" / "last.pt", weights_only=True)
    two = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    assert two["world_size"] == 2 and isinstance(two["rng"], list) and len(two["rng"]) == 2
    assert two["global_step"] == one["global_step"] == 8
    for key, value in one["model"].items():
        assert torch.allclose(value, two["model"][key], atol=1e-5, rtol=1e-4), key
    ranks = [torch.load(tmp_path / "ddp" / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert all(torch.equal(ranks[0]["weights"][k], ranks[1]["weights"][k]) for k in ranks[0]["weights"])
    assert ranks[0]["accuracy"] == ranks[1]["accuracy"] == pytest.approx(single.test_accuracy)


@pytest.mark.skipif(sys.platform == "win32", reason="gloo on POSIX")
def test_airbench94_recipe_under_ddp_keeps_the_ranks_in_step(tmp_path: Path) -> None:
    mp.spawn(_rank_main, args=(2, _free_port(), str(tmp_path / "ddp"), _airbench_config), nprocs=2, join=True)
    state = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    assert state["global_step"] == 16 and state["lookahead"] is not None
    ranks = [torch.load(tmp_path / "ddp" / f"rank{r}.pt", weights_only=True) for r in range(2)]
    trained = [k for k in ranks[0]["weights"] if "running" not in k and "num_batches" not in k]
    assert all(torch.equal(ranks[0]["weights"][k], ranks[1]["weights"][k]) for k in trained)
