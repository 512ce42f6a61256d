"""The CIFAR-10 dataset in memory and its on-disk cache.

The cache is four ``.npy`` arrays (uint8 images NHWC, uint8 labels) plus ``manifest.json`` with
their sha256 and shapes. It is built in a temporary folder that is renamed into place only when
complete, so an interrupted import never leaves a cache that reads as valid. Replacing an existing
cache takes two renames (the old folder aside, the new one in): a crash between them leaves the
old cache aside, complete, and the next reader puts it back; never a mixed or half-written one.
Writers hold the cache's lock (``cifarctl.data.prepare``), and clean up what a killed one left.
Loading it is a few ``np.load`` calls: well under a second.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cifarctl import paths
from cifarctl.errors import DatasetError

CLASSES: tuple[str, ...] = ("airplane", "automobile", "bird", "cat", "deer",
                            "dog", "frog", "horse", "ship", "truck")
CACHE_FORMAT = 1
_ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")
_MANIFEST = "manifest.json"


@dataclass
class CIFAR10:
    """CIFAR-10 as uint8 tensors: images ``[N, 32, 32, 3]`` (HWC, as the official files), labels ``[N]``."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...] = CLASSES
    source: str = ""
    converted: dict[str, int] = field(default_factory=dict)  # images converted to 8-bit RGB on import, by mode
    held_out: bool = False  # the "test" split is training images held out (a tune trial's): no test-set number applies

    def split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images, labels)`` of the train or the test split."""
        if train:
            return self.train_images, self.train_labels
        return self.test_images, self.test_labels

    def __post_init__(self) -> None:
        for name in ("train", "test"):
            images, labels = self.split(name == "train")
            if images.dtype != torch.uint8 or images.dim() != 4 or tuple(images.shape[1:]) != (32, 32, 3):
                raise DatasetError(f"{name} images must be uint8 [N, 32, 32, 3], got {images.dtype} {list(images.shape)}")
            if labels.shape != (images.shape[0],):
                raise DatasetError(f"{name} has {images.shape[0]} images but {labels.numel()} labels")
            if labels.numel() and int(labels.max()) >= len(self.classes):
                raise DatasetError(f"{name} labels must be below {len(self.classes)}")


@dataclass
class CacheInfo:
    """What is in the cache folder."""

    path: Path
    train: int
    test: int
    source: str


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_info(root: Path | None = None) -> CacheInfo | None:
    """The cache's manifest as ``CacheInfo``, or None where there is no complete cache."""
    root = root or paths.dataset_dir()
    recover_cache(root)
    try:
        manifest = json.loads((root / _MANIFEST).read_text(encoding="utf-8"))
        if manifest.get("format") != CACHE_FORMAT:
            return None
        return CacheInfo(root, manifest["counts"]["train"], manifest["counts"]["test"], manifest.get("source", ""))
    except (OSError, ValueError, KeyError, TypeError):
        return None


STAGING_PREFIX = ".cifar10-building-"


def _moved_aside(root: Path) -> list[Path]:
    """Caches that ``write_cache`` moved aside to put a new one in place (newest first)."""
    found = [p for p in root.parent.glob(f".{root.name}-old-*") if (p / _MANIFEST).is_file()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def recover_cache(root: Path) -> None:
    """Put back a complete cache that a writer killed between its two renames left moved aside."""
    if root.exists() or not root.parent.is_dir():
        return
    for aside in _moved_aside(root):
        try:
            aside.rename(root)
            return
        except OSError:  # another process put it back first
            continue


def remove_leftovers(root: Path) -> None:
    """With the cache's lock held: restore a cache left moved aside, and delete half-built folders."""
    recover_cache(root)
    for leftover in [*root.parent.glob(f"{STAGING_PREFIX}*"), *_moved_aside(root)]:
        shutil.rmtree(leftover, ignore_errors=True)


def write_cache(data: CIFAR10, root: Path | None = None) -> CacheInfo:
    """Write ``data`` as the cache at ``root``, replacing any cache there.

    Never half-written: the new cache appears complete or not at all (see the module docstring).
    """
    root = root or paths.dataset_dir()
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=root.parent))
    try:
        files = {}
        arrays = {
            "train_images": data.train_images, "train_labels": data.train_labels.to(torch.uint8),
            "test_images": data.test_images, "test_labels": data.test_labels.to(torch.uint8),
        }
        for name, tensor in arrays.items():
            path = staging / f"{name}.npy"
            np.save(path, tensor.contiguous().numpy())
            files[name] = {"sha256": _sha256(path), "bytes": path.stat().st_size, "shape": list(tensor.shape)}
        manifest = {
            "format": CACHE_FORMAT,
            "classes": list(data.classes),
            "counts": {"train": len(data.train_labels), "test": len(data.test_labels)},
            "source": data.source,
            "files": files,
        }
        manifest["manifest_sha256"] = _manifest_digest(manifest)
        # The manifest is written last: a folder without one is never taken for a cache.
        (staging / _MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        old = None
        if root.exists():
            old = root.with_name(f".{root.name}-old-{staging.name}")
            root.rename(old)
        staging.rename(root)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    info = cache_info(root)
    assert info is not None
    return info


def _manifest_digest(manifest: dict) -> str:
    """sha256 of the manifest's own content (without this digest), so a flipped byte in it is caught."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def load_cifar10(root: Path | None = None, verify: bool = False, test: bool = True) -> CIFAR10:
    """Load the cached dataset (see ``cifarctl download``).

    The test split's arrays (30 MB) are always checked against the manifest's sha256, so no
    reported accuracy comes from altered test images or labels; ``verify=True`` checks the train
    split's too (150 MB, ``download`` and ``--verify`` do). ``test=False`` never opens the test split's
    files (``cifarctl tune`` chooses on training images alone): the result's test split is empty.
    Usage: ``data = load_cifar10(); images, labels = data.split(train=True)``
    """
    root = root or paths.dataset_dir()
    try:
        manifest = json.loads((root / _MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"CIFAR-10 is not in {root}: run `cifarctl download` "
                           "(or `cifarctl download --from PATH` offline)") from None
    except (OSError, ValueError) as exc:
        raise DatasetError(f"the dataset cache in {root} is unreadable ({exc}): run `cifarctl download --force`") from None
    if not isinstance(manifest, dict) or manifest.get("manifest_sha256", _manifest_digest(manifest)) != \
            _manifest_digest(manifest):
        raise DatasetError(f"the dataset cache's manifest {root / _MANIFEST} is damaged (its checksum does not "
                           "match): run `cifarctl download --force`")
    arrays = {}
    for name in _ARRAYS if test else _ARRAYS[:2]:
        path = root / f"{name}.npy"
        entry = manifest.get("files", {}).get(name, {})
        check = verify or name.startswith("test_")
        try:
            if path.stat().st_size != entry.get("bytes") or (check and _sha256(path) != entry.get("sha256")):
                raise ValueError("size or checksum differs from the manifest")
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DatasetError(f"the dataset cache file {path} is damaged ({exc}): "
                               "run `cifarctl download --force`") from None
        arrays[name] = torch.from_numpy(array)
    empty = (torch.zeros(0, 32, 32, 3, dtype=torch.uint8), torch.zeros(0, dtype=torch.long))
    return CIFAR10(
        arrays["train_images"], arrays["train_labels"].long(),
        arrays.get("test_images", empty[0]), arrays.get("test_labels", empty[1]).long(),
        classes=tuple(manifest.get("classes", CLASSES)), source=manifest.get("source", ""),
    )


def fake_cifar10(train: int = 50_000, test: int = 10_000, seed: int = 0) -> CIFAR10:
    """Random CIFAR-shaped data for smoke tests and benchmarks (no download; nothing to learn)."""
    gen = torch.Generator().manual_seed(seed)
    return CIFAR10(
        torch.randint(0, 256, (train, 32, 32, 3), dtype=torch.uint8, generator=gen),
        torch.randint(0, 10, (train,), generator=gen),
        torch.randint(0, 256, (test, 32, 32, 3), dtype=torch.uint8, generator=gen),
        torch.randint(0, 10, (test,), generator=gen),
        source="fake",
    )
