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
# Of those, the ones that change no result, only how a run goes: a group resumed with them keeps its finished
# seeds as they are (the others, epochs, max_steps and eval, send its finished seeds on to the new setting).
HOW_IT_RUNS = frozenset({"device", "save_every", "log_every", "tensorboard", "keep_memory"})


# What a run fixes itself when it starts, over what it was asked: the schedule's length (unless asked for),
# and under a time budget its length and final TTA level (``Trainer._apply_plan``).
FIXED_AT_START = ("schedule_steps",)
FIXED_BY_BUDGET = ("epochs", "max_steps", "tta")


def unlike(asked: TrainConfig, trained: TrainConfig, ignore: frozenset[str] = RESUMABLE) -> list[str]:
    """The settings in which a run ``trained`` with its stored config differs from one ``asked`` for: what the run
    fixed itself where ``asked`` left it open, and the ``ignore``d ones (default: what a resume may change), not
    counted. Usage: ``unlike(group_seed_config, load_run(folder)[0])``"""
    mine, theirs = asked.to_dict(), trained.to_dict()
    fixed = {k for k in FIXED_AT_START if mine.get(k) is None}
    if asked.time_budget is not None:
        fixed |= set(FIXED_BY_BUDGET)
    return sorted(k for k in mine.keys() | theirs.keys()
                  if k not in ignore and k not in fixed and mine.get(k) != theirs.get(k))


def load_run(run_dir: Path) -> tuple[TrainConfig, dict[str, Any]]:
    """The config and last checkpoint of the run in ``run_dir``."""
    state = load_checkpoint(run_dir / "last.pt")
    if "config" not in state or "optimizer" not in state:
        raise CheckpointError(f"{run_dir / 'last.pt'} is a weights-only checkpoint; it cannot be resumed "
                              "(use --ckpt to start from its weights)")
    return TrainConfig.from_dict(state["config"]), state


def check_named(run_dir: Path, cfg: TrainConfig, named: str | None) -> None:
    """Refuse, in one line, to resume a run whose model the caller did not name.

    A run folder is data: its checkpoint may be one anybody re-sealed, so the model it names is built
    only when it is a registered one, or the very spec the caller names (``named``: the command line's
    MODEL, ``resume(model_spec=...)``). A spec is code, and building it imports and runs that code.
    """
    from cifarctl.models.spec import canonical_spec, display_name, is_spec

    if named is not None and canonical_spec(named) != cfg.model:
        also = (f": resuming it would import and run that code, so name it only if you trust it: `cifarctl "
                f"train {cfg.model} --resume {run_dir}`" if is_spec(cfg.model) else
                f": resume it with `cifarctl train {cfg.model} --resume {run_dir}`")
        raise UsageError(f"{run_dir} is a {display_name(cfg.model)} run, not {display_name(named)} (so its "
                         f"checkpoint says){also}")
    if named is None and is_spec(cfg.model):
        raise UsageError(f"{run_dir} trained {display_name(cfg.model)}, code of your own that resuming imports and "
                         f"runs; cifarctl runs no code because a run folder names it: name it, if you trust it, with "
                         f"`cifarctl train {cfg.model} --resume {run_dir}` (in Python: resume(run_dir, "
                         f"model_spec={cfg.model!r}))")


def resume_config(run_dir: Path, model: str | None = None, overrides: dict[str, Any] | None = None,
                  loaded: tuple[TrainConfig, dict[str, Any]] | None = None) -> TrainConfig:
    """The config a resumed run continues with: the run's own, plus the overrides it allows.

    ``model``: what the caller names (see ``check_named``): a run of another model, or of a spec the
    caller does not name, is refused; so is an override of a setting that shaped the finished part
    (``--lr``, ``--batch-size``, ``--data`` ...), with the names of what differs.
    """
    cfg, _ = loaded or load_run(run_dir)
    check_named(run_dir, cfg, model)
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
