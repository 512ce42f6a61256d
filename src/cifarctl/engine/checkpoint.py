"""Checkpoints: one dict, written atomically, read with ``weights_only=True``.

A cifarctl checkpoint holds ``model`` (state_dict), ``optimizer``, ``scheduler``, ``model_name``,
``epoch`` (completed epochs), ``step_in_epoch``, ``global_step``, ``world_size``, RNG states,
``config``, ``metrics``, ``cifarctl_version`` and ``format``. A course checkpoint is a raw
state_dict (``torch.save(model.state_dict())``); both load through ``load_checkpoint``.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cifarctl import __version__, paths
from cifarctl.atomic import atomic_path
from cifarctl.errors import CheckpointError

FORMAT_VERSION = 1


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (a crash leaves the previous file intact)."""
    state = {**state, "format": FORMAT_VERSION, "cifarctl_version": __version__}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Read a checkpoint to CPU. A raw state_dict comes back as ``{"model": sd, "model_name": None}``.

    Files that would need to run code to load are refused (``weights_only=True``), never executed.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found:
            raise CheckpointError(f"{path} holds Python objects ({found.group(1)}) that would run code on load; "
                                  "refusing it (save only tensors: torch.save(model.state_dict(), f))") from None
        raise CheckpointError(f"{path} is not a readable checkpoint (not a torch.save file)") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint; is it truncated? ({first})") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        return obj
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {"model": obj, "model_name": None}
    raise CheckpointError(f"{path} is neither a cifarctl checkpoint nor a state_dict")


def _strip_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop DataParallel/DDP's ``module.`` and torch.compile's ``_orig_mod.`` prefixes."""
    out = {}
    for key, value in state_dict.items():
        for prefix in ("module.", "_orig_mod."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def _guess_architecture(keys: set[str]) -> str | None:
    from cifarctl.models import create_model, list_models

    with torch.device("meta"):
        for name in list_models():
            if set(create_model(name).state_dict()) == keys:
                return name
    return None


def load_weights(model: nn.Module, model_name: str, checkpoint: dict[str, Any], source: Path | str) -> None:
    """Load ``checkpoint["model"]`` into ``model`` strictly, with a message that says what does not fit."""
    state_dict = _strip_prefix(checkpoint["model"])
    saved_name = checkpoint.get("model_name")
    if saved_name and saved_name != model_name:
        raise CheckpointError(f"{source} is a {saved_name} checkpoint, not {model_name}: "
                              f"use `{saved_name}` or another checkpoint")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        guess = _guess_architecture(set(state_dict))
        if guess and guess != model_name:
            raise CheckpointError(f"{source} is a {guess} checkpoint, not {model_name}: use `{guess}`")
        detail = "; ".join(part for part in (
            f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}" if missing else "",
            f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}" if unexpected else "",
        ) if part)
        raise CheckpointError(f"{source} does not fit {model_name} ({len(missing)} missing, "
                              f"{len(unexpected)} unexpected keys: {detail})")
    for key, tensor in expected.items():
        if tuple(state_dict[key].shape) != tuple(tensor.shape):
            raise CheckpointError(f"{source} does not fit {model_name}: {key} has shape "
                                  f"{list(state_dict[key].shape)}, the model expects {list(tensor.shape)}")
    model.load_state_dict(state_dict, strict=True)


def find_latest(model_name: str, file: str = "last.pt") -> Path:
    """The newest ``file`` of ``model_name``'s runs (under the checkpoints root, or indexed ``--out`` runs)."""
    from cifarctl.engine.runs import run_checkpoints

    root = paths.runs_root() / model_name
    candidates = sorted(run_checkpoints(model_name, file), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise CheckpointError(f"no {model_name} checkpoint under {root}: train one with "
                              f"`cifarctl train {model_name}` or pass --ckpt FILE")
    return candidates[-1]
