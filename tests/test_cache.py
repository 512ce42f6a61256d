import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cifarctl import paths
from cifarctl.data import cache_info, import_cifar10, load_cifar10
from cifarctl.data.cifar10 import write_cache
from cifarctl.errors import DatasetError

from conftest import tiny_dataset


def test_home_puts_cache_and_checkpoints_under_it(home: Path) -> None:
    assert paths.dataset_dir() == home / "cache" / "cifar10"
    assert paths.runs_root() == home / "data" / "runs"


def test_default_roots_are_platformdirs(monkeypatch) -> None:
    import platformdirs

    monkeypatch.delenv("CIFARCTL_HOME", raising=False)
    assert paths.cache_root() == Path(platformdirs.user_cache_dir("cifarctl"))
    assert paths.data_root() == Path(platformdirs.user_data_dir("cifarctl"))
    assert paths.cache_root() != paths.data_root()


def test_round_trip(home: Path) -> None:
    data = tiny_dataset()
    write_cache(data)
    loaded = load_cifar10(verify=True)
    assert torch.equal(loaded.train_images, data.train_images)
    assert torch.equal(loaded.test_labels, data.test_labels)
    assert cache_info().train == 200


def test_interrupted_write_leaves_no_valid_cache(home: Path, monkeypatch) -> None:
    calls = {"n": 0}
    real_save = np.save

    def crash_on_third(path, array, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_save(path, array, *args, **kwargs)

    monkeypatch.setattr(np, "save", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        write_cache(tiny_dataset())
    assert cache_info() is None
    assert list(paths.cache_root().iterdir()) == []  # the staging folder is gone too
    with pytest.raises(DatasetError, match="cifarctl download"):
        load_cifar10()


def test_interrupted_rebuild_keeps_the_old_cache(home: Path, monkeypatch) -> None:
    write_cache(tiny_dataset())
    monkeypatch.setattr(np, "save", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        write_cache(tiny_dataset(train=100))
    assert cache_info().train == 200


def test_damaged_file_is_detected(home: Path) -> None:
    write_cache(tiny_dataset())
    target = paths.dataset_dir() / "train_images.npy"
    target.write_bytes(target.read_bytes()[:-10])
    with pytest.raises(DatasetError, match="damaged"):
        load_cifar10()


def _flip(path: Path, offset: int = -1) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_flipped_byte_in_the_train_split_is_caught_by_verify(home: Path) -> None:
    write_cache(tiny_dataset())
    _flip(paths.dataset_dir() / "train_images.npy")
    load_cifar10()  # sizes still match: a plain load does not hash the 150 MB train split
    with pytest.raises(DatasetError, match="checksum"):
        load_cifar10(verify=True)


@pytest.mark.parametrize("name", ["test_images.npy", "test_labels.npy"])
def test_the_test_split_is_always_checked(home: Path, name: str) -> None:
    write_cache(tiny_dataset())
    _flip(paths.dataset_dir() / name)  # same size, one changed image or label
    with pytest.raises(DatasetError, match=rf"{name} is damaged \(size or checksum differs"):
        load_cifar10()


@pytest.mark.parametrize("offset", [40, 120, -30])
def test_a_flipped_byte_in_the_manifest_is_caught(home: Path, offset: int) -> None:
    write_cache(tiny_dataset())
    _flip(paths.dataset_dir() / "manifest.json", offset)
    with pytest.raises(DatasetError, match="manifest|unreadable|damaged"):
        load_cifar10()


def test_second_import_does_nothing_unless_forced(home: Path, batches_dir: Path) -> None:
    assert import_cifar10(batches_dir).action == "imported"
    manifest = json.loads((paths.dataset_dir() / "manifest.json").read_text())
    assert manifest["counts"] == {"train": 200, "test": 50}
    assert import_cifar10(batches_dir).action == "present"
    assert import_cifar10(batches_dir, force=True).action == "imported"
