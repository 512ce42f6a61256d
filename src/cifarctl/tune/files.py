"""What a study folder holds besides Optuna's storage: ``study.json``, ``trials.csv``, ``best.toml`` (and any
trial's recipe, ``--trial N``), ``anytime.csv``, ``trials.png`` and ``importance.png``. Every file is written
whole (atomically)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from cifarctl.atomic import write_text
from cifarctl.errors import UsageError
from cifarctl.run.config_file import recipe_settings, to_toml
from cifarctl.run.index import STUDY_FILE
from cifarctl.tune.study import TuneSpec

# A trial's settings for its search (every epoch judged): the recipe's own come back in its file.
SEARCH_ONLY = ("eval_every", "eval_amp")


def write_study_file(folder: Path, spec: TuneSpec, storage: str | None, name: str) -> None:
    """``study.json``: where the study's trials are (``storage``: None for the folder's journal; a database URL
    without its password) and its spec; the folder goes into the runs index, so that `cifarctl runs` lists it
    wherever it is."""
    from cifarctl.run.index import register_run
    from cifarctl.tune.study import without_password

    register_run(folder)
    record = {"study": name, "storage": without_password(storage), "spec": spec.to_dict()}
    write_text(folder / STUDY_FILE, json.dumps(record, indent=2) + "\n")


def read_study_file(folder: Path) -> dict[str, Any]:
    """A study folder's ``study.json``; one line if ``folder`` is not a study folder."""
    try:
        values = json.loads((folder / STUDY_FILE).read_text(encoding="utf-8"))
        if not isinstance(values, dict) or "study" not in values:
            raise ValueError("no study name")
        return values
    except FileNotFoundError:
        raise UsageError(f"{folder} is not a study folder (it has no {STUDY_FILE}): give the folder "
                         "`cifarctl tune` printed, or start one with `cifarctl tune MODEL`") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"{folder / STUDY_FILE} is unreadable ({exc}); start a new study") from None


def is_study(folder: Path) -> bool:
    return (Path(folder) / STUDY_FILE).is_file()


def trial_recipe(spec: TuneSpec, settings: dict[str, Any]) -> dict[str, Any]:
    """A trial's recipe as a config file holds it: the model, and every setting of its run but those of one run
    (seed, device, length) and of the search (judged every epoch)."""
    from cifarctl.tune.search import base_config

    values = recipe_settings(base_config(spec, **settings).to_dict())
    base = base_config(spec).to_dict()
    for key in SEARCH_ONLY:
        values.pop(key, None)
        if base.get(key) is not None:
            values[key] = base[key]
    return {"model": spec.model, **values}


def write_recipe(path: Path, spec: TuneSpec, trial: Any, study_name: str, checked: Any = None) -> None:
    """``trial``'s recipe as TOML in ``path``, with what it reached (and its re-check, ``checked``) in a comment."""
    value = f"{trial.value:.2f}%" if trial.value is not None else "no result"
    if checked is not None:
        value += f" (re-checked: {recheck_text(checked)})"
    comment = (f"cifarctl tune, study {study_name}: trial {trial.number}, {value} on {spec.val_split} held-out "
               f"training images\nin a {spec.trial_budget:g} s trial budget. Train with it:\n"
               f"  cifarctl train --config {path} --time-budget {spec.trial_budget:g}s --seeds 3")
    write_text(path, to_toml(trial_recipe(spec, trial.user_attrs.get("settings", {})), comment))


def recheck_text(checked: Any) -> str:
    """A re-check in words: ``80.91% ± 0.40 (n=2), 1.13 points under its single value``."""
    spread = f" ± {checked.std:.2f}" if checked.std is not None else ""
    moved = "under" if checked.shrinkage >= 0 else "over"
    return (f"{checked.mean:.2f}%{spread} (n={len(checked.values)}), {abs(checked.shrinkage):.2f} points {moved} "
            "its single value")


def write_anytime_csv(path: Path, points: list[dict[str, Any]]) -> Path:
    """``anytime.csv``: the best held-out accuracy after each complete configuration, by the study's seconds."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["seconds", "trial", "value", "best"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(points)
    write_text(path, buffer.getvalue())
    return path


TRIAL_COLUMNS = ("number", "state", "val_accuracy", "recheck_of", "seed", "rungs", "epochs", "seconds", "lr",
                 "optimizer", "batch_size", "weight_decay", "label_smoothing", "momentum", "warmup_fraction", "head_lr",
                 "ema", "flip", "tta", "run_dir", "error", "note")


def write_trials_csv(path: Path, trials: list[Any]) -> None:
    """Every trial a row: its state, held-out accuracy (the last reported, for a pruned one), and settings."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(TRIAL_COLUMNS), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for trial in trials:
        writer.writerow(trial_row(trial))
    write_text(path, buffer.getvalue())


def trial_row(trial: Any) -> dict[str, Any]:
    settings = trial.user_attrs.get("settings", {})
    reported = trial.intermediate_values
    value = trial.value if trial.value is not None else (reported[max(reported)] if reported else None)
    seconds = ((trial.datetime_complete - trial.datetime_start).total_seconds()
               if trial.datetime_complete and trial.datetime_start else None)
    return {**settings, "number": trial.number, "state": trial.state.name,
            "val_accuracy": round(value, 2) if value is not None else None,
            "rungs": rungs_text(trial), "epochs": trial.user_attrs.get("epochs"),
            "seconds": round(seconds, 1) if seconds is not None else None,
            "run_dir": trial.user_attrs.get("run_dir"), "error": trial.user_attrs.get("error"),
            "note": trial.user_attrs.get("note"),
            "recheck_of": trial.user_attrs.get("recheck_of"), "seed": trial.user_attrs.get("seed")}


def rungs_text(trial: Any) -> str:
    """A configuration's rungs as ``40s 71.20 > 120s 80.15``: each rung's budget and held-out accuracy."""
    from cifarctl.training.plan import format_duration

    return " > ".join(f"{format_duration(r['budget'])} {r['value']:.2f}" for r in trial.user_attrs.get("rungs", []))


def plot_trials(path: Path, trials: list[Any], title: str, anytime: list[dict[str, Any]] = ()) -> bool:
    """``trials.png`` (``cifarctl.plots.plot_trials``); False when matplotlib is not installed, or no trial has
    a held-out accuracy yet (every one failed: nothing to draw)."""
    from cifarctl.errors import CifarctlError
    from cifarctl.plots import plot_trials as draw

    rows = [trial_row(t) for t in trials]
    if not any(r["val_accuracy"] is not None and r["state"] in ("COMPLETE", "PRUNED") for r in rows):
        return False
    try:
        draw(rows, path, title, anytime)
    except CifarctlError:
        return False
    return True


def plot_importances(path: Path, importances: dict[str, float], edges: list[str], title: str) -> bool:
    """``importance.png`` (``cifarctl.plots.plot_importances``); False when matplotlib is not installed."""
    from cifarctl.errors import CifarctlError
    from cifarctl.plots import plot_importances as draw

    try:
        draw(importances, edges, path, title)
    except CifarctlError:
        return False
    return True
