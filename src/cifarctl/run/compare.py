"""``cifarctl runs compare A B``: two groups of seeds (or single runs, as groups of one) compared.

Above ``run.group`` (the record) and ``run.checkpoint`` (a single run's results): it reads both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cifarctl.errors import UsageError
from cifarctl.run.checkpoint import load_checkpoint
from cifarctl.run.group import is_group, read_group


def accuracies_of(path: Path) -> tuple[list[float], list[float] | None]:
    """The test accuracies (and seconds) ``path`` holds, for ``runs compare``: a group's finished seeds, or a single
    run folder's final result as a group of one. Anything else fails in one line."""
    path = Path(path)
    if is_group(path):
        runs = [r for r in read_group(path).runs if r.get("test_accuracy") is not None]
        if not runs:
            raise UsageError(f"{path} is a group of seeds, none finished with a test accuracy yet: resume it first")
        return [float(r["test_accuracy"]) for r in runs], [float(r["seconds"]) for r in runs]
    if not (path / "last.pt").is_file():
        raise UsageError(f"{path} is neither a group of seeds (summary.json) nor a run folder (last.pt): give "
                         "folders that `cifarctl train` made")
    metrics = load_checkpoint(path / "last.pt").get("metrics") or {}
    if metrics.get("test_accuracy") is None:
        raise UsageError(f"{path} has no test accuracy (trained with --no-eval, or not finished): evaluate or "
                         "finish it first")
    seconds = metrics.get("seconds")
    return [float(metrics["test_accuracy"])], [float(seconds)] if seconds is not None else None


def compare_folders(a: Path, b: Path) -> Any:
    """``cifarctl runs compare A B``: B's accuracies against A's (``cifarctl.stats.compare``; a run is a group of one).
    Usage: ``compare_folders(Path("runs/g1"), Path("runs/g2")).sentence``"""
    from cifarctl.stats import compare

    (acc_a, sec_a), (acc_b, sec_b) = accuracies_of(a), accuracies_of(b)
    return compare(acc_a, acc_b, sec_a, sec_b)
