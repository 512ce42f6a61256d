"""`predict` on people's own pictures and `export` to ONNX, safetensors and TorchScript."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cifarctl.cli import app
from cifarctl.data.loader import normalize
from cifarctl.run.checkpoint import save_checkpoint
from cifarctl.serving.export import export_model
from cifarctl.serving.inference import load_trained, predict, read_image
from cifarctl.models import create_model

CLASSES = ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")  # not CIFAR's own spelling
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cifarctl checkpoint of airbench94 whose run saved its class names and normalisation."""
    torch.manual_seed(0)
    model = create_model("airbench94")
    model.eval()
    with torch.no_grad():   # make the batch-norm statistics non-trivial, so mistakes show in the logits
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("ckpt") / "last.pt"
    save_checkpoint(path, {"model": model.state_dict(), "model_name": "airbench94", "classes": list(CLASSES),
                           "config": {"mean": list(MEAN), "std": list(STD), "tta": 0}})
    return path


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    made = {}
    made["jpeg"] = root / "photo.jpg"
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(made["jpeg"], quality=90)
    made["png96"] = root / "big.png"
    Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(made["png96"])
    made["grey"] = root / "grey.png"
    Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8), mode="L").save(made["grey"])
    made["rgba"] = root / "clear.png"
    Image.new("RGBA", (32, 32), (10, 200, 30, 0)).save(made["rgba"])     # fully transparent
    folder = root / "folder" / "nested"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{2 - i}.png")
    (root / "folder" / "README.txt").write_text("not an image, and skipped inside a folder")
    made["folder"] = root / "folder"
    made["text"] = root / "notes.jpg"
    made["text"].write_text("this is not a picture")
    return made


def test_images_are_read_as_the_help_says(pictures: dict[str, Path]) -> None:
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    big = read_image(pictures["png96"])
    with Image.open(pictures["png96"]) as img:
        want = TF.pil_to_tensor(TF.resize(img, 32, interpolation=InterpolationMode.BICUBIC, antialias=True))
    assert big.shape == (3, 32, 32) and big.dtype == torch.uint8 and torch.equal(big, want)
    wide = read_image(pictures["jpeg"])                       # 64x48: shorter side to 32, centre crop
    assert wide.shape == (3, 32, 32)
    grey = read_image(pictures["grey"])
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    assert torch.equal(read_image(pictures["rgba"]), torch.full((3, 32, 32), 255, dtype=torch.uint8))
    with pytest.raises(ValueError, match="notes.jpg: not an image"):
        read_image(pictures["text"])


def test_predict_files_and_folders(checkpoint: Path, pictures: dict[str, Path]) -> None:
    given = [pictures[k] for k in ("jpeg", "png96", "grey", "rgba", "folder", "text")]
    result = predict("airbench94", checkpoint, given, top_k=3)
    names = [Path(p.image).name for p in result.predictions]
    assert names == ["photo.jpg", "big.png", "grey.png", "clear.png", "0.png", "1.png", "2.png"]   # sorted folder
    assert len(result.failures) == 1 and "notes.jpg" in result.failures[0] and "\n" not in result.failures[0]
    for p in result.predictions:
        probs = [q for _, q in p.top]
        assert len(p.top) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert {c for c, _ in p.top} <= set(CLASSES)          # names from the checkpoint


def test_predict_sees_an_image_as_evaluation_does(checkpoint: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    for i, image in enumerate(pixels):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
    result = predict("airbench94", checkpoint, [tmp_path], top_k=10)
    trained = load_trained("airbench94", checkpoint)
    x = normalize(torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(), mean=MEAN, std=STD)
    with torch.inference_mode():
        probs = trained.model(x).softmax(1)
    for p, row in zip(result.predictions, probs):
        assert [c for c, _ in p.top] == [CLASSES[i] for i in row.argsort(descending=True).tolist()]
        assert p.top[0][1] == pytest.approx(float(row.max()), abs=1e-5)


def test_predict_cli(checkpoint: Path, pictures: dict[str, Path]) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["predict", "airbench94", "--ckpt", str(checkpoint), str(pictures["png96"]),
                             str(pictures["folder"]), "--top-k", "2", "--json"])
    assert ok.exit_code == 0, ok.output
    report = json.loads(ok.stdout)
    assert set(report) == {"model", "checkpoint", "predictions"} and report["model"] == "airbench94"
    first = report["predictions"][0]
    assert set(first) == {"image", "class", "probability", "top"} and len(first["top"]) == 2
    assert first["class"] == first["top"][0]["class"] and len(report["predictions"]) == 4
    bad = runner.invoke(app, ["predict", "airbench94", "--ckpt", str(checkpoint), str(pictures["text"]),
                              str(pictures["jpeg"]), "--tta"])
    assert bad.exit_code == 1 and "notes.jpg" in bad.output and "photo.jpg" in bad.output
    assert "Traceback" not in bad.output
    table = runner.invoke(app, ["predict", "airbench94", "--ckpt", str(checkpoint), str(pictures["grey"])])
    assert table.exit_code == 0 and "grey.png" in table.output and "%" in table.output


# -- export ------------------------------------------------------------------------------------

def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model.eval()(x)


def test_onnx_round_trip(checkpoint: Path, tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    trained = load_trained("airbench94", checkpoint)
    result = export_model(trained, "onnx", tmp_path / "model.onnx")
    assert result.checked_with == "onnxruntime" and result.max_abs_diff is not None and result.max_abs_diff <= 1e-3
    meta = {p.key: p.value for p in onnx.load(str(result.path)).metadata_props}
    assert meta["model"] == "airbench94" and json.loads(meta["classes"]) == list(CLASSES)
    assert json.loads(meta["mean"]) == list(MEAN) and json.loads(meta["std"]) == list(STD)
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    for batch in (1, 7):                                               # the batch axis is dynamic
        x = torch.randn(batch, 3, 32, 32)
        got = session.run(None, {"image": x.numpy()})[0]
        assert got.shape == (batch, 10)
        assert np.abs(got - _logits(trained.model, x).numpy()).max() <= 1e-3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temporary file left


def test_safetensors_load_back_into_create_model(checkpoint: Path, tmp_path: Path) -> None:
    st = pytest.importorskip("safetensors.torch")
    from safetensors import safe_open

    trained = load_trained("airbench94", checkpoint)
    path = export_model(trained, "safetensors", tmp_path / "model.safetensors").path
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["model"] == "airbench94" and json.loads(meta["classes"]) == list(CLASSES)
    fresh = create_model(meta["model"], num_classes=len(json.loads(meta["classes"])))
    fresh.load_state_dict(st.load_file(str(path)))
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(_logits(fresh, x), _logits(trained.model, x))


@pytest.mark.filterwarnings("ignore::FutureWarning")   # torch.jit.load's deprecation notice
def test_torchscript_export(checkpoint: Path, tmp_path: Path) -> None:
    trained = load_trained("airbench94", checkpoint)
    path = export_model(trained, "torchscript", tmp_path / "model.pt").path
    files = {"cifarctl.json": ""}
    loaded = torch.jit.load(str(path), _extra_files=files)
    assert json.loads(files["cifarctl.json"])["classes"] == list(CLASSES)
    x = torch.randn(5, 3, 32, 32)
    assert torch.allclose(_logits(loaded, x), _logits(trained.model, x), atol=1e-5)


def test_export_cli_and_its_errors(checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    out = tmp_path / "m.safetensors"
    done = runner.invoke(app, ["export", "airbench94", "--ckpt", str(checkpoint), "--format", "safetensors",
                               "--out", str(out), "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["bytes"] == out.stat().st_size
    folder = runner.invoke(app, ["export", "airbench94", "--ckpt", str(checkpoint), "--out", str(tmp_path)])
    assert folder.exit_code == 2 and "is a folder" in folder.output
    wrong = runner.invoke(app, ["export", "airbench94", "--ckpt", str(checkpoint), "--format", "tflite",
                                "--out", str(tmp_path / "x")])
    assert wrong.exit_code == 2 and "onnx, safetensors, torchscript" in wrong.output
    for module in ("safetensors", "safetensors.torch"):
        monkeypatch.setitem(sys.modules, module, None)                # as if the extra were not installed
    missing = runner.invoke(app, ["export", "airbench94", "--ckpt", str(checkpoint), "--format", "safetensors",
                                  "--out", str(tmp_path / "y.safetensors")])
    assert missing.exit_code == 2 and "pip install 'cifarctl[export]'" in missing.output
    assert not (tmp_path / "y.safetensors").exists()


def test_a_bare_ckpt_before_images_means_the_newest(checkpoint: Path, pictures: dict[str, Path], home: Path) -> None:
    import shutil

    from cifarctl import paths

    run = paths.runs_root() / "airbench94" / "20260101-000000"
    run.mkdir(parents=True)
    shutil.copy(checkpoint, run / "last.pt")
    done = CliRunner().invoke(app, ["predict", "airbench94", "--ckpt", str(pictures["jpeg"]), str(pictures["folder"]),
                                    "--json"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    assert report["checkpoint"] == str(run / "last.pt") and len(report["predictions"]) == 4
