"""What a study folder holds besides Optuna's storage: ``study.json``, ``trials.csv``, ``best.toml`` (and any
trial's recipe, ``trials/NNNN/recipe.toml``) and ``trials.png``. Every file is written whole (atomically)."""

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
    """``study.json``: where the study's trials are (``storage``: None for the folder's journal) and its spec;
    the folder goes into the runs index, so that `cifarctl runs` lists it wherever it is."""
    from cifarctl.run.index import register_run

    register_run(folder)
    write_text(folder / STUDY_FILE, json.dumps({"study": name, "storage": storage, "spec": spec.to_dict()},
                                               indent=2) + "\n")


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


def write_recipe(path: Path, spec: TuneSpec, trial: Any, study_name: str) -> None:
    """``trial``'s recipe as TOML in ``path``, with what it reached in a comment."""
    value = f"{trial.value:.2f}%" if trial.value is not None else "no result"
    comment = (f"cifarctl tune, study {study_name}: trial {trial.number}, {value} on {spec.val_split} held-out "
               f"training images\nin a {spec.trial_budget:g} s trial budget. Train with it:\n"
               f"  cifarctl train --config {path} --time-budget {spec.trial_budget:g}s --seeds 3")
    write_text(path, to_toml(trial_recipe(spec, trial.user_attrs.get("settings", {})), comment))


TRIAL_COLUMNS = ("number", "state", "val_accuracy", "epochs", "seconds", "lr", "optimizer", "batch_size",
                 "weight_decay", "label_smoothing", "momentum", "warmup_fraction", "head_lr", "ema", "flip", "tta",
                 "run_dir", "error")


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
            "epochs": trial.user_attrs.get("epochs"), "seconds": round(seconds, 1) if seconds is not None else None,
            "run_dir": trial.user_attrs.get("run_dir"), "error": trial.user_attrs.get("error")}


def plot_trials(path: Path, trials: list[Any], title: str) -> bool:
    """``trials.png`` (``cifarctl.plots.plot_trials``); False when matplotlib is not installed."""
    from cifarctl.errors import CifarctlError
    from cifarctl.plots import plot_trials as draw

    try:
        draw([trial_row(t) for t in trials], path, title)
    except CifarctlError:
        return False
    return True
