"""One run's folder as training writes it: ``config.json``, ``metrics.jsonl``, ``last.pt`` and ``best.pt``.

Runs live under the checkpoints root as ``<runs>/<model>/<timestamp>`` unless given ``--out``. A
folder has one writer at a time (``run_lock``); under torchrun rank 0 alone writes. Every write is
atomic, and a write that fails (a full disk) says which file, and what is kept and how to go on.
"""

from __future__ import annotations

import contextlib
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

from cifarctl import paths
from cifarctl.atomic import write_text
from cifarctl.errors import CheckpointError, FileSystemError, RunInUse, first_line
from cifarctl.locks import exclusive
from cifarctl.run.checkpoint import find_latest, save_checkpoint
from cifarctl.run.index import register_run
from cifarctl.run.log import MetricsLog, TensorBoardWriter


def new_run_dir(model_name: str, prefix: str = "") -> Path:
    """A fresh folder ``<runs>/<model>/<prefix><timestamp>`` (suffixed if taken); a spec's runs go under a name
    made of it (``resnet.ResNet18`` for ``models/resnet.py:ResNet18``)."""
    from cifarctl.models.spec import run_folder_name

    base = paths.runs_root() / run_folder_name(model_name) / f"{prefix}{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def latest_run_dir(model_name: str) -> Path:
    """The most recently written run folder of ``model_name`` (of any member, for a family) that has a ``last.pt``."""
    from cifarctl.models.registry import families

    members = families().get(model_name)
    if members is None:
        return find_latest(model_name).parent
    found = []
    for name in members:
        try:
            found.append(find_latest(name))
        except CheckpointError:
            continue
    if not found:
        raise CheckpointError(f"no run of {', '.join(members)} to resume: start one, or give --resume RUN_DIR")
    return max(found, key=lambda last: last.stat().st_mtime).parent


def run_lock(run_dir: Path, writer: bool | None = None) -> Any:
    """Hold ``run_dir``'s lock while training in it: a second writer is refused at once, naming the holder.

    The kernel drops the lock when its process dies (even by SIGKILL). ``writer``: whether this process
    writes the folder; None: under torchrun rank 0 alone takes it (the other ranks write nothing).
    Reading a run (evaluate, predict, export, runs) never takes it, so never waits.
    """
    if not (writer if writer is not None else int(os.environ.get("RANK", "0")) == 0):
        return contextlib.nullcontext()

    def refuse(who: str) -> None:
        raise RunInUse(f"{run_dir} is in use: {who} is training in it; wait for it to finish or stop it "
                       "(a run folder has one writer at a time)")

    return exclusive(Path(run_dir), refuse)


class RunFolder:
    """The files of one run, written by its training (``writer``: this process writes; under torchrun,
    rank 0 alone). ``saved_step`` is the step of the ``last.pt`` on disk (None: none yet)."""

    def __init__(self, path: Path, model_name: str, writer: bool = True, saved_step: int | None = None) -> None:
        self.path, self.model_name, self.writer, self.saved_step = Path(path), model_name, writer, saved_step
        self.log = MetricsLog(self.path / "metrics.jsonl")

    def open(self, config: dict[str, Any], tensorboard: bool = False, resumed_step: int = 0) -> None:
        """Create the folder, index it and write ``config.json``; mirror the metrics to TensorBoard if asked."""
        if not self.writer:
            return
        with self._writing(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
            register_run(self.path)
        self.write_config(config)
        self.write_config_file(config)
        if tensorboard:
            # Events after the checkpoint belong to work the resume redoes (as metrics.jsonl drops them).
            self.log.mirror = TensorBoardWriter(self.path / "tensorboard", purge_step=resumed_step + 1 if resumed_step
                                                else None)

    def write_config(self, config: dict[str, Any]) -> None:
        if self.writer:
            with self._writing(self.path / "config.json"):
                write_text(self.path / "config.json", json.dumps(config, indent=2) + "\n")

    def write_config_file(self, config: dict[str, Any]) -> None:
        """``config.toml``: the run's settings as ``--config`` reads them (``cifarctl.run.config_file``)."""
        if self.writer:
            from cifarctl.models.spec import display_name
            from cifarctl.run.config_file import run_settings, to_toml

            target = self.path / "config.toml"
            with self._writing(target):
                write_text(target, to_toml(run_settings(config), f"{display_name(config['model'])}: {self.path}"))

    def append(self, record: dict[str, Any]) -> None:
        """One record of ``metrics.jsonl`` (and TensorBoard); an epoch's also a row of ``metrics.csv``."""
        if self.writer:
            with self._writing(self.log.path):
                self.log.append(record)
            if record.get("type") == "epoch":
                self.write_table()

    def drop_records_after(self, global_step: int) -> None:
        """Records after the checkpoint describe work that a resume is about to redo."""
        if self.writer:
            with self._writing(self.log.path):
                self.log.truncate_after(global_step)
            self.write_table()

    def write_table(self) -> None:
        """``metrics.csv``: metrics.jsonl's epoch records, one row each, for spreadsheets and plotting."""
        target = self.path / "metrics.csv"
        with self._writing(target):
            self.log.write_csv(target)

    def save(self, state: dict[str, Any], best: bool = False) -> None:
        """Write ``state`` as ``last.pt`` (and ``best.pt``). A failed write (a full disk) leaves the previous
        checkpoint in place and says so."""
        if not self.writer:
            return
        try:
            save_checkpoint(self.path / "last.pt", state)
            self.saved_step = int(state["global_step"])
            if best:
                save_checkpoint(self.path / "best.pt", state)
        except FileSystemError as exc:
            raise FileSystemError(f"{exc}; {self.what_is_kept()}", exc.errno) from None

    def close(self) -> None:
        self.log.close()

    def what_is_kept(self) -> str:
        """What survives a failed write, and how to go on."""
        last = self.path / "last.pt"
        if self.saved_step is None:
            return "no checkpoint of this run was written before; free some space and train again"
        return (f"{last} (step {self.saved_step}) is intact, and best.pt as it was: free some space, then "
                f"`cifarctl train {self.model_name} --resume {self.path}` continues from step {self.saved_step}")

    @contextlib.contextmanager
    def _writing(self, target: Path) -> Iterator[None]:
        """A system error while writing ``target`` becomes one line naming it and what is kept."""
        try:
            yield
        except OSError as exc:
            reason = exc.strerror or first_line(exc)
            code = f" ({exc.errno})" if exc.errno is not None else ""
            raise FileSystemError(f"cannot write {target}: {reason}{code}; {self.what_is_kept()}", exc.errno) from None
