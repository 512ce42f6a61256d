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
