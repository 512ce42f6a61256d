"""Shared fixtures: an isolated CIFARCTL_HOME and tiny CIFAR-10 datasets in the official formats."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cifarctl.data.cifar10 import CIFAR10, CLASSES, write_cache
from cifarctl.progress import NullProgress

def plain_cnn(num_classes: int = 10) -> torch.nn.Module:
    """No BatchNorm and no dropout: a batch split across ranks or into chunks computes the whole batch's gradient."""
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten(),
                         nn.Linear(8 * 8 * 8, num_classes))


# A quick CPU run in fp32: resnet50 in batches of 50 on ``tiny_dataset`` (4 steps an epoch).
FAST = dict(model="resnet50", batch_size=50, device="cpu", eval_batch_size=50, log_every=1, amp=False)

TRAIN_PER_BATCH = 40   # 5 batches -> 200 training images
TEST_IMAGES = 50


def make_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose mean colour depends on the class, so a model can learn something from them."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    base = (labels[:, None, None, None] * 23 + np.array([0, 80, 160])) % 256
    noise = rng.integers(-40, 40, size=(n, 32, 32, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8), labels.astype(np.int64)


def _batch_bytes(images: np.ndarray, labels: np.ndarray, name: str) -> bytes:
    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # official layout: CHW rows
    batch = {b"batch_label": name.encode(), b"labels": labels.tolist(), b"data": data,
             b"filenames": [f"{i}.png".encode() for i in range(len(images))]}
    return pickle.dumps(batch, protocol=2)


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty CIFARCTL_HOME for the test."""
    root = tmp_path / "home"
    monkeypatch.setenv("CIFARCTL_HOME", str(root))
    return root


@pytest.fixture()
def batches_dir(tmp_path: Path) -> Path:
    """An extracted ``cifar-10-batches-py`` folder with 200 train and 50 test images."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        images, labels = make_images(TRAIN_PER_BATCH, seed=i)
        (folder / f"data_batch_{i}").write_bytes(_batch_bytes(images, labels, f"training batch {i}"))
    images, labels = make_images(TEST_IMAGES, seed=99)
    (folder / "test_batch").write_bytes(_batch_bytes(images, labels, "testing batch"))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [c.encode() for c in CLASSES]}))
    return folder


@pytest.fixture()
def official_archive(tmp_path: Path, batches_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``cifar-10-python.tar.gz`` in the official layout; its md5 is injected as the expected one."""
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(batches_dir, arcname="cifar-10-batches-py")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setattr("cifarctl.data.sources.ARCHIVE_MD5", md5)
    return archive


def write_image_tree(root: Path, per_class: int = 4, test_per_class: int = 2, fmt: str = "png") -> Path:
    for split, count, seed in (("train", per_class, 1), ("test", test_per_class, 2)):
        images, labels = make_images(count * 10, seed)
        for i, (image, label) in enumerate(zip(images, labels)):
            folder = root / split / CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:04d}.{fmt}")
    return root


@pytest.fixture()
def image_tree(tmp_path: Path) -> Path:
    """``train/<class>/*.png`` (40 images) and ``test/<class>/*.png`` (20 images)."""
    return write_image_tree(tmp_path / "cifar10-images")


def tiny_dataset(train: int = 200, test: int = 50) -> CIFAR10:
    x, y = make_images(train, seed=1)
    tx, ty = make_images(test, seed=2)
    return CIFAR10(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(tx), torch.from_numpy(ty),
                   source="synthetic")


@pytest.fixture()
def cached(home: Path) -> CIFAR10:
    """A tiny dataset already in the cache of an isolated home."""
    data = tiny_dataset()
    write_cache(data)
    return data


@pytest.fixture()
def raw_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save({"x": torch.zeros(1)}, buf)
    return buf.getvalue()


def weights_digest(run_dir: Path) -> str:
    """The sha256 of a run's final weights (``last.pt``), tensor by tensor in key order: equal only when every
    weight is equal to the last bit."""
    state = torch.load(Path(run_dir) / "last.pt", map_location="cpu", weights_only=True)["model"]
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].contiguous().numpy().tobytes())
    return digest.hexdigest()


class StopAfterAdvances(NullProgress):
    """A progress sink that asks the training loop to stop once it has advanced ``steps`` steps
    (whatever ``log_every`` is: every step advances the bar by one)."""

    def __init__(self, stop, steps: int) -> None:
        self.stop, self.steps, self.seen = stop, steps, 0

    def advance(self, amount: float = 0, **info: object) -> None:
        self.seen += amount
        if self.seen >= self.steps:
            self.stop.set()
