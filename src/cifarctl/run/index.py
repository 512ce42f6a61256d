"""List the run folders, from their config.json and metrics.jsonl.

Runs live under the checkpoints root (``<runs>/<model>/<timestamp>``), except those given ``--out``:
those are recorded in ``<runs>/index.txt`` (one absolute path a line) so that ``runs``, a bare
``--ckpt`` and a bare ``--resume`` find them too.
"""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cifarctl import paths
from cifarctl.atomic import write_text
from cifarctl.run.log import MetricsLog

INDEX = "index.txt"
STUDY_FILE = "study.json"  # what makes a folder a study of `cifarctl tune` (its trials are run folders in it)


def indexed_runs() -> list[Path]:
    """Run folders recorded in the index (``--out`` runs outside the runs root) that still exist."""
    try:
        lines = (paths.runs_root() / INDEX).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    return [Path(line) for line in dict.fromkeys(lines) if line and Path(line).is_dir()]


def register_run(run_dir: Path) -> None:
    """Record ``run_dir`` in the index unless it lies under the runs root (found there anyway), is a seed of a
    group (listed with its group) or a trial of a study (listed with its study)."""
    from cifarctl.run.group import is_group

    run_dir = Path(run_dir).resolve()
    root = paths.runs_root().resolve()
    if run_dir.is_relative_to(root) or run_dir in indexed_runs() or is_group(run_dir.parent) or \
            (run_dir.parent.parent / STUDY_FILE).is_file():
        return
    known = [str(p) for p in indexed_runs()]
    write_text(root / INDEX, "\n".join([*known, str(run_dir)]) + "\n")


def run_checkpoints(model: str | None = None, file: str = "last.pt") -> list[Path]:
    """Every run's ``file`` (under the root, and indexed), of ``model`` (a name or a spec) if given."""
    from cifarctl.models.spec import canonical_spec, is_spec, run_folder_name

    found = list(paths.runs_root().glob(f"{glob.escape(run_folder_name(model)) if model else '*'}/*/{file}"))
    wanted = canonical_spec(model) if model else None
    if model is not None and is_spec(model):  # two files of one name share a folder name: the config tells
        found = [path for path in found if _run_model(path.parent) == wanted]
    for folder in indexed_runs():
        if (folder / file).is_file() and (model is None or _run_model(folder) == wanted):
            found.append(folder / file)
    return found


def _run_model(folder: Path) -> str | None:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model")
    except (OSError, ValueError, AttributeError):
        return None


@dataclass
class RunInfo:
    """One run folder: what was trained, how far, and how well (accuracies in percent)."""

    model: str
    path: Path
    epochs: float            # epochs completed (fractional when stopped mid-epoch)
    planned_epochs: int | None
    global_step: int
    best_accuracy: float | None
    last_accuracy: float | None
    modified: datetime
    best_selected_on: str = "test"   # the split whose accuracy chose best.pt ("val" with --val-split)
    val_accuracy: float | None = None
    damaged: list[str] = field(default_factory=list)  # files of the folder that cannot be read (config.json ...)

    def to_dict(self) -> dict[str, object]:
        return {"kind": "run", "model": self.model, "path": str(self.path), "epochs": self.epochs,
                "planned_epochs": self.planned_epochs, "global_step": self.global_step,
                "best_accuracy": self.best_accuracy, "last_accuracy": self.last_accuracy,
                "best_selected_on": self.best_selected_on, "val_accuracy": self.val_accuracy,
                "modified": self.modified.isoformat(timespec="seconds"), "damaged": self.damaged}


def list_runs(model: str | None = None) -> list[RunInfo]:
    """Runs with a checkpoint, oldest first; ``model`` keeps only that model's runs.

    ``last_accuracy`` is the test accuracy of ``last.pt``; ``best_accuracy`` the best test accuracy
    among evaluations (with --val-split: ``best.pt``'s, scored once at the end).
    """
    runs = []
    for last in sorted(run_checkpoints(model)):
        folder = last.parent
        damaged = []
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            if not isinstance(config, dict):
                raise ValueError("not an object")
        except FileNotFoundError:
            config = {}
        except (OSError, ValueError):  # truncated, not JSON, not UTF-8: this run is listed, and marked
            config, damaged = {}, ["config.json"]
        records, bad_lines = MetricsLog(folder / "metrics.jsonl").read_checked()
        if bad_lines:
            damaged.append("metrics.jsonl")
        try:
            modified = datetime.fromtimestamp(last.stat().st_mtime)
        except OSError:  # removed while listing
            continue
        epochs = [r for r in records if r.get("type") == "epoch"]
        scored = [r for r in records if r.get("type") in ("epoch", "final")]
        accuracies = [r["test_acc"] for r in scored if r.get("test_acc") is not None]
        final = next((r for r in reversed(records) if r.get("type") == "final"), {})
        vals = [r["val_acc"] for r in epochs if r.get("val_acc") is not None]
        runs.append(RunInfo(
            model=config.get("model", folder.parent.name), path=folder,
            epochs=epochs[-1]["epoch"] if epochs else 0.0, planned_epochs=config.get("epochs"),
            global_step=max((int(r.get("global_step", 0)) for r in records), default=0),
            best_accuracy=final.get("best_test_acc", max(accuracies) if accuracies else None),
            last_accuracy=accuracies[-1] if accuracies else None,
            modified=modified, best_selected_on=config.get("best_selected_on", "test"),
            val_accuracy=vals[-1] if vals else None, damaged=damaged,
        ))
    return sorted(runs, key=lambda r: r.modified)


@dataclass
class GroupInfo:
    """One group of seeds, as ``cifarctl runs`` lists it: its model, finished seeds and their summary, its state."""

    model: str
    path: Path
    n: int                          # finished seeds
    seeds: int                      # seeds asked for
    mean: float | None
    std: float | None
    ci95: list[float] | None
    state: str                      # running (its lock is held), stopped (resume it), finished, damaged
    modified: datetime

    def to_dict(self) -> dict[str, object]:
        return {"kind": "group", "model": self.model, "path": str(self.path), "n": self.n, "seeds": self.seeds,
                "mean": self.mean, "std": self.std, "ci95": self.ci95, "state": self.state,
                "modified": self.modified.isoformat(timespec="seconds")}


def group_folders(model: str | None = None) -> list[Path]:
    """Every group of seeds: under the runs root (``<runs>/<model>/<when>/summary.json``) and indexed ``--out`` ones."""
    from cifarctl.models.spec import run_folder_name
    from cifarctl.run.group import SUMMARY, is_group

    pattern = f"{glob.escape(run_folder_name(model)) if model else '*'}/*/{SUMMARY}"
    found = [path.parent for path in paths.runs_root().glob(pattern)]
    found += [folder for folder in indexed_runs() if is_group(folder) and folder not in found]
    return found


def list_groups(model: str | None = None) -> list[GroupInfo]:
    """Groups of seeds, oldest first; ``model`` keeps only that model's. A summary.json that does not read is
    listed as damaged; a group whose lock nobody holds and whose seeds are not all done is stopped."""
    from cifarctl.errors import CifarctlError
    from cifarctl.locks import held
    from cifarctl.models.spec import canonical_spec
    from cifarctl.run.group import SUMMARY, read_group

    groups = []
    for folder in group_folders(model):
        try:
            modified = datetime.fromtimestamp((folder / SUMMARY).stat().st_mtime)
            record = read_group(folder)
        except CifarctlError:
            groups.append(GroupInfo(folder.parent.name, folder, 0, 0, None, None, None, "damaged", modified))
            continue
        except OSError:  # removed while listing
            continue
        if model is not None and record.model != canonical_spec(model):
            continue
        summary = record.summary or {}
        state = "stopped" if record.state == "running" and not held(folder) else record.state
        groups.append(GroupInfo(record.model, folder, len(record.runs), len(record.seeds), summary.get("mean"),
                                summary.get("std"), summary.get("ci95"), state, modified))
    return sorted(groups, key=lambda g: g.modified)


@dataclass
class StudyInfo:
    """One study of ``cifarctl tune``, as ``cifarctl runs`` lists it (from its study.json and trials.csv)."""

    model: str
    path: Path
    trials: dict[str, int]          # trials by state: complete, pruned, fail, running
    best: float | None              # the best held-out accuracy (%)
    modified: datetime

    def to_dict(self) -> dict[str, object]:
        return {"kind": "study", "model": self.model, "path": str(self.path), "trials": self.trials,
                "best_val_accuracy": self.best, "modified": self.modified.isoformat(timespec="seconds")}


def list_studies(model: str | None = None) -> list[StudyInfo]:
    """Studies under the runs root (``<runs>/<model>/tune-*``) and indexed ``--out`` ones, oldest first."""
    import csv

    from cifarctl.models.spec import canonical_spec, run_folder_name

    pattern = f"{glob.escape(run_folder_name(model)) if model else '*'}/*/{STUDY_FILE}"
    folders = [path.parent for path in paths.runs_root().glob(pattern)]
    folders += [f for f in indexed_runs() if (f / STUDY_FILE).is_file() and f not in folders]
    studies = []
    for folder in folders:
        try:
            spec = json.loads((folder / STUDY_FILE).read_text(encoding="utf-8")).get("spec", {})
            rows = list(csv.DictReader((folder / "trials.csv").open(encoding="utf-8"))) \
                if (folder / "trials.csv").is_file() else []
            modified = datetime.fromtimestamp(max(p.stat().st_mtime for p in (folder / STUDY_FILE, folder / "trials.csv")
                                                  if p.exists()))
        except (OSError, ValueError, AttributeError, csv.Error):
            continue
        if model is not None and spec.get("model") != canonical_spec(model):
            continue
        states: dict[str, int] = {}
        for row in rows:
            states[row.get("state", "").lower()] = states.get(row.get("state", "").lower(), 0) + 1
        values = [float(r["val_accuracy"]) for r in rows if r.get("state") == "COMPLETE" and r.get("val_accuracy")]
        studies.append(StudyInfo(str(spec.get("model", folder.parent.name)), folder, states,
                                 max(values) if values else None, modified))
    return sorted(studies, key=lambda s: s.modified)
