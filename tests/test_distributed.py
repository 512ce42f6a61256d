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

from conftest import plain_cnn, tiny_dataset

if not is_model("ddp_test_cnn"):
    @register_model
    def ddp_test_cnn(num_classes: int = 10) -> nn.Module:
        """No BatchNorm and no dropout, so 2 ranks x 25 images compute what 1 x 50 does."""
        return plain_cnn(num_classes)


def _config():
    from cifarctl.engine import TrainConfig

    return TrainConfig(model="ddp_test_cnn", epochs=2, batch_size=50, device="cpu", eval_batch_size=20,
                       log_every=1, amp=False, seed=5)


def _micro_config():
    """Each rank's 25 images as chunks of 8, 8 and 9: only the last chunk's backward all-reduces."""
    import dataclasses

    return dataclasses.replace(_config(), micro_batch=10)


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
    from cifarctl import distributed as ddp
    from cifarctl.training.trainer import Trainer

    trainer = Trainer(config(), tiny_dataset(), Path(out))
    result = trainer.run()
    torch.save({"weights": trainer.model.state_dict(), "accuracy": result.test_accuracy},
               Path(out) / f"rank{rank}.pt")
    ddp.barrier()  # both ranks done before the group goes, as distributed_session does (gloo aborts otherwise)
    ddp.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(sys.platform == "win32", reason="gloo on POSIX")
@pytest.mark.parametrize("rank_config", [_config, _micro_config], ids=["whole", "micro-batches"])
def test_two_gloo_ranks_match_one_process(tmp_path: Path, rank_config) -> None:
    from cifarctl.training.trainer import Trainer

    single = Trainer(_config(), tiny_dataset(), tmp_path / "single").run()
    mp.spawn(_rank_main, args=(2, _free_port(), str(tmp_path / "ddp"), rank_config), nprocs=2, join=True)
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


def _load_on_rank(marker: Path) -> object:
    """The data loader a caller hands to train(): rank 0 writes a marker when done; rank 1 checks it is there."""
    import time

    import torch.distributed as dist

    rank = dist.get_rank()  # train() joined the process group before loading the data
    if rank == 0:
        time.sleep(0.5)  # a slow download: the other rank must wait for it
        marker.write_text("loaded")
    else:
        assert marker.read_text() == "loaded", "rank 1 loaded the data before rank 0 had finished"
    return tiny_dataset()


def _python_rank_main(rank: int, world_size: int, port: int, out: str) -> None:
    """A user's script under torchrun: it calls train() as it would alone, with no distributed code of its own."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), CIFARCTL_HOME=str(Path(out) / "home"))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from cifarctl.training import train

    marker = Path(out) / "loaded"
    result = train(_config(), lambda: _load_on_rank(marker))  # no out_dir: a new run folder, agreed by all ranks
    (Path(out) / f"rank{rank}.txt").write_text(f"{result.run_dir}\n{result.global_step}\n{dist.is_initialized()}")
    os._exit(0)  # what is under test is done and reported; skip the interpreter's teardown of gloo's threads


@pytest.mark.skipif(sys.platform == "win32", reason="gloo on POSIX")
def test_train_from_python_under_torchrun_sets_up_everything_itself(tmp_path: Path) -> None:
    mp.spawn(_python_rank_main, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    reports = [(tmp_path / f"rank{r}.txt").read_text().splitlines() for r in range(2)]
    assert reports[0][0] == reports[1][0]  # one run folder
    run = Path(reports[0][0])
    assert run.is_relative_to(tmp_path / "home") and (run / "last.pt").is_file()
    assert reports[0][1] == reports[1][1] == "8"
    assert reports[0][2] == reports[1][2] == "False"  # the process group it joined, it left
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["world_size"] == 2
