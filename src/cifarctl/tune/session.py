"""A study opened by this process: started (``start``), joined or resumed (``join``); its files kept current
(``write_files``); and, after the search, the best recipe against the default on the test set (``confirm``).

Starting one writes nothing until everything it needs is known to work (the model, the storage, the data,
the lr range tests): a failure before leaves no folder; ``study.json`` is written last, so a folder without
it is no study, and one with it can always be resumed.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from cifarctl import paths
from cifarctl.data import CIFAR10
from cifarctl.errors import UsageError
from cifarctl.tune import analysis, recheck
from cifarctl.tune.files import STUDY_FILE, is_study, plot_importances, plot_trials, read_study_file, \
    write_anytime_csv, write_recipe, write_study_file, write_trials_csv
from cifarctl.tune.search import base_config, enqueue_default, enqueue_starts, measure_bounds, searched_fixed
from cifarctl.tune.study import TuneSpec, create_study, load_study, now_text, open_storage, require_optuna

BEST = "best.toml"
CSV = "trials.csv"
PLOT = "trials.png"
ANYTIME = "anytime.csv"
REPORT = "report.json"
IMPORTANCE = "importance.png"


@dataclass
class Session:
    """An open study: its folder, Optuna's study, what it searches, its name and where its trials are stored."""

    folder: Path
    study: Any
    spec: TuneSpec
    name: str
    storage: str | None  # a URL (or journal path) given with --storage; None: the folder's journal

    def best_trial(self) -> Any | None:
        """The best configuration's trial: the best re-checked mean once the re-check has run, else the best
        single value (``tune.recheck.best``)."""
        return recheck.best(self.study.get_trials(deepcopy=False))[0]

    def recheck(self) -> Any | None:
        """The best configuration's re-check (``tune.recheck.Checked``), None before it has run."""
        return recheck.best(self.study.get_trials(deepcopy=False))[1]


def default_folder(model: str) -> Path:
    """``<runs>/<model>/tune-<timestamp>``: beside the model's runs, so `cifarctl runs` lists it with them."""
    from cifarctl.run.folder import new_run_dir

    return new_run_dir(model, prefix="tune-")


@contextlib.contextmanager
def _new_folder(folder: Path) -> Iterator[None]:
    """Create ``folder``; if what follows fails, remove it (and nothing that was there before)."""
    if folder.exists() and any(folder.iterdir()):
        raise UsageError(f"{folder} is not empty: choose another --out, or resume a study with --resume FOLDER")
    existed = folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        if existed:
            for child in folder.iterdir():
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
        else:
            shutil.rmtree(folder, ignore_errors=True)
        raise


def start(folder: Path, spec: TuneSpec, data: CIFAR10, device: torch.device, storage: str | None = None,
          name: str | None = None, notify: Callable[[str], None] = lambda _text: None,
          warm_start: Path | None = None) -> Session:
    """A new study in ``folder``: the lr range tests on ``data`` (the validation view), then the study itself,
    whose first trials are the default, the good starts and ``warm_start``'s (an earlier study's) best three."""
    name = name or folder.name
    base_config(spec)  # an unknown recipe or a setting that contradicts another fails here, before any file
    earlier = best_params(join(warm_start)) if warm_start is not None else []
    with _new_folder(folder):
        opened = open_storage(folder, storage)
        spec = measure_bounds(spec, data, device, notify)
        spec.created = now_text()
        study = create_study(opened, name, spec)
        if enqueue_default(study, spec):
            notify("trial 0 is the model's own recipe, as near as the search's settings hold it: the one to beat")
        notify(f"the next {enqueue_starts(study, spec, earlier)} trials start from what makes the built-in nets "
               "good" + (f" and the best of {warm_start}" if earlier else ""))
        if searched_fixed(spec):
            notify(f"--config fixes {', '.join(searched_fixed(spec))}: the search leaves them as the file has them")
        write_study_file(folder, spec, storage, name)
    return Session(folder, study, spec, name, storage)


def best_params(session: Session, count: int = 3) -> list[dict[str, Any]]:
    """The parameters of the study's ``count`` best configurations (re-checked ones first, by their mean), for
    another study's first trials."""
    trials = session.study.get_trials(deepcopy=False)
    ranked = [c.trial for c in recheck.checked(trials)]
    ranked += [t for t in recheck.candidates(trials) if t not in ranked]
    return [dict(t.params) for t in ranked[:count]]


def join(folder: Path | None = None, storage: str | None = None, name: str | None = None) -> Session:
    """The study in ``folder`` (``--resume``), or the one called ``name`` in ``storage`` (another machine's; its
    folder here is ``folder``, default beside the model's runs)."""
    if folder is not None and is_study(folder):
        record = read_study_file(folder)
        storage = storage or record.get("storage")
        study, spec = load_study(open_storage(folder, storage), record["study"])
        return Session(folder, study, spec, record["study"], storage)
    if storage is None or name is None:
        raise UsageError(f"{folder} is not a study folder (no {STUDY_FILE}): give the folder `cifarctl tune` printed, "
                         "or --storage URL --study NAME to join a study in a database")
    study, spec = load_study(open_storage(folder or paths.runs_root(), storage), name)
    folder = folder or default_folder(spec.model)
    folder.mkdir(parents=True, exist_ok=True)
    write_study_file(folder, spec, storage, name)
    return Session(folder, study, spec, name, storage)


_writing = threading.Lock()


def write_files(session: Session, final: bool = False) -> dict[str, Path]:
    """``trials.csv``, ``best.toml`` (the best configuration's recipe), ``anytime.csv`` and ``trials.png``, from
    the study as it is now; ``final``: ``report.json`` and ``importance.png`` too (``summary``)."""
    trials = session.study.get_trials(deepcopy=False)
    written = {"csv": session.folder / CSV}
    with _writing:
        write_trials_csv(session.folder / CSV, trials)
        best, checked = recheck.best(trials)
        if best is not None:
            write_recipe(session.folder / BEST, session.spec, best, session.name, checked)
            written["best"] = session.folder / BEST
        points = analysis.anytime(trials, session.spec)
        written["anytime"] = write_anytime_csv(session.folder / ANYTIME, points)
        if plot_trials(session.folder / PLOT, trials, f"{session.name}: held-out accuracy", points):
            written["plot"] = session.folder / PLOT
        if final:
            written.update(write_summary(session))
    return written


def summary(session: Session) -> dict[str, Any]:
    """What the study found: its best configuration (its single value, and its re-check's mean ± std, n and
    shrinkage), the settings' importances, and the best's settings at an edge of their range."""
    trials = session.study.get_trials(deepcopy=False)
    best, checked = recheck.best(trials)
    return {"best": None if best is None else {"number": best.number, "val_accuracy": best.value,
                                               "settings": best.user_attrs.get("settings", {})},
            "recheck": None if checked is None else checked.to_dict(),
            "rechecked": [c.to_dict() for c in recheck.checked(trials)],
            "importances": analysis.importances(session.study),
            "edges": analysis.edges(best) if best is not None else []}


def write_summary(session: Session) -> dict[str, Path]:
    """``report.json`` (``summary``) and ``importance.png``, where there are importances to draw."""
    from cifarctl.atomic import write_text

    found = summary(session)
    write_text(session.folder / REPORT, json.dumps(found, indent=2) + "\n")
    written = {"report": session.folder / REPORT}
    edges = [e["setting"] for e in found["edges"]]
    if found["importances"] and plot_importances(session.folder / IMPORTANCE, found["importances"], edges,
                                                 f"{session.name}: what mattered"):
        written["importance"] = session.folder / IMPORTANCE
    return written


def write_trial_recipe(session: Session, number: int, path: Path) -> Path:
    """Trial ``number``'s recipe as a config file, as ``best.toml`` holds the best one's."""
    trials = {t.number: t for t in session.study.get_trials(deepcopy=False)}
    if number not in trials:
        raise UsageError(f"the study has no trial {number} (it has {len(trials)}: 0 to {len(trials) - 1})")
    write_recipe(path, session.spec, trials[number], session.name)
    return path


CONFIRM = "confirm"
CONFIRM_SEEDS = 1000  # --confirm's seeds start this far after the study's: none the search or re-check used


def confirm_seeds(spec: TuneSpec, count: int) -> list[int]:
    """--confirm N's seeds: N the search never trained with, the same for both groups (a paired comparison)."""
    return list(range(spec.seed + CONFIRM_SEEDS, spec.seed + CONFIRM_SEEDS + count))


def confirm(session: Session, seeds: list[int], data: CIFAR10, stop: threading.Event | None = None,
            hooks: Any = None) -> tuple[Path, Path, Any]:
    """The best trial's recipe and the model's default, each trained on all the training images with ``seeds`` in
    the trial budget and scored on the test set (the one part of ``tune`` that reads it): the two groups'
    folders and their comparison (``runs compare DEFAULT BEST``). Groups already trained (the same best, the
    same N) are resumed, not redone; a new best or another N trains new ones."""
    from cifarctl.groups import resume_group, train_group
    from cifarctl.run.compare import compare_folders
    from cifarctl.run.group import is_group

    best = session.best_trial()
    if best is None:
        raise UsageError("no trial of the study has finished yet: nothing to confirm")
    spec = session.spec
    length = dict(time_budget=spec.trial_budget, val_split=0, data=spec.data)
    configs = {"default": base_config(spec, **length),
               "best": base_config(spec, **best.user_attrs.get("settings", {}), **length)}
    folders = {}
    names = {"default": f"default-{len(seeds)}-seeds", "best": f"best-trial-{best.number}-{len(seeds)}-seeds"}
    for label, cfg in configs.items():  # a new best or another N: new groups (a folder is one question's)
        folder = folders[label] = session.folder / CONFIRM / names[label]
        if is_group(folder):
            resume_group(folder, data, model_spec=cfg.model, hooks=hooks, stop=stop)
        else:
            train_group(cfg, seeds, data, folder, hooks=hooks, stop=stop)
    return folders["default"], folders["best"], compare_folders(folders["default"], folders["best"])
