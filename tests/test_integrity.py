"""A damaged checkpoint or dataset never yields a silent number: every bad file is one clear line.

Includes a seeded fuzz test on a small real checkpoint: truncations, byte flips across the whole
file, and malformed files of every kind, each through `cifarctl evaluate`.
"""

from __future__ import annotations

import io
import json
import pickle
import random
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from cifarctl import paths
from cifarctl.cli import app
from cifarctl.engine import TrainConfig, train
from cifarctl.models.registry import is_model, register_model

from conftest import write_image_tree

if not is_model("fuzz_cnn"):
    @register_model
    def fuzz_cnn(num_classes: int = 10) -> nn.Module:
        """A few thousand parameters: a real checkpoint of a few dozen KB, quick to damage and load."""
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(8),
                             nn.Flatten(), nn.Linear(8 * 4 * 4, num_classes))


@pytest.fixture()
def checkpoint(cached, tmp_path: Path) -> Path:
    """A real cifarctl checkpoint (model, optimizer, scheduler, RNG, config) after two steps."""
    train(TrainConfig(model="fuzz_cnn", epochs=1, max_steps=2, batch_size=50, device="cpu", amp=False),
          cached, tmp_path / "run")
    return tmp_path / "run" / "last.pt"


def evaluate_cli(path: Path | str, model: str = "fuzz_cnn") -> tuple[int, str]:
    result = CliRunner().invoke(app, ["evaluate", model, "--ckpt", str(path), "--device", "cpu", "--offline"])
    return result.exit_code, result.output


INFO = ("dataset:", "evaluating ")  # what the command says it is about to do, before it fails


def assert_one_line_failure(code: int, output: str, words: str = "") -> None:
    lines = [line for line in output.splitlines() if line.strip() and not line.startswith(INFO)]
    assert code != 0, output
    assert len(lines) == 1 and "Traceback" not in output and "accuracy" not in output, output
    assert words in lines[0], output


# -- the five cases of the issue -------------------------------------------------------------

def test_a_text_file_is_not_a_checkpoint(cached, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("remember to train for longer\n" * 20)
    code, output = evaluate_cli(notes, "resnet50")
    assert_one_line_failure(code, output, "notes.txt is not a checkpoint (not a torch.save file)")


def _flip_64(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    start = len(raw) // 2
    for i in range(start, start + 64):
        raw[i] ^= 0x5A
    path.write_bytes(bytes(raw))


def test_flipped_bytes_in_a_real_checkpoint_are_caught(checkpoint: Path, tmp_path: Path) -> None:
    torch.save(_reference(checkpoint)["model"], tmp_path / "raw.pt")  # the course's kind: no digest
    _flip_64(checkpoint)
    code, output = evaluate_cli(checkpoint)
    assert_one_line_failure(code, output, "last.pt is damaged: its sha256 does not match the one recorded")
    _flip_64(tmp_path / "raw.pt")
    code, output = evaluate_cli(tmp_path / "raw.pt")
    assert_one_line_failure(code, output, "raw.pt is damaged: the checksum (CRC-32) of its record")


def test_test_labels_changed_in_place_are_caught(cached, checkpoint: Path) -> None:
    labels = paths.dataset_dir() / "test_labels.npy"
    array = np.load(labels)
    array[:5] = (array[:5] + 1) % 10  # same size, five labels moved
    np.save(labels, array)
    code, output = evaluate_cli(checkpoint)
    assert_one_line_failure(code, output, "test_labels.npy is damaged (size or checksum differs from the manifest)")


def test_download_from_a_missing_source_fails_even_with_a_cache(cached, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["download", "--from", str(tmp_path / "no" / "such" / "file")])
    assert_one_line_failure(result.exit_code, result.output, "file does not exist")
    good = write_image_tree(tmp_path / "images")
    skipped = CliRunner().invoke(app, ["download", "--from", str(good)])
    assert skipped.exit_code == 0 and "already in" in skipped.output and "was not read" in skipped.output


def test_a_folder_is_named_as_a_folder(checkpoint: Path) -> None:
    code, output = evaluate_cli(checkpoint.parent)
    assert_one_line_failure(code, output, "is a folder, not a checkpoint file")


# -- the fuzz test ---------------------------------------------------------------------------

def _reference(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_same, a, b))
    return a == b or (a != a and b != b)  # NaN == NaN here


@pytest.mark.parametrize("flavour, n_cuts, n_flips", [("cifarctl", 60, 240), ("raw state_dict", 20, 100)])
def test_fuzz_truncations_and_flips(checkpoint: Path, tmp_path: Path, flavour: str, n_cuts: int,
                                    n_flips: int) -> None:
    rng = random.Random(20261128)
    if flavour == "raw state_dict":  # as the course saved them: torch.save(model.state_dict(), f)
        torch.save(_reference(checkpoint)["model"], tmp_path / "raw.pt")
        checkpoint = tmp_path / "raw.pt"
    original = checkpoint.read_bytes()
    reference = _reference(checkpoint)
    damaged = tmp_path / "damaged.pt"
    cuts = sorted(rng.sample(range(len(original)), n_cuts))
    flips = sorted(rng.sample(range(len(original)), n_flips))
    uncovered = []
    for kind, positions in (("cut", cuts), ("flip", flips)):
        for pos in positions:
            if kind == "cut":
                damaged.write_bytes(original[:pos])
            else:
                raw = bytearray(original)
                raw[pos] ^= 1 << rng.randrange(8)
                damaged.write_bytes(bytes(raw))
            code, output = evaluate_cli(damaged)
            if code == 0:
                assert kind == "flip" and _same(reference, _reference(damaged)), (kind, pos, output)
                uncovered.append(pos)
                continue
            assert_one_line_failure(code, output)
    if flavour == "cifarctl":
        # The sha256 sealed into the zip comment at save time covers every byte: nothing slips by.
        assert not uncovered, uncovered
    else:
        # A raw state_dict has only the zip's per-record CRCs. The bytes they leave out are zip
        # metadata that no reader uses (timestamps, "version made by", attributes, the padding of
        # extra fields): what loads is then bit for bit the saved weights (asserted above), so the
        # number printed is the true one, never a silently wrong one.
        assert len(uncovered) <= len(flips) // 5, uncovered  # about 15% on this small file


def _save(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


def test_fuzz_malformed_files(checkpoint: Path, tmp_path: Path) -> None:
    rng = random.Random(7)
    state = _reference(checkpoint)
    weights = state["model"]
    cases: dict[str, Path] = {}
    cases["random bytes"] = tmp_path / "random.pt"
    cases["random bytes"].write_bytes(bytes(rng.randrange(256) for _ in range(4096)))
    cases["empty"] = tmp_path / "empty.pt"
    cases["empty"].write_bytes(b"")
    cases["folder"] = tmp_path / "folder.pt"
    cases["folder"].mkdir()
    cases["zip of unrelated files"] = tmp_path / "other.zip"
    with zipfile.ZipFile(cases["zip of unrelated files"], "w") as zf:
        zf.writestr("readme.txt", "hello")
        zf.writestr("data/values.csv", "1,2,3")
    cases["tar"] = tmp_path / "run.tar"
    with tarfile.open(cases["tar"], "w") as tar:
        tar.add(checkpoint, arcname="last.pt")
    cases["pickle of a dict with wrong types"] = tmp_path / "wrong.pkl"
    cases["pickle of a dict with wrong types"].write_bytes(pickle.dumps({"model": [1, 2, 3], "epoch": "ten"}))
    cases["torch.save of wrong types"] = _save({"model": {"weight": [1.0, 2.0]}}, tmp_path / "wrong.pt")
    missing = {k: v for i, (k, v) in enumerate(weights.items()) if i}
    cases["missing keys"] = _save(missing, tmp_path / "missing.pt")
    cases["extra keys"] = _save({**weights, "head.extra": torch.zeros(3)}, tmp_path / "extra.pt")
    cases["wrong shape"] = _save({**weights, "0.weight": torch.zeros(8, 3, 5, 5)}, tmp_path / "shape.pt")
    with torch.device("cpu"):
        hundred = fuzz_cnn_state(num_classes=100)
    cases["100 classes"] = _save(hundred, tmp_path / "c100.pt")
    nan = {k: v.clone() for k, v in weights.items()}
    nan["5.weight"][0, 0] = float("nan")
    cases["NaN weights"] = _save({**state, "model": nan}, tmp_path / "nan.pt")
    expected = {
        "random bytes": "not a checkpoint", "empty": "is empty", "folder": "is a folder",
        "zip of unrelated files": "not a torch.save checkpoint", "tar": "not a checkpoint",
        "pickle of a dict with wrong types": "not a checkpoint", "torch.save of wrong types": "neither a cifarctl",
        "missing keys": "1 missing, 0 unexpected keys: missing 0.weight", "extra keys": "unexpected head.extra",
        "wrong shape": "0.weight: checkpoint 8x3x5x5, model ", "100 classes": "trained for 100 classes",
        "NaN weights": "non-finite weights (NaN or Inf in 5.weight)",
    }
    for name, path in cases.items():
        code, output = evaluate_cli(path)
        assert_one_line_failure(code, output, expected[name])


def fuzz_cnn_state(num_classes: int) -> dict[str, torch.Tensor]:
    from cifarctl.models import create_model

    return create_model("fuzz_cnn", num_classes=num_classes).state_dict()


# -- the dataset side ------------------------------------------------------------------------

def _image_bytes(image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def test_odd_but_readable_images_are_converted_and_counted(home: Path, tmp_path: Path) -> None:
    from PIL import Image

    tree = write_image_tree(tmp_path / "images")
    grey16 = Image.fromarray((np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60))
    (tree / "train" / "cat" / "wide.png").write_bytes(_image_bytes(grey16, "PNG"))
    cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))
    (tree / "train" / "dog" / "print.jpg").write_bytes(_image_bytes(cmyk, "JPEG"))
    result = CliRunner().invoke(app, ["download", "--from", str(tree)])
    assert result.exit_code == 0, result.output
    assert "2 images were converted to 8-bit RGB (1 CMYK, 1 I;16)" in " ".join(result.output.split())
    from cifarctl.data import load_cifar10

    data = load_cifar10()
    assert data.train_images.shape[0] == 42 and int(data.train_images.max()) <= 255


@pytest.mark.parametrize("damage, words", [
    ("truncated jpeg", "cannot read image train/cat/cut.jpg"),
    ("wrong class folder", "train/kitten/ is not a CIFAR-10 class folder"),
    ("zip outside root", "has a member outside its root ('../escape.png')"),
])
def test_bad_dataset_sources_are_one_line(home: Path, tmp_path: Path, damage: str, words: str) -> None:
    from PIL import Image

    tree = write_image_tree(tmp_path / "images")
    source: Path = tree
    if damage == "truncated jpeg":
        jpeg = _image_bytes(Image.new("RGB", (32, 32), (9, 9, 9)), "JPEG")
        (tree / "train" / "cat" / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    elif damage == "wrong class folder":
        (tree / "train" / "kitten").mkdir()
        Image.new("RGB", (32, 32)).save(tree / "train" / "kitten" / "0.png")
    else:
        source = tmp_path / "images.zip"
        with zipfile.ZipFile(source, "w") as zf:
            for file in sorted(tree.rglob("*.png")):
                zf.write(file, file.relative_to(tree).as_posix())
            zf.writestr("../escape.png", _image_bytes(Image.new("RGB", (32, 32)), "PNG"))
    result = CliRunner().invoke(app, ["download", "--from", str(source)])
    assert_one_line_failure(result.exit_code, result.output, words)
    assert not (paths.dataset_dir() / "manifest.json").exists()


def test_manifest_records_its_own_checksum(cached) -> None:
    manifest = json.loads((paths.dataset_dir() / "manifest.json").read_text())
    assert len(manifest["manifest_sha256"]) == 64
