"""The current record's recipe for airbench94: its settings, its augmentation, selective TTA, and Muon's new knobs."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from torch import nn

from cifarctl.data.loader import DeviceLoader
from cifarctl.evaluation import EQUAL_CENTRE, confidence, evaluate_model, levels_upto, tta_logits, tta_views
from cifarctl.models import create_model
from cifarctl.run.config import SELECTIVE, TrainConfig, parse_tta
from cifarctl.training import Trainer, TrainingInterrupted, resume, train
from cifarctl.training.muon import Muon

from conftest import StopAfterAdvances, make_images, tiny_dataset, weights_digest


def test_the_record_recipe_trains_whole_batches_stops_the_stem_bias_and_looks_again_at_the_unsure(tmp_path: Path) -> None:
    data = tiny_dataset(train=200, test=40)
    cfg = TrainConfig.for_model("airbench94_quarter", "record", batch_size=64, epochs=2, device="cpu", amp=False,
                                eval_batch_size=40, save_every=1)
    start = Trainer(cfg, data, tmp_path / "start").model.whiten.bias.detach().clone()
    stop = threading.Event()
    with pytest.raises(TrainingInterrupted):
        train(cfg, data, tmp_path / "one", progress=StopAfterAdvances(stop, 1), stop=stop)
    one = torch.load(tmp_path / "one" / "last.pt", weights_only=True)
    whole = train(cfg, data, tmp_path / "whole")
    last = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    # drop_last: an epoch is 3 whole batches of 64 (the 8 images left over come in the next epoch's draw)
    assert last["global_step"] == 6 and whole.epochs_completed == 2
    # the stem's bias trains for 0.19 epochs (its first step here), then leaves the backward pass
    assert one["global_step"] == 1 and not torch.equal(one["model"]["whiten.bias"], start)
    assert torch.equal(last["model"]["whiten.bias"], one["model"]["whiten.bias"])
    assert not torch.equal(last["model"]["head.weight"], one["model"]["head.weight"])
    assert whole.tta == SELECTIVE and last["metrics"]["tta"] == SELECTIVE


def test_a_stopped_group_leaving_the_backward_pass_changes_no_weight(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Leaving the backward pass once its lr is zero computes exactly what the zero lr did: the same weights, to
    the last bit, as the run that keeps computing the stem bias's gradient until the next epoch's hook."""
    data = tiny_dataset(train=200, test=40)
    cfg = TrainConfig.for_model("airbench94_quarter", "record", batch_size=64, epochs=2, device="cpu", amp=False,
                                eval_batch_size=40)
    left = train(cfg, data, tmp_path / "left")
    monkeypatch.setattr(Trainer, "_leave_stopped_groups", lambda self: None)
    kept = train(cfg, data, tmp_path / "kept")
    assert weights_digest(tmp_path / "left") == weights_digest(tmp_path / "kept")
    assert left.test_accuracy == kept.test_accuracy and left.global_step == kept.global_step == 6


def test_the_record_model_option_changes_only_what_it_names() -> None:
    record = create_model("airbench94", **TrainConfig.for_model("airbench94", "record").model_options)
    paper = create_model("airbench94")
    assert isinstance(record.block1.activ, nn.SiLU) and isinstance(paper.block1.activ, nn.GELU)
    assert isinstance(record.stem_act, nn.GELU)  # the stem's stays GELU, as in the record
    assert record.block2.norm1.momentum == pytest.approx(1 - 0.5566) and paper.block2.norm1.momentum == pytest.approx(0.4)
    assert record.whiten_bias_epochs == 0.19 and paper.whiten_bias_epochs == 3
    assert sum(p.numel() for p in record.parameters()) == sum(p.numel() for p in paper.parameters())
    images = torch.randn(6000, 3, 8, 8)
    record.init_from_data(images, {})
    from cifarctl.models.airbench import whitening_weights
    expected = whitening_weights(images[:960], (2, 2), 5e-4)
    assert torch.allclose(record.whiten.weight[:12], expected)  # from the first 960 of the sample it is given


def _jitter_batches(seed: int, jitter: tuple[float, float]) -> list[torch.Tensor]:
    images, labels = make_images(64, seed=3)
    loader = DeviceLoader(torch.from_numpy(images), torch.from_numpy(labels), 32, "cpu", train=True, seed=seed,
                          translate=0, flip="none", color_jitter=jitter)
    return [x for x, _ in loader.epoch(0)]


def test_brightness_and_contrast_are_drawn_per_image_within_their_ranges_and_per_seed() -> None:
    plain, jittered = _jitter_batches(1, (0.0, 0.0)), _jitter_batches(1, (0.14, 0.13))
    for x, j in zip(plain, jittered):  # j = (x + b) * (1 + c): per image one b and one c
        for image, out in zip(x, j):
            scale = (out - out.mean()).std() / (image - image.mean()).std()
            shift = out.mean() / scale - image.mean()
            assert 0.87 - 1e-4 <= scale <= 1.13 + 1e-4 and abs(shift) <= 0.14 + 1e-4
            assert torch.allclose(out, (image + shift) * scale, atol=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(_jitter_batches(1, (0.14, 0.13)), jittered))  # the seed decides
    assert not torch.equal(_jitter_batches(2, (0.14, 0.13))[0], jittered[0])
    # Without it, a loader draws exactly what it drew before (the same crops and flips per seed).
    images, labels = make_images(64, seed=3)
    before = DeviceLoader(torch.from_numpy(images), torch.from_numpy(labels), 32, "cpu", train=True, seed=1,
                          translate=2, pad_mode="reflect", flip="alternate")
    after = DeviceLoader(torch.from_numpy(images), torch.from_numpy(labels), 32, "cpu", train=True, seed=1,
                         translate=2, pad_mode="reflect", flip="alternate", color_jitter=(0.1, 0.1))
    for (xb, yb), (xa, ya) in zip(before.epoch(3), after.epoch(3)):  # the same crop, flip and order under it
        assert torch.equal(yb, ya)
        assert torch.allclose((xa - xa.mean((1, 2, 3), keepdim=True)).sign(), (xb - xb.mean((1, 2, 3), keepdim=True)).sign())


def _shifted(x: torch.Tensor) -> list[torch.Tensor]:
    """The images shifted one pixel up-left and one down-right (reflect padding), as level 2 takes them."""
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    return [padded[..., :-2, :-2], padded[..., 2:, 2:]]


class Scorer(nn.Module):
    """A model whose confidence is known: the logits of each image are its first ten pixels, twice, and a
    pixel of the middle (a shifted or flipped view sees other pixels)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x[:, 0, 0, :10] + x[:, 1, 5, 5:6]


def test_selective_tta_looks_again_where_the_two_likeliest_classes_are_closest() -> None:
    data = tiny_dataset(test=40)
    loader = DeviceLoader(data.test_images, data.test_labels, 16, "cpu", train=False)
    model = Scorer()
    x = torch.cat([b for b, _ in loader.epoch(0)])
    plain, full = model(x), tta_logits(model, x, 2, centre=EQUAL_CENTRE)  # the six views alike
    assert not torch.allclose(full, tta_logits(model, x, 2))  # not airbench's weighting of them
    top = plain.softmax(1).topk(2, dim=1).values
    unsure = set(torch.topk(top[:, 0] - top[:, 1], 10, largest=False).indices.tolist())  # a quarter of 40
    by_top_probability = set(torch.topk(top[:, 0], 10, largest=False).indices.tolist())
    assert unsure != by_top_probability  # the two ways of being unsure pick different images here
    expected = torch.stack([full[i] if i in unsure else plain[i] for i in range(40)])
    result = evaluate_model(model, loader, tta=SELECTIVE, tta_fraction=0.25)
    by_hand = torch.nn.functional.cross_entropy(expected, data.test_labels.long()).item()
    assert result.loss == pytest.approx(by_hand, rel=1e-6) and result.extra["tta_fraction"] == 0.25
    assert result.accuracy == pytest.approx(100 * (expected.argmax(1) == data.test_labels).float().mean().item())
    assert torch.equal(confidence(plain), top[:, 0] - top[:, 1])
    # All of them: the six views' equal mean for every image.
    every = evaluate_model(model, loader, tta=SELECTIVE, tta_fraction=1.0)
    by_hand = torch.nn.functional.cross_entropy(full, data.test_labels.long()).item()
    assert every.loss == pytest.approx(by_hand, rel=1e-6)
    equal = torch.stack([v for b, _ in loader.epoch(0) for v in torch.stack([
        model(b), model(b.flip(-1)), *[model(s) for sh in _shifted(b) for s in (sh, sh.flip(-1))]]).mean(0)])
    assert torch.allclose(full, equal, atol=1e-5)


def test_selective_tta_is_a_level_of_its_own() -> None:
    assert parse_tta("selective") == SELECTIVE and parse_tta("2") == 2 and parse_tta(None) is None
    with pytest.raises(Exception, match="--tta 'three'"):
        parse_tta("three")
    assert levels_upto(2) == (0, 1, SELECTIVE, 2) and levels_upto(SELECTIVE) == (0, 1, SELECTIVE)


class Counting(Scorer):
    """A ``Scorer`` that counts the images it is shown."""

    seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += len(x)
        return super().forward(x)


@pytest.mark.parametrize("tta, fraction", [(0, 0.25), (1, 0.25), (2, 0.25), (SELECTIVE, 0.25), (SELECTIVE, 0.5)])
def test_an_evaluation_costs_the_passes_its_level_is_priced_at(tta, fraction) -> None:
    data = tiny_dataset(test=40)
    loader = DeviceLoader(data.test_images, data.test_labels, 16, "cpu", train=False)
    model = Counting()
    evaluate_model(model, loader, tta=tta, tta_fraction=fraction)
    assert model.seen == pytest.approx(tta_views(tta, fraction) * 40)


def test_muon_decays_and_rescales_as_the_record_does() -> None:
    torch.manual_seed(0)
    weight = nn.Parameter(torch.randn(8, 4, 3, 3))
    optimizer = Muon([{"params": [weight], "use_muon": True, "weight_decay": 0.1}], lr=0.2, momentum=0.5,
                     renorm_every=(2, 15), total_steps=30)
    renormed = []
    for step in range(1, 31):
        weight.grad = torch.randn_like(weight)
        before = optimizer.param_groups[0]["last_renorm"]
        optimizer.step()
        renormed.append(optimizer.param_groups[0]["last_renorm"] != before)
    # when 2 + int(15 * step / 30) steps have passed since the last: at step 3 (3 >= 2 + 1), 9 (6 >= 2 + 4)
    # and 21 (12 >= 2 + 10); by step 30 the interval has grown to 17
    assert [i + 1 for i, r in enumerate(renormed) if r] == [3, 9, 21]
    group = {"params": [nn.Parameter(torch.ones(4, 4, 1, 1))], "use_muon": True, "weight_decay": 0.5}
    lone = Muon([group], lr=0.1, momentum=0.0, renorm_every=(100, 0))
    lone.param_groups[0]["params"][0].grad = torch.zeros(4, 4, 1, 1)
    lone.step()  # no gradient to follow: only the decay, 1 - lr * decay
    assert torch.allclose(lone.param_groups[0]["params"][0], torch.full((4, 4, 1, 1), 0.95))


def test_a_fraction_of_an_epoch_ends_the_run_at_its_step_and_resumes_exactly(tmp_path: Path) -> None:
    cfg = TrainConfig.for_model("airbench94_quarter", "record", epochs=1.5, batch_size=50, device="cpu", amp=False,
                                eval_batch_size=50, save_every=1)
    data = tiny_dataset()
    whole = train(cfg, data, tmp_path / "whole")
    assert whole.global_step == 6 and whole.epochs_trained == 1.5 and whole.tta == SELECTIVE  # 4 steps an epoch
    stop = threading.Event()
    with pytest.raises(TrainingInterrupted):
        train(cfg, data, tmp_path / "cut", progress=StopAfterAdvances(stop, 5), stop=stop)
    resumed = resume(tmp_path / "cut", data)
    assert resumed.global_step == 6 and weights_digest(tmp_path / "cut") == weights_digest(tmp_path / "whole")
    assert resumed.test_accuracy == whole.test_accuracy
