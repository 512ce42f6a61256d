"""Checkpoints: one dict, written atomically, read with ``weights_only=True``.

A cifarctl checkpoint holds ``model`` (state_dict), ``optimizer``, ``scheduler``, ``model_name``,
``epoch`` (completed epochs), ``step_in_epoch``, ``global_step``, ``world_size``, RNG states,
``config``, ``metrics``, ``cifarctl_version`` and ``format``. A course checkpoint is a raw
state_dict (``torch.save(model.state_dict())``); both load through ``load_checkpoint``.
"""

from __future__ import annotations

import errno
import hashlib
import pickle
import re
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cifarctl import __version__, paths
from cifarctl.atomic import atomic_path
from cifarctl.errors import CheckpointError, FileSystemError, describe_os_error, first_line, os_error_cause

FORMAT_VERSION = 1


DIGEST_TAG = b"cifarctl-sha256:"
_EOCD = b"PK\x05\x06"  # the zip's end-of-central-directory record; its last field is the comment length


def on_cpu(value: Any) -> Any:
    """``value`` with every tensor in it on the CPU, so a checkpoint written on a GPU loads anywhere."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu() if value.device.type != "cpu" else value
    if isinstance(value, dict):
        return {k: on_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(on_cpu(v) for v in value)
    return value


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (a crash leaves the previous file intact), sealed with a digest.

    Tensors are written from the CPU side, whatever device they live on.
    """
    state = {**on_cpu(state), "format": FORMAT_VERSION, "cifarctl_version": __version__}
    try:
        with atomic_path(path) as tmp:
            # Through a Python file: a failed write then raises the system's OSError (torch.save to a
            # path reports a full disk only as "unexpected pos" from its zip writer).
            with open(tmp, "wb") as fh:
                torch.save(state, fh)
            _seal(tmp)
    except (OSError, RuntimeError) as exc:
        cause = os_error_cause(exc) or _disk_full(Path(path))
        if cause is None:
            raise
        raise FileSystemError(describe_os_error(cause, f"cannot write the checkpoint {path}"), cause.errno) from exc
    return Path(path)


def _disk_full(path: Path) -> OSError | None:
    """ENOSPC when ``path``'s file system has (almost) no room left: a writer's error that hid its cause."""
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return None
    return OSError(errno.ENOSPC, "No space left on device") if free < (1 << 20) else None


def _file_sha256(path: Path, length: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while length > 0:
            chunk = fh.read(min(1 << 20, length))
            if not chunk:
                break
            digest.update(chunk)
            length -= len(chunk)
    return digest.hexdigest()


def _seal(path: Path) -> None:
    """Put the sha256 of every byte before it into the zip's comment.

    The zip's CRCs cover each record's data but not its headers; this digest covers the whole
    file, so a damaged byte anywhere is found. Readers ignore the comment.
    """
    size = path.stat().st_size
    with open(path, "rb") as fh:
        fh.seek(max(size - 22, 0))
        tail = fh.read()
    if not tail.startswith(_EOCD) or tail[-2:] != b"\0\0":
        return  # not the zip layout torch writes (no comment yet): leave it to the CRCs
    comment = DIGEST_TAG + _file_sha256(path, size - 2).encode()
    with open(path, "r+b") as fh:
        fh.seek(size - 2)
        fh.write(len(comment).to_bytes(2, "little") + comment)


def verify_container(path: Path) -> None:
    """Check a checkpoint file before anything unpickles it: a regular file; for torch's zip format
    (every ``torch.save`` since 1.6) every record's CRC-32; and for cifarctl's own checkpoints the
    sha256 of the whole file, recorded in the zip comment when it was saved.

    ``torch.load`` does not check the CRCs, so without this a damaged copy loads as a model that
    did not learn. Reading 60 MB for it takes about 0.1 s. Older (non-zip) ``torch.save`` files
    have no checksums; they are read as they are.
    """
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file: give the .pt file inside it "
                              "(e.g. last.pt or best.pt)")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a regular file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty: not a checkpoint")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head[:1] == b"\x80" and head != b"PK\x03\x04":  # a pickle: torch.save's format before 1.6
        return
    if head != b"PK\x03\x04":
        raise CheckpointError(f"{path} is not a checkpoint (not a torch.save file)")
    try:
        with zipfile.ZipFile(path) as archive:
            names, comment = archive.namelist(), archive.comment
            if comment.startswith(DIGEST_TAG):  # cifarctl's own: a digest of every byte before the comment
                recorded = comment[len(DIGEST_TAG):].decode("ascii", errors="replace")
                if _file_sha256(path, path.stat().st_size - len(comment) - 2) != recorded:
                    raise CheckpointError(f"{path} is damaged: its sha256 does not match the one recorded when it "
                                          "was saved; copy it again from where it came from")
            elif comment:  # torch.save writes none: a comment that is not our digest is one that was damaged
                raise CheckpointError(f"{path} is damaged: the sha256 recorded when it was saved does not read; "
                                      "copy it again from where it came from")
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is truncated or damaged: its zip structure does not read ({exc})") from None
    if bad is not None:
        raise CheckpointError(f"{path} is damaged: the checksum (CRC-32) of its record {bad} does not match; "
                              "copy it again from where it came from")
    if not any(name.endswith("/data.pkl") or name == "data.pkl" for name in names):
        raise CheckpointError(f"{path} is a zip file, but not a torch.save checkpoint (no data.pkl in it)")


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Read a checkpoint to CPU. A raw state_dict, or one wrapped as ``{"state_dict": sd, ...}``, comes back as
    ``{"model": sd, "model_name": None}``.

    The file is checked first (``verify_container``); then it is read with ``weights_only=True``,
    so files that would need to run code to load are refused, never executed.
    """
    path = Path(path).expanduser()
    verify_container(path)
    try:
        with warnings.catch_warnings():  # torch warns about odd pickle protocols: the one line below says it
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found:
            raise CheckpointError(f"{path} holds Python objects ({found.group(1)}) that would run code on load; "
                                  "refusing it (save only tensors: torch.save(model.state_dict(), f))") from None
        raise CheckpointError(f"{path} is not a checkpoint (not a torch.save file)") from None
    except Exception as exc:  # noqa: BLE001  (the unpickler raises anything on garbage: IndexError, KeyError ...)
        first = first_line(exc)
        raise CheckpointError(f"{path} is not a readable checkpoint: truncated, damaged or not a torch.save "
                              f"file ({first[:120]})") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict) and _is_state_dict(obj["model"]):
        return obj
    if isinstance(obj, dict) and _is_state_dict(obj):
        return {"model": obj, "model_name": None}
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict) and _is_state_dict(obj["state_dict"]):
        return {"model": obj["state_dict"], "model_name": None}  # {"state_dict": ..., "epoch": ...}, as many scripts save
    raise CheckpointError(f"{path} is neither a cifarctl checkpoint nor a state_dict (a dict of tensors)")


def _is_state_dict(obj: dict[Any, Any]) -> bool:
    return bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


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


def upgrade_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state_dict`` as ``model`` reads it now: a model may fill in what older checkpoints lack (its
    ``upgrade_state_dict`` hook, ``cifarctl.models.hooks``)."""
    from cifarctl.models.hooks import call_hook, has_hook

    return call_hook(model, "upgrade_state_dict", state_dict) if has_hook(model, "upgrade_state_dict") else state_dict


def load_weights(model: nn.Module, model_name: str, checkpoint: dict[str, Any], source: Path | str,
                 check_finite: bool = True, model_source: Any = None) -> None:
    """Load ``checkpoint["model"]`` into ``model`` strictly, with a message that says what does not fit.

    Weights with NaN or Inf (a diverged run) are refused unless ``check_finite=False``. ``model_source``
    (a ``models.spec.ModelSource``): where ``model``'s code came from; when the checkpoint recorded
    another version of that file, a mismatch says so, and weights that still fit load with a warning.
    """
    from cifarctl.models import is_model
    from cifarctl.models.spec import ModelSource, ModelSourceChanged, describe_source_change

    state_dict = upgrade_state_dict(model, _strip_prefix(checkpoint["model"]))
    saved_name = checkpoint.get("model_name")
    if saved_name and saved_name != model_name and is_model(saved_name) and is_model(model_name):
        raise CheckpointError(f"{source} is a {saved_name} checkpoint, not {model_name}: "
                              f"use `{saved_name}` or another checkpoint")
    changed = describe_source_change(ModelSource.from_dict(checkpoint.get("model_source")), model_source) \
        if model_source is not None else None
    also = f"; {changed}" if changed else ""
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
                              f"{len(unexpected)} unexpected keys: {detail}){also}")
    differ = [(key, tuple(state_dict[key].shape), tuple(tensor.shape)) for key, tensor in expected.items()
              if tuple(state_dict[key].shape) != tuple(tensor.shape)]
    if differ:
        key, got, want = differ[0]
        classes = _classes_mismatch(model, key, got, want)
        if classes and all(_classes_mismatch(model, k, g, w) for k, g, w in differ):
            raise CheckpointError(f"{source} was trained for {classes[0]} classes; {model_name} here has "
                                  f"{classes[1]} ({key} is {list(got)}): use a checkpoint for CIFAR-10")
        listed = "; ".join(f"{k}: checkpoint {_dims(g)}, model {_dims(w)}" for k, g, w in differ[:3])
        more = f" (and {len(differ) - 3} more)" if len(differ) > 3 else ""
        raise CheckpointError(f"{source} does not fit {model_name}: {listed}{more}{also}")
    if changed:
        warnings.warn(ModelSourceChanged(f"{changed}; its weights still fit, so they are used"), stacklevel=2)
    if check_finite:
        bad = next((k for k, v in state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
        if bad is not None:
            raise CheckpointError(f"{source} has non-finite weights (NaN or Inf in {bad}): the run that wrote it "
                                  "diverged; use an earlier checkpoint or train again with a lower --lr")
    model.load_state_dict(state_dict, strict=True)


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) or "scalar"


def _classes_mismatch(model: nn.Module, key: str, got: tuple[int, ...], want: tuple[int, ...]) -> tuple[int, int] | None:
    """``(checkpoint classes, model classes)`` when ``key`` belongs to the model's output layer."""
    output = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if output and key.startswith(output[-1] + ".") and got[1:] == want[1:] and got[:1] != want[:1]:
        return got[0], want[0]
    return None


def find_latest(model_name: str, file: str = "last.pt") -> Path:
    """The newest ``file`` of ``model_name``'s runs (under the checkpoints root, or indexed ``--out`` runs)."""
    from cifarctl.models.spec import run_folder_name
    from cifarctl.run.index import run_checkpoints

    root = paths.runs_root() / run_folder_name(model_name)
    candidates = sorted(run_checkpoints(model_name, file), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise CheckpointError(f"no {model_name} checkpoint under {root}: train one with "
                              f"`cifarctl train {model_name}` or pass --ckpt FILE")
    return candidates[-1]
