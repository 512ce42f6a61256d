import io
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cifarctl.data import import_cifar10, load_cifar10
from cifarctl.data.sources import read_source
from cifarctl.errors import DatasetError

from conftest import TEST_IMAGES, TRAIN_PER_BATCH, make_images, write_image_tree


def test_official_archive_imports_with_its_md5(home: Path, official_archive: Path) -> None:
    result = import_cifar10(official_archive)
    assert result.action == "imported"
    data = load_cifar10()
    assert data.train_images.shape == (5 * TRAIN_PER_BATCH, 32, 32, 3)
    assert data.test_images.shape == (TEST_IMAGES, 32, 32, 3)
    images, labels = make_images(TRAIN_PER_BATCH, seed=1)   # batch 1 comes first, pixels exactly kept
    assert np.array_equal(data.train_images[:TRAIN_PER_BATCH].numpy(), images)
    assert np.array_equal(data.train_labels[:TRAIN_PER_BATCH].numpy(), labels)


def test_official_archive_with_wrong_md5_is_refused(home: Path, official_archive: Path, monkeypatch) -> None:
    monkeypatch.setattr("cifarctl.data.sources.ARCHIVE_MD5", "0" * 32)
    with pytest.raises(DatasetError, match="md5"):
        import_cifar10(official_archive)
    assert not (home / "cache" / "cifar10").exists()


def test_a_users_own_tarball_of_the_batches_folder_is_accepted(home: Path, batches_dir: Path, tmp_path: Path) -> None:
    # Not the official archive (its md5 differs): it is read as the folder it holds, not refused.
    for name in ("mine.tar.gz", "mine.zip"):
        archive = tmp_path / name
        if name.endswith(".zip"):
            with zipfile.ZipFile(archive, "w") as zf:
                for f in batches_dir.iterdir():
                    zf.write(f, f"cifar-10-batches-py/{f.name}")
        else:
            with tarfile.open(archive, "w:gz") as tar:
                tar.add(batches_dir, arcname="cifar-10-batches-py")
        data = read_source(archive)
        assert np.array_equal(data.train_images.numpy(), read_source(batches_dir).train_images.numpy())


def test_extracted_batches_folder_and_its_parent(home: Path, batches_dir: Path) -> None:
    a = read_source(batches_dir)
    b = read_source(batches_dir.parent)
    assert np.array_equal(a.train_images.numpy(), b.train_images.numpy())
    assert len(a.test_labels) == TEST_IMAGES


def test_image_tree_folder_sorted_by_class_then_name(image_tree: Path) -> None:
    data = read_source(image_tree)
    assert len(data.train_labels) == 40 and len(data.test_labels) == 20
    assert data.train_labels.tolist() == sorted(data.train_labels.tolist())


@pytest.mark.parametrize("kind", ["tar.gz", "tar", "zip"])
def test_archives_of_an_image_tree(tmp_path: Path, image_tree: Path, kind: str) -> None:
    archive = tmp_path / f"images.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as zf:
            for f in image_tree.rglob("*.png"):
                zf.write(f, f.relative_to(image_tree.parent).as_posix())
    else:
        with tarfile.open(archive, "w:gz" if kind == "tar.gz" else "w") as tar:
            tar.add(image_tree, arcname="cifar10-images")
    from_archive = read_source(archive)
    from_folder = read_source(image_tree)
    assert np.array_equal(from_archive.train_images.numpy(), from_folder.train_images.numpy())
    assert np.array_equal(from_archive.test_labels.numpy(), from_folder.test_labels.numpy())


def test_jpeg_tree(tmp_path: Path) -> None:
    data = read_source(write_image_tree(tmp_path / "jpg", fmt="jpg"))
    assert data.train_images.shape == (40, 32, 32, 3)


def test_archive_members_never_write_outside(tmp_path: Path, image_tree: Path) -> None:
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(image_tree, arcname="cifar10-images")
        payload = b"owned"
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(DatasetError, match=r"member outside its root \('\.\./\.\./escaped\.txt'\)"):
        read_source(archive)
    assert not (tmp_path.parent / "escaped.txt").exists()
    assert not (tmp_path / "escaped.txt").exists()


def test_pickled_code_in_a_batch_is_refused(batches_dir: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (batches_dir / "data_batch_1").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(DatasetError, match="refusing"):
        read_source(batches_dir)


def test_missing_batch_is_named(batches_dir: Path) -> None:
    (batches_dir / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match="data_batch_3"):
        read_source(batches_dir)


def test_wrong_image_size_is_reported(tmp_path: Path, image_tree: Path) -> None:
    from PIL import Image

    Image.new("RGB", (64, 64)).save(image_tree / "train" / "cat" / "big.png")
    with pytest.raises(DatasetError, match="64x64"):
        read_source(image_tree)


def test_folder_without_cifar_is_explained(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="expected the official"):
        read_source(tmp_path / "empty")


def test_truncated_archive_is_an_error(tmp_path: Path, image_tree: Path) -> None:
    archive = tmp_path / "images.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(image_tree, arcname="x")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DatasetError):
        read_source(archive)
