"""Where cifarctl keeps its data.

The dataset is a cache (safe to delete, it can be fetched again) and lives under the user cache
dir; checkpoints are the result of hours of training and live under the user data dir, where a
cache cleaner does not reach. ``CIFARCTL_HOME=DIR`` puts both under ``DIR``.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "cifarctl"
HOME_ENV = "CIFARCTL_HOME"
# Where a run folder or checkpoint is asked for: the newest one of the model (a bare ``--resume`` or ``--ckpt``).
NEWEST = "\0newest"


def _home() -> Path | None:
    value = os.environ.get(HOME_ENV)
    if not value:
        return None
    home = Path(value).expanduser()
    if home.exists() and not home.is_dir():
        from cifarctl.errors import UsageError

        raise UsageError(f"{HOME_ENV}={value} is a file, not a folder: point it at a folder (or unset it)")
    return home


def cache_root() -> Path:
    """Root for re-creatable data (the dataset, partial downloads)."""
    home = _home()
    return home / "cache" if home else Path(platformdirs.user_cache_dir(APP_NAME))


def data_root() -> Path:
    """Root for things worth keeping (checkpoints and run folders)."""
    home = _home()
    return home / "data" if home else Path(platformdirs.user_data_dir(APP_NAME))


def dataset_dir() -> Path:
    """The folder holding the imported CIFAR-10 cache."""
    return cache_root() / "cifar10"


def downloads_dir() -> Path:
    """Where archives are downloaded (and partial downloads kept for resuming)."""
    return cache_root() / "downloads"


def runs_root() -> Path:
    """Run folders (one per training run), grouped by model name."""
    return data_root() / "runs"
