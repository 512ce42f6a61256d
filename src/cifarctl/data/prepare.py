"""Get CIFAR-10 into the cache: download the official archive or import what the user has."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from cifarctl import paths
from cifarctl.data import sources
from cifarctl.data.cifar10 import CIFAR10, CacheInfo, cache_info, load_cifar10, remove_leftovers, write_cache
from cifarctl.data.download import download_file
from cifarctl.errors import DatasetError, UsageError
from cifarctl.locks import exclusive
from cifarctl.progress import NullProgress, Progress


@contextlib.contextmanager
def cache_writer(root: Path, notify: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the cache's lock while writing it: a second writer waits (after ``notify`` says for whom).

    Inside, what a killed writer left (a half-built folder, a cache moved aside) is cleaned up or restored.
    """
    root.parent.mkdir(parents=True, exist_ok=True)

    def wait(who: str) -> None:
        (notify or (lambda _text: None))(f"waiting for {who} to finish writing the CIFAR-10 cache in {root}")

    with exclusive(root.parent, wait, wait=True):
        remove_leftovers(root)
        yield


@dataclass
class PrepareResult:
    """What ``download`` or ``import`` did: ``action`` is "downloaded", "imported" or "present"."""

    action: str
    cache: CacheInfo
    archive: Path | None = None
    converted: dict[str, int] = field(default_factory=dict)  # images converted to 8-bit RGB, by original mode


def import_cifar10(source: Path, root: Path | None = None, force: bool = False,
                   expected_md5: str | None = None, progress: Progress | None = None,
                   notify: Callable[[str], None] | None = None) -> PrepareResult:
    """Build the cache from a local archive or folder (see ``cifarctl.data.sources``).

    One writer at a time: a second import or download waits for the first (``notify`` says so),
    then finds the cache there.
    Usage: ``import_cifar10(Path("cifar-10-python.tar.gz"))``
    """
    root = root or paths.dataset_dir()
    sources.check_readable(Path(source))  # a typo in --from fails even when the cache is already there
    with cache_writer(root, notify):
        return _import(Path(source), root, force, expected_md5, progress)


def _import(source: Path, root: Path, force: bool, expected_md5: str | None,
            progress: Progress | None) -> PrepareResult:
    if not force and (info := cache_info(root)) is not None:
        load_cifar10(root, verify=True)  # say "present" only of a cache that checks out
        return PrepareResult("present", info)
    data = sources.read_source(source, expected_md5=expected_md5, progress=progress)
    return PrepareResult("imported", write_cache(data, root), archive=Path(source), converted=data.converted)


def download_cifar10(url: str | None = None, root: Path | None = None, force: bool = False,
                     expected_md5: str | None = None, progress: Progress | None = None,
                     notify: Callable[[str], None] | None = None) -> PrepareResult:
    """Download the official archive (md5-checked, resumable) and build the cache from it.

    One writer at a time, as ``import_cifar10``.
    Usage: ``download_cifar10()`` or ``download_cifar10(url="https://mirror/cifar-10-python.tar.gz")``
    """
    root = root or paths.dataset_dir()
    with cache_writer(root, notify):
        return _download(url, root, force, expected_md5, progress)


def _download(url: str | None, root: Path, force: bool, expected_md5: str | None,
              progress: Progress | None) -> PrepareResult:
    if not force and (info := cache_info(root)) is not None:
        load_cifar10(root, verify=True)  # say "present" only of a cache that checks out
        return PrepareResult("present", info)
    expected_md5 = expected_md5 or sources.ARCHIVE_MD5
    archive = paths.downloads_dir() / sources.ARCHIVE_NAME
    if archive.exists():
        try:
            sources.verify_md5(archive, expected_md5)
        except DatasetError:
            archive.unlink()
    if not archive.exists():
        download_file(url or sources.ARCHIVE_URL, archive, progress=progress)
        try:
            sources.verify_md5(archive, expected_md5)
        except DatasetError:
            archive.unlink()  # a wrong file must not be resumed from next time
            raise
    data = sources.read_source(archive, expected_md5=expected_md5, progress=progress)
    return PrepareResult("downloaded", write_cache(data, root), archive=archive)


def ensure_cifar10(offline: bool = False, progress: Progress | None = None, verify: bool = False,
                   test: bool = True) -> CIFAR10:
    """The cached dataset, downloading it first when missing (unless ``offline``); see ``load_cifar10``
    (``test=False``: its test files are not opened)."""
    if cache_info(paths.dataset_dir()) is None:
        if offline:
            raise DatasetError(f"CIFAR-10 is not in {paths.dataset_dir()} and --offline is set: run "
                               "`cifarctl download --from PATH` with the archive or an image folder")
        download_cifar10(progress=progress or NullProgress())
    return load_cifar10(verify=verify, test=test)


DATA_CHOICES = ("cifar10", "fake")


def dataset_for(choice: str, offline: bool = False, progress: Progress | None = None, verify: bool = False,
                test: bool = True) -> CIFAR10:
    """The dataset ``--data`` names: ``cifar10``, the cached dataset (downloaded when missing unless
    ``offline``); ``fake``, random images, no download. ``test=False``: the training images alone (the test
    split empty, its files never opened). Usage: ``dataset_for("fake")``"""
    if choice == "fake":
        from cifarctl.data.cifar10 import fake_cifar10

        return fake_cifar10() if test else fake_cifar10(test=0)
    if choice != "cifar10":
        raise UsageError(f"unknown --data {choice!r}: use {' or '.join(DATA_CHOICES)}")
    return ensure_cifar10(offline=offline, progress=progress, verify=verify, test=test)
