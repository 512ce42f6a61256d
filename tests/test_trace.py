import io
import os
from pathlib import Path

import pytest
import torch
from rich.console import Console

from cifarctl.cli.inspect import render
from cifarctl.errors import UsageError
from cifarctl.models import create_model
from cifarctl.models.user import resolve_model
from cifarctl.trace import inspect_model, parse_input_shape

HERE = Path(__file__).parent
SEED = f"{HERE / 'fixtures' / 'seed_resnet.py'}:ResNet50_layer4"
BROKEN = HERE / "broken_models.py"
GOLDEN = HERE / "golden"


def run(spec: str, shape=(1, 3, 32, 32)):
    name, factory = resolve_model(spec)
    return inspect_model(factory, list(shape), name=name)


def test_vgg16_numbers() -> None:
    r = run("vgg16")
    assert r.ok and r.total_params == 14_983_498 and r.output == [[1, 10]]
    assert r.total_macs == pytest.approx(313.5e6, rel=1e-3)


def test_resnet50_numbers_and_224() -> None:
    r = run("resnet50")
    assert r.ok and r.total_params == 14_750_730 and r.output == [[1, 10]]
    assert r.total_macs == pytest.approx(92.7e6, rel=1e-3)
    big = run("resnet50", (2, 3, 224, 224))
    assert big.ok and big.output == [[2, 10]] and big.mode == "meta"


def test_container_macs_sum_their_leaves() -> None:
    r = run("resnet50")
    root = r.layers[0]
    assert root.module == "" and root.macs == r.total_macs
    stage = next(x for x in r.layers if x.module == "layer2")
    assert stage.macs == sum(x.macs for x in r.layers if x.module.startswith("layer2.") and x.leaf and x.kind == "module")


def test_seed_resnet_is_diagnosed() -> None:
    r = run(SEED)
    assert not r.ok and r.error.module == "layer2.2" and r.error.type == "ResidualBlock"
    assert "256x6x6" in r.error.message and "256x4x4" in r.error.message
    assert "non-singleton dimension 3" in r.error.message
    assert "`layer2.2.layer.1.0` padding=1" in r.error.hint and "stride=2 in `layer2.2.layer.0.0`" in r.error.hint
    assert [c["module"] for c in r.error.children] == ["layer2.2.layer", "layer2.2.downsize"]
    broadcast = [w.module for w in r.warnings if "broadcast" in w.message]
    assert broadcast == ["layer2.0", "layer2.1"]
    assert any("1x1" in w.message for w in r.warnings)
    assert r.layers[-1].failed or any(x.failed and x.module == "layer2.2" for x in r.layers)
    assert all(not x.module.startswith("layer3") for x in r.layers)  # nothing after the failure


def test_seed_fixed_as_the_hint_says_fits() -> None:
    name, factory = resolve_model(SEED)

    def fixed():
        model = factory()
        for stage in (model.layer2, model.layer3, model.layer4):
            for block in stage:
                block.layer[0][0].stride = (2, 2) if block.downsample else (1, 1)
                block.layer[1][0].stride, block.layer[1][0].padding = (1, 1), (1, 1)
                block.layer[2][0].stride = (1, 1)
        model.avgpool = torch.nn.AdaptiveAvgPool2d(1)
        return model

    r = inspect_model(fixed, [1, 3, 32, 32], name)
    assert r.ok and r.output == [[1, 10]] and not r.warnings


@pytest.mark.parametrize("spec, module, cause, words", [
    ("TwoBranchCat", "", "cat-mismatch", ["8x32x32", "8x16x16"]),
    ("channel_mismatch", "2", "channel-mismatch", ["expects 32 channels", "gets 16", "in_channels=16"]),
    ("batchnorm_mismatch", "1", "channel-mismatch", ["num_features=32", "gets 16"]),
    ("linear_mismatch", "3", "linear-mismatch", ["in_features=8", "gets 2048", "8x16x16"]),
    ("pool_too_large", "2", "kernel-too-large", ["7x7 kernel", "only 4x4"]),
    ("conv_too_large", "1", "kernel-too-large", ["5x5 kernel", "only 4x4"]),
    ("BadView", "", "reshape-mismatch", ["2x8x8x8", "1,024 values", "in_features=512"]),
])
def test_each_failure_kind(spec: str, module: str, cause: str, words: list[str]) -> None:
    r = run(f"{BROKEN}:{spec}", (2, 3, 32, 32) if spec == "BadView" else (1, 3, 32, 32))
    assert not r.ok
    assert (r.error.module, r.error.cause) == (module, cause), r.error.message
    text = r.error.message + " " + r.error.hint
    for word in words:
        assert word in text, text
    failed = [x for x in r.layers if x.failed]
    assert len(failed) == 1 and failed[0].module == module


def test_data_dependent_model_falls_back_to_cpu() -> None:
    r = run(f"{BROKEN}:DataDependent")
    assert r.ok and r.mode == "cpu" and r.output == [[1, 4, 30, 30]]


def test_model_instance_is_left_as_it_was() -> None:
    model = create_model("resnet50").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = inspect_model(model, [1, 3, 32, 32])
    assert r.ok and r.mode == "cpu" and model.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_ops_in_user_forward_become_rows() -> None:
    r = run(f"{BROKEN}:ResidualOK", (1, 8, 16, 16))
    ops = [(x.module, x.type) for x in r.layers if x.kind == "op"]
    assert ops == [("", "add")] and not r.warnings
    assert [x.type for x in run("vgg16").layers if x.kind == "op"] == ["view"]


@pytest.mark.parametrize("text, shape", [("3x32x32", [1, 3, 32, 32]), ("8x3x64x64", [8, 3, 64, 64]),
                                         ("3, 32, 32", [1, 3, 32, 32])])
def test_parse_input(text: str, shape: list[int]) -> None:
    assert parse_input_shape(text) == shape


@pytest.mark.parametrize("text", ["32x32", "3x32x0", "axbxc", ""])
def test_parse_input_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        parse_input_shape(text)


def test_user_model_errors() -> None:
    with pytest.raises(UsageError, match="does not exist"):
        resolve_model("missing.py:Net")
    with pytest.raises(UsageError, match="did you mean TwoBranchCat"):
        resolve_model(f"{BROKEN}:TwoBranchCats")
    with pytest.raises(UsageError, match="without arguments"):
        resolve_model(f"{BROKEN}:NeedsArgs")[1]()
    assert resolve_model("torch.nn:Identity")[1]().__class__.__name__ == "Identity"


def _render_text(result, depth=None) -> str:
    buffer = io.StringIO()
    render(result, Console(file=buffer, width=120, color_system=None, force_terminal=False), depth)
    return buffer.getvalue().replace(str(HERE), "tests")


@pytest.mark.parametrize("name, spec, depth", [("vgg16", "vgg16", None), ("seed_resnet", SEED, 2),
                                               ("resnet50_depth1", "resnet50", 1)])
def test_golden_tables(name: str, spec: str, depth) -> None:
    text = _render_text(run(spec), depth)
    golden = GOLDEN / f"inspect_{name}.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text()
