"""A run's ``metrics.jsonl``, appended as training goes, and its optional TensorBoard mirror."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from cifarctl.atomic import write_text
from cifarctl.errors import UsageError

TENSORBOARD_EXTRA = "pip install 'cifarctl[tensorboard]'"

# metrics.jsonl field -> TensorBoard tag, per record type.
_TAGS = {
    "step": {"loss": "train/loss", "acc": "train/accuracy", "lr": "train/lr", "images_per_s": "train/images_per_s"},
    "epoch": {"train_loss": "epoch/train_loss", "train_acc": "epoch/train_accuracy", "lr": "epoch/lr",
              "test_loss": "test/loss", "test_acc": "test/accuracy", "val_loss": "val/loss", "val_acc": "val/accuracy"},
    "final": {"test_loss": "final/test_loss", "test_acc": "final/test_accuracy",
              "best_test_loss": "final/best_test_loss", "best_test_acc": "final/best_test_accuracy"},
}


def require_tensorboard() -> None:
    """Fail with the install command unless ``torch.utils.tensorboard`` can be used."""
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        raise UsageError(f"--tensorboard needs the tensorboard package: {TENSORBOARD_EXTRA}") from None


class TensorBoardWriter:
    """Scalars of metrics.jsonl's records in ``log_dir`` (``RUN/tensorboard``), by global step.

    ``purge_step``: on resume, events at or after it (the checkpoint's step + 1) are dropped, as
    metrics.jsonl drops its records after the checkpoint.
    """

    def __init__(self, log_dir: Path, purge_step: int | None = None) -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def write(self, record: dict[str, Any]) -> None:
        step = int(record.get("global_step", 0))
        for key, tag in _TAGS.get(str(record.get("type")), {}).items():
            value = record.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self.writer.close()


class MetricsLog:
    """``metrics.jsonl``: one JSON object per line, appended and flushed as it goes (and mirrored to
    TensorBoard when ``mirror`` is set)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.mirror: TensorBoardWriter | None = None

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.mirror is not None:
            self.mirror.write(record)

    def close(self) -> None:
        if self.mirror is not None:
            self.mirror.close()
            self.mirror = None

    def truncate_after(self, global_step: int) -> None:
        """Drop records written after ``global_step`` (they belong to work a resume repeats)."""
        if not self.path.exists():
            return
        # Undecodable bytes (a damaged file) become lines that are not JSON, and are dropped with the rest.
        kept = [line for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines()
                if line.strip() and _record_step(line) <= global_step]
        write_text(self.path, "".join(line + "\n" for line in kept))

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def write_csv(self, target: Path, kind: str = "epoch") -> None:
        """The records of type ``kind`` as a CSV table (a column for every field any of them has), atomically."""
        rows = [{k: v for k, v in record.items() if k != "type"} for record in self.read_safe()
                if record.get("type") == kind]
        columns: dict[str, None] = {}
        for row in rows:
            columns.update(dict.fromkeys(row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text(target, buffer.getvalue())

    def read_safe(self) -> list[dict[str, Any]]:
        """Like ``read``, skipping unreadable lines (a line cut by a crash)."""
        return self.read_checked()[0]

    def read_checked(self) -> tuple[list[dict[str, Any]], int]:
        """``(records, damaged)``: the readable records, and how many lines are unreadable beyond a last
        line cut by a crash (which is expected, and not counted). An unreadable file counts as damaged."""
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return [], 0
        except OSError:
            return [], 1
        records, bad = [], []
        lines = text.splitlines()
        for number, line in enumerate(lines):
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("not an object")
                records.append(record)
            except ValueError:
                if line.strip():
                    bad.append(number)
        cut_last = bool(bad) and bad[-1] == len(lines) - 1 and not text.endswith("\n")
        return records, len(bad) - cut_last


def _record_step(line: str) -> int:
    try:
        return int(json.loads(line).get("global_step", 0))
    except (ValueError, AttributeError):
        return 1 << 62  # an unreadable (half-written) line is dropped
