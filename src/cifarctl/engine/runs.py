"""List the run folders under the checkpoints root, from their config.json and metrics.jsonl."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cifarctl import paths
from cifarctl.engine.metrics import MetricsLog


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

    def to_dict(self) -> dict[str, object]:
        return {"model": self.model, "path": str(self.path), "epochs": self.epochs,
                "planned_epochs": self.planned_epochs, "global_step": self.global_step,
                "best_accuracy": self.best_accuracy, "last_accuracy": self.last_accuracy,
                "modified": self.modified.isoformat(timespec="seconds")}


def list_runs(model: str | None = None) -> list[RunInfo]:
    """Runs with a checkpoint, oldest first; ``model`` keeps only that model's runs."""
    root = paths.runs_root()
    runs = []
    for last in sorted(root.glob(f"{model or '*'}/*/last.pt")):
        folder = last.parent
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            config = {}
        records = MetricsLog(folder / "metrics.jsonl").read_safe()
        epochs = [r for r in records if r.get("type") == "epoch"]
        accuracies = [r["test_acc"] for r in epochs if r.get("test_acc") is not None]
        runs.append(RunInfo(
            model=config.get("model", folder.parent.name), path=folder,
            epochs=epochs[-1]["epoch"] if epochs else 0.0, planned_epochs=config.get("epochs"),
            global_step=max((int(r.get("global_step", 0)) for r in records), default=0),
            best_accuracy=max(accuracies) if accuracies else None,
            last_accuracy=accuracies[-1] if accuracies else None,
            modified=datetime.fromtimestamp(last.stat().st_mtime),
        ))
    return sorted(runs, key=lambda r: r.modified)
