import io
from pathlib import Path

import pytest
import torch

from cifarctl.engine import find_latest, load_checkpoint, load_weights, save_checkpoint
from cifarctl.errors import CheckpointError
from cifarctl.models import create_model


def test_save_is_atomic_and_loads_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "run" / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(2)}, "model_name": "x", "epoch": 1})
    state = torch.load(path, weights_only=True)
    assert state["epoch"] == 1 and state["format"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_failed_save_keeps_the_previous_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(1)}, "epoch": 1})

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half")  # save_checkpoint writes through a file object
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint(path, {"model": {"w": torch.ones(1)}, "epoch": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_raw_state_dict_is_wrapped(tmp_path: Path) -> None:
    model = create_model("vgg16")
    torch.save(model.state_dict(), tmp_path / "vgg16_250.pt")
    state = load_checkpoint(tmp_path / "vgg16_250.pt")
    assert state["model_name"] is None
    load_weights(create_model("vgg16"), "vgg16", state, "vgg16_250.pt")


def test_data_parallel_prefix_is_stripped(tmp_path: Path) -> None:
    sd = {f"module.{k}": v for k, v in create_model("vgg16").state_dict().items()}
    load_weights(create_model("vgg16"), "vgg16", {"model": sd}, "dp.pt")


def test_other_architecture_is_named(tmp_path: Path) -> None:
    torch.save(create_model("vgg16").state_dict(), tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="is a vgg16 checkpoint, not resnet50"):
        load_weights(create_model("resnet50"), "resnet50", load_checkpoint(tmp_path / "w.pt"), "w.pt")


def test_partial_mismatch_lists_keys(tmp_path: Path) -> None:
    sd = create_model("vgg16").state_dict()
    del sd["classifier.5.bias"]
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"1 missing, 1 unexpected keys: missing classifier\.5\.bias"):
        load_weights(create_model("vgg16"), "vgg16", {"model": sd}, "w.pt")


def test_shape_mismatch_is_named() -> None:
    sd = create_model("vgg16").state_dict()
    sd["features.0.weight"] = torch.zeros(64, 1, 3, 3)
    with pytest.raises(CheckpointError, match=r"features\.0\.weight: checkpoint 64x1x3x3, model 64x3x3x3"):
        load_weights(create_model("vgg16"), "vgg16", {"model": sd}, "w.pt")


def test_another_number_of_classes_is_said_so() -> None:
    sd = create_model("vgg16", num_classes=100).state_dict()
    with pytest.raises(CheckpointError, match=r"trained for 100 classes; vgg16 here has 10 \(classifier\.5\.weight"):
        load_weights(create_model("vgg16"), "vgg16", {"model": sd}, "w.pt")


@pytest.mark.parametrize("content, words", [
    (b"", "is empty"),
    (b"not a checkpoint at all", "is not a checkpoint"),
    (b"PK\x03\x04garbage", "truncated or damaged"),
])
def test_garbage_is_one_error(tmp_path: Path, content: bytes, words: str) -> None:
    (tmp_path / "bad.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match=words):
        load_checkpoint(tmp_path / "bad.pt")


def test_truncated_checkpoint(tmp_path: Path) -> None:
    buf = io.BytesIO()
    torch.save(create_model("vgg16").state_dict(), buf)
    (tmp_path / "cut.pt").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(tmp_path / "cut.pt")


class Payload:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_code_in_a_checkpoint_is_refused_not_run(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    torch.save({"model": {"w": torch.ones(1)}, "evil": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="would run code"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "PWNED").exists()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_find_latest_takes_the_newest_run(home: Path) -> None:
    import os

    from cifarctl import paths

    for i, name in enumerate(["a", "b"]):
        path = paths.runs_root() / "vgg16" / name / "last.pt"
        save_checkpoint(path, {"model": {}, "epoch": i})
        os.utime(path, (1000 + i, 1000 + i))
    assert find_latest("vgg16").parent.name == "b"
    with pytest.raises(CheckpointError, match="no resnet50 checkpoint"):
        find_latest("resnet50")
