"""What a resumed run continues with: its own checkpoint and settings, and the few a resume may change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cifarctl.errors import CheckpointError, UsageError
from cifarctl.run.checkpoint import load_checkpoint
from cifarctl.run.config import TrainConfig

# Settings that may change when a run is resumed: none of them alters the part already trained.
RESUMABLE = frozenset({"epochs", "device", "max_steps", "eval", "save_every", "log_every", "tensorboard",
                       "keep_memory"})


def load_run(run_dir: Path) -> tuple[TrainConfig, dict[str, Any]]:
    """The config and last checkpoint of the run in ``run_dir``."""
    state = load_checkpoint(run_dir / "last.pt")
    if "config" not in state or "optimizer" not in state:
        raise CheckpointError(f"{run_dir / 'last.pt'} is a weights-only checkpoint; it cannot be resumed "
                              "(use --ckpt to start from its weights)")
    return TrainConfig.from_dict(state["config"]), state


def resume_config(run_dir: Path, model: str | None = None, overrides: dict[str, Any] | None = None,
                  loaded: tuple[TrainConfig, dict[str, Any]] | None = None) -> TrainConfig:
    """The config a resumed run continues with: the run's own, plus the overrides it allows.

    A ``model`` other than the run's, or an override of a setting that shaped the finished part
    (``--lr``, ``--batch-size``, ``--data`` ...), is refused with the names of what differs.
    """
    cfg, _ = loaded or load_run(run_dir)
    if model is not None and model != cfg.model:
        raise UsageError(f"{run_dir} is a {cfg.model} run, not {model}: "
                         f"resume it with `cifarctl train {cfg.model} --resume {run_dir}`")
    stored = cfg.to_dict()
    changed = sorted(k for k, v in (overrides or {}).items()
                     if v is not None and k not in RESUMABLE and k in stored and stored[k] != v)
    if changed:
        flags = ", ".join(f"--{k.replace('_', '-')}" for k in changed)
        raise UsageError(f"{flags} cannot change when a run is resumed (the run was trained with "
                         f"{', '.join(f'{k}={stored[k]!r}' for k in changed)}); drop them, or start a new run "
                         "with --ckpt to fine-tune from its weights")
    stored.update({k: v for k, v in (overrides or {}).items() if k in RESUMABLE and v is not None})
    return TrainConfig.from_dict(stored)
