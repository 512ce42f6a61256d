import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision import transforms

from cifarctl.data import MEAN, STD, DeviceLoader, augment_batch, normalize

from conftest import tiny_dataset


def test_augment_equals_torchvision_crop_then_flip() -> None:
    images = tiny_dataset().train_images[:16].permute(0, 3, 1, 2)
    gen = torch.Generator().manual_seed(3)
    dx, dy = torch.randint(0, 9, (16,), generator=gen), torch.randint(0, 9, (16,), generator=gen)
    flip = torch.randint(0, 2, (16,), generator=gen).bool()
    out = augment_batch(images, dx, dy, flip)
    for i in range(16):
        expected = TF.crop(TF.pad(images[i], [4, 4, 4, 4]), int(dy[i]), int(dx[i]), 32, 32)
        if flip[i]:
            expected = TF.horizontal_flip(expected)
        assert torch.equal(out[i], expected)


def test_reflect_translate_equals_torchvision_reflect_crop() -> None:
    images = tiny_dataset().train_images[:16].permute(0, 3, 1, 2)
    gen = torch.Generator().manual_seed(4)
    dx, dy = torch.randint(0, 5, (16,), generator=gen), torch.randint(0, 5, (16,), generator=gen)
    flip = torch.randint(0, 2, (16,), generator=gen).bool()
    out = augment_batch(images, dx, dy, flip, pad=2, pad_mode="reflect")
    for i in range(16):
        padded = TF.pad(images[i].float(), [2, 2, 2, 2], padding_mode="reflect").to(torch.uint8)
        expected = TF.crop(padded, int(dy[i]), int(dx[i]), 32, 32)
        if flip[i]:
            expected = TF.horizontal_flip(expected)
        assert torch.equal(out[i], expected)


def test_alternating_flip_inverts_every_image_each_epoch() -> None:
    data = tiny_dataset()
    loader = DeviceLoader(data.train_images, data.train_labels, 200, "cpu", train=True, seed=1, translate=0,
                          flip="alternate")
    views = []
    for epoch in range(3):
        order, _ = loader._epoch_plan(epoch)
        x, _ = next(loader.epoch(epoch))
        views.append(x[order.argsort()])  # back in dataset order
    assert torch.equal(views[1], views[0].flip(-1)) and torch.equal(views[2], views[0])
    plain = normalize(data.train_images.permute(0, 3, 1, 2))
    flipped = (views[0] != plain).flatten(1).any(1)
    assert 0 < int(flipped.sum()) < 200  # epoch 0: a random half, not all or none


def test_normalisation_constants_are_made_once_per_loader(monkeypatch) -> None:
    data = tiny_dataset()
    loader = DeviceLoader(data.train_images, data.train_labels, 50, "cpu", train=True, mean=(0.5,) * 3, std=(0.25,) * 3)

    def made_again(*args, **kwargs):
        raise AssertionError("normalisation constants were built inside the batch loop")

    monkeypatch.setattr("cifarctl.data.loader._constants", made_again)
    monkeypatch.setattr("torch.tensor", made_again)
    x, _ = next(loader.epoch(0))
    assert x.min() >= -2 and x.max() <= 2  # (v/255 - 0.5) / 0.25 lies in [-2, 2]: the loader's own constants


def test_normalize_matches_to_tensor_and_normalize() -> None:
    images = tiny_dataset().test_images[:8]
    course = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    expected = torch.stack([course(img.numpy()) for img in images])
    assert torch.allclose(normalize(images.permute(0, 3, 1, 2)), expected, atol=1e-6)


def test_an_epoch_visits_every_image_once() -> None:
    data = tiny_dataset()
    loader = DeviceLoader(data.train_images, data.train_labels, 64, "cpu", train=True, seed=1)
    labels = torch.cat([y for _, y in loader.epoch(0)])
    assert len(loader) == 4 and len(labels) == 200
    assert torch.equal(labels.sort().values, data.train_labels.sort().values)


def test_epochs_differ_and_repeat_exactly() -> None:
    data = tiny_dataset()
    loader = DeviceLoader(data.train_images, data.train_labels, 50, "cpu", train=True, seed=7)
    first = [x for x, _ in loader.epoch(0)]
    again = [x for x, _ in DeviceLoader(data.train_images, data.train_labels, 50, "cpu", True, seed=7).epoch(0)]
    second = [x for x, _ in loader.epoch(1)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], second[0])


def test_starting_mid_epoch_gives_the_remaining_batches() -> None:
    data = tiny_dataset()
    loader = DeviceLoader(data.train_images, data.train_labels, 30, "cpu", train=True, seed=2)
    full = list(loader.epoch(3))
    tail = list(loader.epoch(3, start_step=4))
    assert len(tail) == len(full) - 4
    for (a, ya), (b, yb) in zip(full[4:], tail):
        assert torch.equal(a, b) and torch.equal(ya, yb)


def test_test_split_is_in_order_and_unaugmented() -> None:
    data = tiny_dataset()
    loader = DeviceLoader(data.test_images, data.test_labels, 20, "cpu", train=False)
    xs, ys = zip(*loader.epoch(0))
    assert torch.equal(torch.cat(ys), data.test_labels)
    assert torch.equal(torch.cat(xs), normalize(data.test_images.permute(0, 3, 1, 2)))


def test_shards_are_disjoint_and_cover_the_epoch() -> None:
    data = tiny_dataset()
    shards = [DeviceLoader(data.train_images, torch.arange(200), 25, "cpu", True, seed=0, rank=r, world_size=2)
              for r in range(2)]
    seen = [torch.cat([y for _, y in s.epoch(5)]) for s in shards]
    assert len(seen[0]) == len(seen[1]) == 100
    assert set(seen[0].tolist()).isdisjoint(seen[1].tolist())


def test_channels_last_only_changes_memory_format() -> None:
    data = tiny_dataset()
    a = next(DeviceLoader(data.test_images, data.test_labels, 10, "cpu", False).epoch(0))[0]
    b = next(DeviceLoader(data.test_images, data.test_labels, 10, "cpu", False, channels_last=True).epoch(0))[0]
    assert torch.equal(a, b) and b.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_equal_cpu_batches() -> None:
    data = tiny_dataset()
    cpu = list(DeviceLoader(data.train_images, data.train_labels, 50, "cpu", True, seed=4).epoch(2))
    gpu = list(DeviceLoader(data.train_images, data.train_labels, 50, "cuda", True, seed=4).epoch(2))
    for (a, ya), (b, yb) in zip(cpu, gpu):
        assert torch.allclose(a, b.cpu()) and torch.equal(ya, yb.cpu())
