"""Optional plots (``pip install 'cifarctl[plot]'``): learning curves, the confusion matrix, a study's trials."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cifarctl.atomic import atomic_path
from cifarctl.errors import CifarctlError


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise CifarctlError("plotting needs matplotlib: pip install 'cifarctl[plot]'") from None
    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def require_plotting() -> None:
    """Fail now, with the install hint, rather than after a long run."""
    _pyplot()


def _save(fig: Any, path: Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=120, bbox_inches="tight")
    return path


def plot_learning_curves(records: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Loss and accuracy per epoch (train and test) from metrics.jsonl records, saved to ``path``."""
    plt = _pyplot()
    epochs = [r for r in records if r.get("type") == "epoch"]
    if not epochs:
        raise CifarctlError("no finished epoch to plot yet")
    x = [r["epoch"] for r in epochs]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    try:
        ax_loss.plot(x, [r["train_loss"] for r in epochs], "o-", label="train")
        ax_acc.plot(x, [r["train_acc"] for r in epochs], "o-", label="train")
        tested = [r for r in epochs if r.get("test_acc") is not None]
        if tested:
            ax_loss.plot([r["epoch"] for r in tested], [r["test_loss"] for r in tested], "s-", label="test")
            ax_acc.plot([r["epoch"] for r in tested], [r["test_acc"] for r in tested], "s-", label="test")
        ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
        ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
        for ax in (ax_loss, ax_acc):
            ax.grid(alpha=0.3)
            ax.legend()
        if title:
            fig.suptitle(title)
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_confusion(confusion: list[list[int]], classes: tuple[str, ...], path: Path, title: str = "") -> Path:
    """The confusion matrix (rows: true class, columns: predicted) as a heat map with counts."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    try:
        image = ax.imshow(confusion, cmap="Blues")
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        ax.set_yticks(range(len(classes)), classes)
        ax.set(xlabel="predicted", ylabel="true class", title=title or "confusion matrix")
        peak = max(max(row) for row in confusion) or 1
        for i, row in enumerate(confusion):
            for j, n in enumerate(row):
                ax.text(j, i, str(n), ha="center", va="center", fontsize=7,
                        color="white" if n > peak / 2 else "black")
        fig.colorbar(image, ax=ax, fraction=0.046)
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_trials(rows: list[dict[str, Any]], path: Path, title: str = "",
                anytime: list[dict[str, Any]] = ()) -> Path:
    """A study's trials: held-out accuracy by trial and by peak lr (complete ones as dots, pruned ones as
    crosses at their last rung), and the best so far by the study's minutes (``cifarctl tune``'s trials.png)."""
    plt = _pyplot()
    fig, (by_trial, by_lr, by_time) = plt.subplots(1, 3, figsize=(15, 4))
    try:
        for state, marker, colour in (("COMPLETE", "o", "tab:blue"), ("PRUNED", "x", "tab:grey")):
            chosen = [r for r in rows if r["state"] == state and r.get("val_accuracy") is not None]
            by_trial.scatter([r["number"] for r in chosen], [r["val_accuracy"] for r in chosen], marker=marker,
                             color=colour, label=state.lower())
            by_lr.scatter([r["lr"] for r in chosen], [r["val_accuracy"] for r in chosen], marker=marker, color=colour)
        if anytime:
            by_time.step([p["seconds"] / 60 for p in anytime], [p["best"] for p in anytime], where="post")
            by_time.scatter([p["seconds"] / 60 for p in anytime], [p["value"] for p in anytime], s=8, color="tab:grey")
        by_trial.set(xlabel="trial", ylabel="held-out accuracy (%)", title=title or "trials")
        by_lr.set(xscale="log", xlabel="peak lr", title="by learning rate")
        by_time.set(xlabel="study time (min)", title="best so far")
        for ax in (by_trial, by_lr, by_time):
            ax.grid(alpha=0.3)
        by_trial.legend()
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_importances(importances: dict[str, float], edges: list[str], path: Path, title: str = "") -> Path:
    """Each searched setting's importance as a bar, the best's settings at an edge of their range in orange
    (``cifarctl tune``'s importance.png)."""
    plt = _pyplot()
    names = sorted(importances, key=importances.get)
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(names) + 1.2))
    try:
        ax.barh(names, [importances[n] for n in names],
                color=["tab:orange" if n in edges else "tab:blue" for n in names])
        ax.set(xlabel="importance (PED-ANOVA)", title=title or "what mattered (orange: the best at an edge)")
        ax.grid(alpha=0.3, axis="x")
        return _save(fig, path)
    finally:
        plt.close(fig)
