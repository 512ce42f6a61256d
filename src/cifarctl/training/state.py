"""What a checkpoint holds of a run in training, and how a resumed run takes it back, exactly.

One dict (torchvision's reference scripts' layout): the model, optimizer, scheduler, grad scaler and
lookahead states, where the loop stands (epoch, step), every rank's RNG state, the config, the running
train metrics, the best accuracy so far and the evaluations' results.
"""

from __future__ import annotations

from typing import Any

import torch

from cifarctl import distributed as ddp
from cifarctl.errors import CheckpointError
from cifarctl.training.plan import BudgetPlan

# The functions below take the ``training.trainer.Trainer`` whose run they save or restore (typed
# ``Any`` here: this module sits below the trainer, which imports it).
Trainer = Any


def rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    elif device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
    elif device.type == "mps" and "mps" in state:
        torch.mps.set_rng_state(state["mps"])


def capture(trainer: Trainer) -> dict[str, Any]:
    """The checkpoint of ``trainer`` as it stands. Every rank calls it: it gathers their RNG states."""
    rng = rng_state(trainer.device)
    rngs = ddp.gather_objects(rng) if trainer.dist.enabled else [rng]  # every rank's (by rank) under DDP
    return {
        "model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "scaler": trainer.scaler.state_dict() if trainer.scaler else None,
        "model_name": trainer.cfg.model, "model_source": trainer.source.to_dict(), "epoch": trainer.epoch, "step_in_epoch": trainer.step_in_epoch,
        "global_step": trainer.global_step, "world_size": trainer.dist.world_size,
        "rng": rngs[0] if len(rngs) == 1 else rngs,
        "config": trainer.cfg.to_dict(), "running": trainer.running.state_dict(),
        "best_accuracy": trainer.best_accuracy, "metrics": _metrics_summary(trainer),
        "lookahead": trainer.lookahead.state_dict() if trainer.lookahead else None,
        "last_train": list(trainer.last_train), "best_selected_on": trainer.best_selected_on,
        "classes": list(trainer.data.classes), "budget": trainer.plan.to_dict() if trainer.plan else None,
    }


def _metrics_summary(trainer: Trainer) -> dict[str, Any]:
    out: dict[str, Any] = {"seconds": round(trainer.elapsed(), 3), "epochs": trainer.epochs_trained()}
    if trainer.last_eval is not None:
        out.update(test_accuracy=trainer.last_eval.accuracy, test_loss=trainer.last_eval.loss,
                   tta=trainer.last_eval.extra.get("tta_level", 0))
    if trainer.last_val is not None:
        out.update(val_accuracy=trainer.last_val.accuracy, val_loss=trainer.last_val.loss)
    if trainer.best_test is not None:
        out.update(best_test_accuracy=trainer.best_test.accuracy, best_test_loss=trainer.best_test.loss)
    return out


def restore(trainer: Trainer, state: dict[str, Any]) -> None:
    """Put ``trainer`` where the checkpoint ``state`` left its run, and drop the log records after it."""
    try:
        trainer.model.load_state_dict(state["model"])  # a model fills in what older checkpoints lack
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.scheduler.load_state_dict(state["scheduler"])
        if trainer.scaler is not None and state.get("scaler"):
            trainer.scaler.load_state_dict(state["scaler"])
        trainer.epoch, trainer.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
        trainer.global_step = trainer.folder.saved_step = int(state["global_step"])
        if trainer.dist.is_main:  # the sums cover all ranks; rank 0 carries them on
            trainer.running.load_state_dict(state["running"])
        trainer.best_accuracy = state.get("best_accuracy")
        if state.get("budget"):
            trainer.plan = BudgetPlan(**{k: v for k, v in state["budget"].items() if k != "epochs"})
        if trainer.lookahead is not None:
            trainer.lookahead.load_state_dict(state["lookahead"])
        trainer.last_train = tuple(state.get("last_train") or trainer.last_train)  # type: ignore[assignment]
        trainer.stored_metrics = dict(state.get("metrics") or {})
        trainer.elapsed_before = float(trainer.stored_metrics.get("seconds") or 0.0)
        _restore_rng(trainer, state)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{trainer.run_dir / 'last.pt'} cannot be resumed ({exc})") from None
    trainer.folder.drop_records_after(trainer.global_step)


def _restore_rng(trainer: Trainer, state: dict[str, Any]) -> None:
    saved, world = int(state.get("world_size", 1)), trainer.dist.world_size
    rng = state["rng"]
    if saved == world:
        set_rng_state(rng[trainer.dist.rank] if isinstance(rng, list) else rng, trainer.device)
        return
    trainer.notices.append(
        f"the checkpoint was written by {saved} process(es), this run has {world}: the data "
        "order, augmentation and global batches continue exactly (--batch-size is global), but dropout "
        "randomness starts afresh, so the result will not be bit-identical to an uninterrupted run")
