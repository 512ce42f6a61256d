"""Dataset selection shared by train and evaluate: the library's, with a line that says where it is."""

from __future__ import annotations

from cifarctl import paths
from cifarctl.cli.render import RichProgress, err_console
from cifarctl.data import CIFAR10, dataset_for


def load_data(choice: str, offline: bool, quiet: bool = False, verify: bool = False) -> CIFAR10:
    """``cifar10`` (downloaded when missing unless ``offline``) or ``fake`` (``dataset_for``).

    The test split is always checked against its sha256; ``verify`` checks the train split too.
    """
    if choice == "cifar10" and not quiet:
        err_console().print(f"dataset: {paths.dataset_dir()}")
    return dataset_for(choice, offline, progress=RichProgress(), verify=verify)
