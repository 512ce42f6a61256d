"""Read CIFAR-10 from what a user has: the official archive, its extracted folder, or image folders.

Accepted, by ``read_source(path)``:

* the official ``cifar-10-python.tar.gz`` (md5-checked),
* an extracted ``cifar-10-batches-py/`` folder (or a folder holding one),
* an image tree ``train/<class>/*`` and ``test/<class>/*`` (PNG or JPEG, 32x32, the ten class names),
* a ``.tar``, ``.tar.gz`` or ``.zip`` of either.

Archives are read member by member in memory: nothing is extracted to disk, so no member name can
write outside a target folder. Batch files are unpickled with a loader that admits numpy arrays only.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import tarfile
import zipfile
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterator

import numpy as np
import torch
from PIL import Image

from cifarctl.data.cifar10 import CIFAR10, CLASSES
from cifarctl.data.images import to_rgb
from cifarctl.errors import DatasetError
from cifarctl.progress import NullProgress, Progress

ARCHIVE_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"

_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST_BATCH = "test_batch"
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_ARCHIVE_RE = re.compile(r"\.(tar|tar\.gz|tgz|tar\.bz2|tar\.xz|zip)$", re.IGNORECASE)
_EXPECTED = ("expected the official cifar-10-python.tar.gz, a cifar-10-batches-py folder, or image "
             "folders train/<class>/*.png|jpg and test/<class>/* (or a .tar/.tar.gz/.zip of them)")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """CIFAR batches hold dicts of bytes, lists and numpy arrays; anything else is refused."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 spell bytes
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch file")


def _read_batch(raw: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch.get(b"labels", batch.get(b"fine_labels")), dtype=np.int64)
        images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # official CHW rows -> HWC
    except Exception as exc:  # noqa: BLE001  (any malformed batch is one user-facing error)
        raise DatasetError(f"{name} is not a CIFAR-10 python batch ({exc})") from None
    if len(labels) != len(images):
        raise DatasetError(f"{name} has {len(images)} images but {len(labels)} labels")
    return np.ascontiguousarray(images), labels


class _CountingReader(io.RawIOBase):
    """Wraps a file to report how many compressed bytes were read (for progress)."""

    def __init__(self, fh: BinaryIO, progress: Progress) -> None:
        self._fh, self._progress = fh, progress

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = self._fh.readinto(buffer)  # type: ignore[attr-defined]
        self._progress.advance(n or 0)
        return n or 0


def _inside(name: str, archive: Path) -> str:
    """``name`` unchanged if it stays inside the archive's root; else the archive is refused.

    Nothing is ever extracted, so such a member could not write anywhere; but an archive built to
    escape its folder is not a dataset to trust.
    """
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or re.match(r"^[A-Za-z]:", name):
        raise DatasetError(f"{archive} has a member outside its root ({name!r}); refusing the archive: "
                           "rebuild it from the dataset folder")
    return name


def _iter_tar(path: Path, progress: Progress) -> Iterator[tuple[str, bytes]]:
    progress.start(f"reading {path.name}", path.stat().st_size, "bytes")
    with open(path, "rb") as raw, tarfile.open(fileobj=io.BufferedReader(_CountingReader(raw, progress)), mode="r|*") as tar:
        for member in tar:
            _inside(member.name, path)
            if member.isfile():
                fh = tar.extractfile(member)
                if fh is not None:
                    yield member.name, fh.read()
    progress.finish()


def _iter_zip(path: Path, progress: Progress) -> Iterator[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        progress.start(f"reading {path.name}", len(infos), "files")
        for info in infos:
            yield _inside(info.filename, path), zf.read(info)
            progress.advance(1)
    progress.finish()


def _iter_folder(path: Path, progress: Progress) -> Iterator[tuple[str, bytes]]:
    files = sorted(p for p in path.rglob("*") if p.is_file())
    progress.start(f"reading {path.name}/", len(files), "files")
    for file in files:
        yield file.relative_to(path).as_posix(), file.read_bytes()
        progress.advance(1)
    progress.finish()


def _decode_image(raw: bytes, name: str, converted: Counter[str]) -> np.ndarray:
    """8-bit RGB pixels of one image; images in other modes (CMYK, 16-bit, palette...) are converted
    and counted in ``converted`` by their mode."""
    try:
        with Image.open(io.BytesIO(raw)) as img:
            img.load()  # decode now: a truncated file fails here, not later
            mode = img.mode
            array = np.asarray(to_rgb(img), dtype=np.uint8)
    except Exception as exc:  # noqa: BLE001  (PIL raises many types on bad files)
        raise DatasetError(f"cannot read image {name} ({exc}): replace or remove it") from None
    if mode != "RGB":
        converted[mode] += 1
    if array.shape != (32, 32, 3):
        raise DatasetError(f"image {name} is {array.shape[1]}x{array.shape[0]}; CIFAR-10 images are 32x32")
    return array


def _collect(members: Iterator[tuple[str, bytes]], label: str) -> CIFAR10:
    """Build the dataset from (relative name, bytes) pairs of either layout."""
    batches: dict[str, bytes] = {}
    images: dict[str, list[tuple[int, str, np.ndarray]]] = {"train": [], "test": []}
    class_index = {c: i for i, c in enumerate(CLASSES)}
    converted: Counter[str] = Counter()
    for name, raw in members:
        parts = PurePosixPath(name).parts
        if not parts or parts[-1].startswith("."):
            continue
        if parts[-1] in _TRAIN_BATCHES or parts[-1] == _TEST_BATCH:
            batches[parts[-1]] = raw
        elif len(parts) >= 3 and parts[-3] in images and parts[-1].lower().endswith(_IMAGE_SUFFIXES):
            if parts[-2] not in class_index:
                raise DatasetError(f"{label}: {'/'.join(parts[-3:-1])}/ is not a CIFAR-10 class folder; the "
                                   f"classes are {', '.join(CLASSES)}: rename or remove it")
            images[parts[-3]].append((class_index[parts[-2]], parts[-1], _decode_image(raw, name, converted)))

    if batches:
        missing = [b for b in (*_TRAIN_BATCHES, _TEST_BATCH) if b not in batches]
        if missing:
            raise DatasetError(f"{label} lacks CIFAR-10 batch files: {', '.join(missing)}")
        train = [_read_batch(batches[b], b) for b in _TRAIN_BATCHES]
        test_x, test_y = _read_batch(batches[_TEST_BATCH], _TEST_BATCH)
        train_x = np.concatenate([x for x, _ in train])
        train_y = np.concatenate([y for _, y in train])
        return CIFAR10(torch.from_numpy(train_x), torch.from_numpy(train_y),
                       torch.from_numpy(test_x), torch.from_numpy(test_y), source=label)

    if not images["train"] or not images["test"]:
        found = "no" if not (images["train"] or images["test"]) else "only one split of"
        raise DatasetError(f"{label}: {found} CIFAR-10 images found; {_EXPECTED}")
    split = {}
    for name, items in images.items():
        items.sort(key=lambda item: (item[0], item[1]))  # class, then file name: a stable order
        split[name] = (torch.from_numpy(np.stack([a for _, _, a in items])),
                       torch.tensor([c for c, _, _ in items], dtype=torch.int64))
    return CIFAR10(*split["train"], *split["test"], source=label, converted=dict(converted))


def is_official_archive(path: Path) -> bool:
    """Whether ``path`` is a tar archive laid out as the official python version."""
    try:
        with tarfile.open(path, mode="r:*") as tar:
            first = tar.next()
            return first is not None and first.name.split("/")[0] == "cifar-10-batches-py"
    except (tarfile.TarError, OSError):
        return False


def check_readable(path: Path) -> None:
    """Raise ``DatasetError`` unless ``path`` exists and can be read (a folder: listed; a file: opened)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"{path} does not exist; {_EXPECTED}")
    try:
        if path.is_dir():
            next(path.iterdir(), None)
        else:
            with open(path, "rb") as fh:
                fh.read(1)
    except OSError as exc:
        raise DatasetError(f"{path} cannot be read ({exc.strerror or exc})") from None


def read_source(path: Path, expected_md5: str | None = None, progress: Progress | None = None) -> CIFAR10:
    """Read CIFAR-10 from ``path`` (any accepted layout, see the module docstring).

    ``expected_md5`` (default: the official archive's) is checked for the official archive only:
    a file named ``cifar-10-python.tar.gz`` (or any file when ``expected_md5`` is given) that is laid
    out as the official one. A user's own tarball of an extracted ``cifar-10-batches-py`` folder is
    read like the folder (its batches are checked as they are parsed).
    """
    progress = progress or NullProgress()
    path = Path(path).expanduser()
    label = str(path)
    check_readable(path)
    if path.is_dir():
        return _collect(_iter_folder(path, progress), label)
    if not _ARCHIVE_RE.search(path.name):
        raise DatasetError(f"{path} is not a folder or a .tar/.tar.gz/.zip archive; {_EXPECTED}")
    if path.suffix.lower() == ".zip":
        try:
            return _collect(_iter_zip(path, progress), label)
        except zipfile.BadZipFile as exc:
            raise DatasetError(f"{path} is not a readable zip archive ({exc})") from None
    if (expected_md5 or path.name == ARCHIVE_NAME) and is_official_archive(path):
        verify_md5(path, expected_md5 or ARCHIVE_MD5)
    try:
        return _collect(_iter_tar(path, progress), label)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DatasetError(f"{path} is not a readable tar archive ({exc}); is it complete?") from None


def verify_md5(path: Path, expected: str) -> None:
    """Raise ``DatasetError`` unless ``path``'s md5 is ``expected``."""
    # Imported here: torchvision's package import costs a second that `inspect` should not pay.
    from torchvision.datasets.utils import calculate_md5

    actual = calculate_md5(os.fspath(path))
    if actual != expected:
        raise DatasetError(f"{path} has md5 {actual}, expected {expected}: the file is incomplete or "
                           "not the official archive; download it again")
