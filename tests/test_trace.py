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


def run(spec: str, shape=(2, 3, 32, 32), device=None):
    name, factory = resolve_model(spec)
    return inspect_model(factory, list(shape), name=name, device=device)


def test_vgg16_numbers() -> None:
    r = run("vgg16")
    assert r.ok and r.total_params == 14_983_498 and r.output == [[2, 10]]
    assert r.total_macs == pytest.approx(313.5e6, rel=1e-3)


def test_resnet50_numbers_and_224() -> None:
    r = run("resnet50")
    assert r.ok and r.total_params == 14_750_730 and r.output == [[2, 10]]
    assert r.total_macs == pytest.approx(92.7e6, rel=1e-3)
    big = run("resnet50", (2, 3, 224, 224))
    assert big.ok and big.output == [[2, 10]] and big.mode == "cpu"       # a real forward is cheaper here
    huge = run("resnet50", (2, 3, 512, 512))
    assert huge.ok and huge.output == [[2, 10]] and huge.mode == "meta"   # shapes only beyond 2x224x224


def _same_report(a, b) -> dict:
    one, two = a.to_json(), b.to_json()
    for key in ("mode", "fallback"):
        one.pop(key), two.pop(key)
    for report in (one, two):   # PyTorch words its own exception differently on meta and CPU
        if report["error"]:
            report["error"].pop("exception")
    return one == two


@pytest.mark.parametrize("spec", ["resnet50", "vgg16", "airbench94", SEED, f"{BROKEN}:TwoBranchCat",
                                  f"{BROKEN}:linear_mismatch", f"{HERE / 'realworld_models.py'}:Attention",
                                  f"{HERE / 'realworld_models.py'}:BatchOneView",
                                  f"{HERE / 'realworld_models.py'}:TinyTransformer"])
def test_meta_and_cpu_give_the_same_report(spec: str) -> None:
    on_meta, on_cpu = run(spec, device="meta"), run(spec, device="cpu")
    assert (on_meta.mode, on_cpu.mode) == ("meta", "cpu") and not on_meta.fallback
    assert _same_report(on_meta, on_cpu)


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

    r = inspect_model(fixed, [2, 3, 32, 32], name)
    assert r.ok and r.output == [[2, 10]]
    assert [w.module for w in r.warnings] == ["layer2.0"] and "the stem shrinks" in r.warnings[0].message


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
    r = run(f"{BROKEN}:{spec}")
    assert not r.ok
    assert (r.error.module, r.error.cause) == (module, cause), r.error.message
    text = r.error.message + " " + r.error.hint
    for word in words:
        assert word in text, text
    failed = [x for x in r.layers if x.failed]
    assert len(failed) == 1 and failed[0].module == module


def test_data_dependent_model_falls_back_to_cpu() -> None:
    r = run(f"{BROKEN}:DataDependent", device="meta")
    assert r.ok and r.mode == "cpu" and r.fallback and r.output == [[2, 4, 30, 30]]


def test_model_instance_is_left_as_it_was() -> None:
    model = create_model("resnet50").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = inspect_model(model, [2, 3, 32, 32])
    assert r.ok and r.mode == "cpu" and model.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_ops_in_user_forward_become_rows() -> None:
    r = run(f"{BROKEN}:ResidualOK", (1, 8, 16, 16))
    ops = [(x.module, x.type) for x in r.layers if x.kind == "op"]
    assert ops == [("", "add")] and not r.warnings
    assert [x.type for x in run("vgg16").layers if x.kind == "op"] == ["view"]


@pytest.mark.parametrize("text, batch, shape", [("3x32x32", None, [2, 3, 32, 32]), ("3x32x32", 5, [5, 3, 32, 32]),
                                                ("8x3x64x64", None, [8, 3, 64, 64]), ("8x3x64x64", 8, [8, 3, 64, 64]),
                                                ("3, 32, 32", 1, [1, 3, 32, 32])])
def test_parse_input(text: str, batch, shape: list[int]) -> None:
    assert parse_input_shape(text, batch) == shape


def test_parse_input_refuses_two_batches() -> None:
    with pytest.raises(UsageError, match="batch 8 but --batch says 2"):
        parse_input_shape("8x3x32x32", 2)


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


# -- models as people write them (realworld_models.py) -----------------------------------------

REAL = HERE / "realworld_models.py"


def real(name: str, shape=(2, 3, 32, 32), device=None):
    return run(f"{REAL}:{name}", shape, device)


def test_constant_made_without_device_just_works() -> None:
    r = real("ConstantWithoutDevice", device="meta")
    assert r.ok and r.mode == "meta" and not r.fallback and r.output == [[2, 8, 32, 32]] and not r.warnings


def test_meta_specific_failure_falls_back_to_a_real_forward() -> None:
    r = real("ConstantOnCpu", device="meta")
    assert r.ok and r.mode == "cpu" and r.fallback and r.output == [[2, 8, 32, 32]] and r.error is None


def test_failures_the_model_catches_are_not_failures() -> None:
    r = real("CatchesItsOwnError")
    assert r.ok and r.error is None and r.output == [[2, 8, 1, 1]]
    rows = {x.module: x for x in r.layers if x.kind == "module"}
    assert rows["wrong"].output is None and not rows["wrong"].failed       # it raised, and was caught
    assert rows["right"].output == [[2, 8, 32, 32]] and rows["right"].parent == 0
    assert rows["pool"].input == [[2, 8, 32, 32]] and rows["pool"].output == [[2, 8, 1, 1]]
    assert all(x.depth == 1 for x in r.layers if x.module in ("wrong", "right", "pool"))


def test_a_view_that_bakes_in_batch_one_is_diagnosed_at_batch_two() -> None:
    assert real("BatchOneView", (1, 3, 32, 32)).ok        # why batch 1 is not enough
    r = real("BatchOneView")
    assert not r.ok and r.error.cause == "batch-baked" and r.error.module == "fc"
    assert "`x.view(1, -1)` in the forward of BatchOneView (the model itself) keeps batch 1 only" in r.error.message
    assert "use `x.flatten(1)`" in r.error.hint and "512 values" in r.error.hint


def test_intended_broadcasts_do_not_warn() -> None:
    r = real("AffineAndGate")
    assert r.ok and r.warnings == []
    muls = [x for x in r.layers if x.kind == "op" and x.type == "mul"]
    assert len(muls) == 2          # the norm's affine and the gate are still rows


def test_a_likely_wrong_multiply_warns_and_names_its_sources() -> None:
    r = real("RowGate")
    assert r.ok and len(r.warnings) == 1
    message = r.warnings[0].message
    assert "multiplies 8x32x32 (from `conv`) and 8x1x32 (from `row`)" in message and "identity" not in message


def test_operand_sources_are_named() -> None:
    from cifarctl.trace.tracer import Tracer
    from cifarctl.trace.diagnose import _label

    model = resolve_model(f"{REAL}:AffineAndGate")[1]()
    tracer = Tracer(model, batch=2)
    tracer.run(torch.randn(2, 3, 32, 32))
    labels = {tuple(map(_label, p)) for _, _, p, _ in tracer.broadcasts}
    assert ("parameter `norm.weight`", "div() in forward") in labels     # w[:, None, None] * x
    assert ("mul() in forward", "parameter `norm.bias`") in labels
    assert ("`norm`", "parameter `shift`") in labels
    assert ("add() in forward", "`squeeze`") in labels                    # x = norm(...) + shift; x * gate


def test_a_module_called_twice_shows_every_call_under_its_caller() -> None:
    r = real("SharedConv", (2, 8, 16, 16))
    convs = [x for x in r.layers if x.module == "conv"]
    assert len(convs) == 2 and all(x.parent == 0 and x.depth == 1 for x in convs)
    assert convs[0].macs == convs[1].macs == 8 * 8 * 9 * 16 * 16
    blocks = [(x.module, r.layers[x.parent].module) for x in r.layers if x.type == "Sequential" and x.depth == 2]
    assert blocks == [("first.0", "first"), ("second.0", "second")]
    one_by_one = 8 * 8 * 16 * 16
    assert r.total_macs == 2 * convs[0].macs + 2 * one_by_one
    assert r.layers[0].macs == r.total_macs


def test_attention_einsum_and_functional_layers_count_macs() -> None:
    r = real("Attention")
    attn = next(x for x in r.layers if x.module == "attn")
    tokens, dim = 64, 32
    projections = 4 * tokens * dim * dim                 # q, k, v and out
    scores = 2 * tokens * tokens * dim                   # q @ k^T and weights @ v
    assert attn.macs == projections + scores
    einsum = next(x for x in r.layers if x.type == "einsum")
    assert einsum.macs == dim * 10       # torch sums over the tokens first, then contracts the channels
    tiny = real("TinyTransformer")
    attention = 2 * 16 * 16 * 32                         # scores and weighted sum, 16 tokens of 32 channels
    encoder = next(x for x in tiny.layers if x.module == "encoder")
    assert encoder.macs == 4 * 16 * 32 * 32 + attention + 2 * 16 * 32 * 64   # projections, attention, MLP
    sdpa = next(x for x in tiny.layers if x.type == "scaled_dot_product_attention")
    assert sdpa.macs == attention
    f = real("FunctionalConv")
    assert f.total_macs == 8 * 3 * 9 * 32 * 32 + 8 * 10
    assert [x.type for x in f.layers if x.kind == "op"] == ["conv2d", "linear"]


def test_builtin_totals_are_flop_counter_totals() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    for name in ("resnet50", "vgg16"):
        with torch.device("meta"):
            model = create_model(name).eval()
            with FlopCounterMode(display=False) as counter:
                model(torch.empty(1, 3, 32, 32))
        assert run(name).total_macs == counter.get_total_flops() // 2
    assert run("resnet50").total_macs == 92_727_296


@pytest.mark.parametrize("name, words", [
    ("InitBug", ["realworld_models.py:", "`self.fc = nn.Linear(10)`", "missing 1 required positional argument"]),
    ("InitRaises", ["`self.last = self.widths[2]`", "IndexError: list index out of range"]),
])
def test_a_bug_in_init_is_one_line_with_file_and_line(name: str, words: list[str]) -> None:
    with pytest.raises(UsageError) as info:
        real(name)
    message = str(info.value)
    assert "\n" not in message and info.value.exit_code == 2
    line = next(i for i, text in enumerate(REAL.read_text().splitlines(), 1) if words[1 if name == "InitBug" else 0].strip("`") in text)
    assert f"realworld_models.py:{line}" in message
    for word in words:
        assert word in message, message


def test_an_import_error_names_file_and_line(tmp_path: Path) -> None:
    model = tmp_path / "broken.py"
    model.write_text("import torch\n\nWIDTH = 64 / undefined_name\n")
    with pytest.raises(UsageError, match=r"importing .*broken.py failed at .*broken.py:3 \(`WIDTH = 64 / undefined_name`\): NameError"):
        resolve_model(f"{model}:Net")


def test_string_padding_in_a_failing_block() -> None:
    r = real("StringPadding")
    assert not r.ok and r.error.cause == "residual-mismatch"
    assert "give `branch.0` padding=1" in r.error.hint and "30x30" in r.error.message


# -- torchvision models and the stem warning ------------------------------------------------------

def test_torchvision_models_by_name() -> None:
    big = run("torchvision:resnet18", (2, 3, 224, 224))
    assert big.ok and big.total_params == 11_689_512 and big.output == [[2, 1000]]
    assert not [w for w in big.warnings if "stem" in w.message]
    ten = inspect_model(resolve_model("torchvision:resnet18", num_classes=10)[1], [2, 3, 32, 32])
    assert ten.output == [[2, 10]] and ten.total_params == 11_689_512 - 990 * 513
    stem = [w for w in ten.warnings if "stem" in w.message]
    assert len(stem) == 1 and stem[0].module == "layer1.0"
    for words in ("shrinks the 32x32 input to 8x8", "`conv1` Conv2d 32x32->16x16", "`maxpool` MaxPool2d 16x16->8x8",
                  "3x3 conv with stride 1", "no max-pool"):
        assert words in stem[0].message
    assert run("torchvision:mobilenet_v3_small").ok


def test_cifar_stems_do_not_warn() -> None:
    for name in ("resnet18", "airbench94", "vgg16"):
        assert not [w for w in run(name).warnings if "stem" in w.message], name


def test_torchvision_names_get_suggestions_and_num_classes_is_checked() -> None:
    with pytest.raises(UsageError, match="did you mean torchvision:resnet18"):
        resolve_model("torchvision:resnet81")
    with pytest.raises(UsageError, match="takes no --num-classes"):
        resolve_model("torchvision:raft_small", num_classes=10)[1]()
    with pytest.raises(UsageError, match="takes no num_classes"):
        resolve_model(f"{BROKEN}:TwoBranchCat", num_classes=10)
    assert run("vgg16").output == [[2, 10]]
    assert inspect_model(resolve_model("vgg16", num_classes=100)[1], [2, 3, 32, 32]).output == [[2, 100]]


def test_a_reshape_that_changes_the_output_batch_warns() -> None:
    r = real("RowsFromFeatures")
    assert r.ok and r.output == [[4, 10]]
    [warning] = r.warnings
    assert "`x.view(-1, 64)`" in warning.message and "returns 4x10 for 2 images" in warning.message
    assert "x.flatten(1)" in warning.message


def test_global_pooling_in_a_gate_is_not_a_collapse() -> None:
    assert real("SqueezeExcite").warnings == []
    assert any("1x1" in w.message for w in run(SEED).warnings)        # a strided conv that collapses still warns
