import pytest
import torch

from cifarctl.errors import UsageError
from cifarctl.models import create_model, list_models

# The course checkpoints' layouts (issue: foundation): entries and parameter counts.
LAYOUTS = {"vgg16": (35, 14_983_498), "resnet50": (373, 14_750_730)}


@pytest.mark.parametrize("name", list_models())
def test_every_model_maps_a_batch_to_ten_logits(name: str) -> None:
    model = create_model(name).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", list_models())
def test_raw_state_dict_round_trips_strictly(name: str, tmp_path) -> None:
    torch.manual_seed(0)
    source = create_model(name)
    torch.save(source.state_dict(), tmp_path / "course.pt")
    target = create_model(name)
    target.load_state_dict(torch.load(tmp_path / "course.pt", weights_only=True), strict=True)
    for key, value in source.state_dict().items():
        assert torch.equal(value, target.state_dict()[key])


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_course_layout(name: str) -> None:
    entries, params = LAYOUTS[name]
    model = create_model(name)
    assert len(model.state_dict()) == entries
    assert sum(p.numel() for p in model.parameters()) == params


def test_vgg16_keys_match_the_course_file() -> None:
    keys = set(create_model("vgg16").state_dict())
    convs = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    expected = {f"features.{i}.{p}" for i in convs for p in ("weight", "bias")}
    expected |= {"classifier.1.weight", "classifier.1.bias", "classifier.5.weight", "classifier.5.bias"}
    expected |= {f"classifier.2.{p}" for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    assert keys == expected


def _course_resnet50_layout() -> dict[str, tuple[int, ...]]:
    """Every state_dict entry of the course's ResNet50_layer4 and its shape, written from the course text.

    conv1x1/conv3x3 are Sequential(Conv2d with bias, BatchNorm2d, ReLU); a block is ``layer`` (1x1,
    3x3, 1x1 units) plus ``downsize`` (the last block of layer2 and layer3) or ``make_equal_channel``.
    """
    def unit(prefix: str, cin: int, cout: int, k: int) -> dict[str, tuple[int, ...]]:
        return {f"{prefix}.0.weight": (cout, cin, k, k), f"{prefix}.0.bias": (cout,),
                **{f"{prefix}.1.{p}": (cout,) for p in ("weight", "bias", "running_mean", "running_var")},
                f"{prefix}.1.num_batches_tracked": ()}

    layout = {"layer1.0.weight": (64, 3, 7, 7), "layer1.0.bias": (64,),
              **{f"layer1.1.{p}": (64,) for p in ("weight", "bias", "running_mean", "running_var")},
              "layer1.1.num_batches_tracked": ()}
    stages = {"layer2": (64, 64, 256, 3, True), "layer3": (256, 128, 512, 4, True), "layer4": (512, 256, 1024, 6, False)}
    for stage, (cin, mid, cout, blocks, downsample_last) in stages.items():
        for b in range(blocks):
            first_in = cin if b == 0 else cout
            p = f"{stage}.{b}"
            layout |= unit(f"{p}.layer.0", first_in, mid, 1) | unit(f"{p}.layer.1", mid, mid, 3)
            layout |= unit(f"{p}.layer.2", mid, cout, 1)
            shortcut = "downsize" if downsample_last and b == blocks - 1 else "make_equal_channel"
            layout |= unit(f"{p}.{shortcut}", first_in, cout, 1)
    layout |= {"fc.weight": (10, 1024), "fc.bias": (10,)}
    return layout


def test_resnet50_keys_and_shapes_match_the_course_layout() -> None:
    expected = _course_resnet50_layout()
    actual = {k: tuple(v.shape) for k, v in create_model("resnet50").state_dict().items()}
    assert list(actual) == list(expected)  # the order too: the course's file lists them so
    assert actual == expected and len(expected) == 373


def test_resnet50_block_layout() -> None:
    sd = create_model("resnet50").state_dict()
    assert sd["layer1.0.weight"].shape == (64, 3, 7, 7)
    assert sd["layer2.0.layer.0.0.weight"].shape == (64, 64, 1, 1)
    assert sd["layer2.0.layer.1.0.weight"].shape == (64, 64, 3, 3)
    assert sd["layer2.0.make_equal_channel.0.weight"].shape == (256, 64, 1, 1)
    assert sd["layer2.2.downsize.0.weight"].shape == (256, 256, 1, 1)
    assert sd["layer3.3.downsize.1.running_mean"].shape == (512,)
    assert "layer4.5.make_equal_channel.0.bias" in sd
    assert not any(k.startswith("layer4.") and "downsize" in k for k in sd)
    assert sd["fc.weight"].shape == (10, 1024)


def test_resnet50_downsamples_in_the_last_block_of_layer2_and_layer3() -> None:
    model = create_model("resnet50").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        x = model.layer1(x)
        assert x.shape[-1] == 8
        x = model.layer2[:2](x)
        assert x.shape[-1] == 8
        x = model.layer2[2](x)
        assert x.shape[-1] == 4
        assert model.layer4(model.layer3(x)).shape == (1, 1024, 2, 2)


def test_non_downsampling_block_always_projects_its_input() -> None:
    block = create_model("resnet50").layer2[1].eval()
    calls = []
    block.make_equal_channel.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        block(torch.randn(1, 256, 8, 8))
    assert calls == [1]


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(UsageError, match="did you mean resnet50"):
        create_model("resnet5")
