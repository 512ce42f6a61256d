"""Dataset selection shared by train and evaluate."""

from __future__ import annotations

from cifarctl import paths
from cifarctl.cli.render import RichProgress, err_console
from cifarctl.data import CIFAR10, ensure_cifar10, fake_cifar10
from cifarctl.errors import UsageError


def load_data(choice: str, offline: bool, quiet: bool = False, verify: bool = False) -> CIFAR10:
    """``cifar10`` (downloaded when missing unless ``offline``) or ``fake``.

    The test split is always checked against its sha256; ``verify`` checks the train split too.
    """
    if choice == "fake":
        return fake_cifar10()
    if choice != "cifar10":
        raise UsageError(f"unknown --data {choice!r}: use cifar10 or fake")
    if not quiet:
        err_console().print(f"dataset: {paths.dataset_dir()}")
    return ensure_cifar10(offline=offline, progress=RichProgress(), verify=verify)
