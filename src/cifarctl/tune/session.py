"""A study opened by this process: started (``start``), joined or resumed (``join``); its files kept current
(``write_files``); and, after the search, the best recipe against the default on the test set (``confirm``).

Starting one writes nothing until everything it needs is known to work (the model, the storage, the data,
the lr range tests): a failure before leaves no folder; ``study.json`` is written last, so a folder without
it is no study, and one with it can always be resumed.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from cifarctl import paths
from cifarctl.data import CIFAR10
from cifarctl.errors import UsageError
from cifarctl.tune.files import STUDY_FILE, is_study, plot_trials, read_study_file, write_recipe, write_study_file, \
    write_trials_csv
from cifarctl.tune.search import TRIALS, base_config, enqueue_default, measure_bounds
from cifarctl.tune.study import TuneSpec, create_study, load_study, now_text, open_storage, require_optuna

BEST = "best.toml"
CSV = "trials.csv"
PLOT = "trials.png"


@dataclass
class Session:
    """An open study: its folder, Optuna's study, what it searches, its name and where its trials are stored."""

    folder: Path
    study: Any
    spec: TuneSpec
    name: str
    storage: str | None  # a URL (or journal path) given with --storage; None: the folder's journal

    def best_trial(self) -> Any | None:
        optuna = require_optuna()
        done = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        return max(done, key=lambda t: t.value) if done else None


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
          name: str | None = None, notify: Callable[[str], None] = lambda _text: None) -> Session:
    """A new study in ``folder``: the lr range tests on ``data`` (the validation view), then the study itself."""
    name = name or folder.name
    base_config(spec)  # an unknown recipe or a setting that contradicts another fails here, before any file
    with _new_folder(folder):
        opened = open_storage(folder, storage)
        spec = measure_bounds(spec, data, device, notify)
        spec.created = now_text()
        study = create_study(opened, name, spec)
        if enqueue_default(study, spec):
            notify("trial 0 is the model's own recipe, as near as the search's settings hold it: the one to beat")
        write_study_file(folder, spec, storage, name)
    return Session(folder, study, spec, name, storage)


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


def write_files(session: Session) -> dict[str, Path]:
    """``trials.csv``, ``best.toml`` (the best trial's recipe) and ``trials.png``, from the study as it is now."""
    trials = session.study.get_trials(deepcopy=False)
    written = {"csv": session.folder / CSV}
    with _writing:
        write_trials_csv(session.folder / CSV, trials)
        best = session.best_trial()
        if best is not None:
            write_recipe(session.folder / BEST, session.spec, best, session.name)
            written["best"] = session.folder / BEST
        if plot_trials(session.folder / PLOT, trials, f"{session.name}: held-out accuracy"):
            written["plot"] = session.folder / PLOT
    return written


def write_trial_recipe(session: Session, number: int, path: Path) -> Path:
    """Trial ``number``'s recipe as a config file, as ``best.toml`` holds the best one's."""
    trials = {t.number: t for t in session.study.get_trials(deepcopy=False)}
    if number not in trials:
        raise UsageError(f"the study has no trial {number} (it has {len(trials)}: 0 to {len(trials) - 1})")
    write_recipe(path, session.spec, trials[number], session.name)
    return path


def trial_dirs(session: Session) -> Path:
    return session.folder / TRIALS


CONFIRM = "confirm"


def confirm(session: Session, seeds: list[int], data: CIFAR10, stop: threading.Event | None = None,
            hooks: Any = None) -> tuple[Path, Path, Any]:
    """The best trial's recipe and the model's default, each trained on all the training images with ``seeds`` in
    the trial budget and scored on the test set (the one part of ``tune`` that reads it): the two groups'
    folders and their comparison (``runs compare DEFAULT BEST``). Groups already trained are resumed, not redone."""
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
    for label, cfg in configs.items():
        folder = folders[label] = session.folder / CONFIRM / label
        if is_group(folder):
            resume_group(folder, data, model_spec=cfg.model, hooks=hooks, stop=stop)
        else:
            train_group(cfg, seeds, data, folder, hooks=hooks, stop=stop)
    return folders["default"], folders["best"], compare_folders(folders["default"], folders["best"])
