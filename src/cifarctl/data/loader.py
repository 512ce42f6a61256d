"""Batches made on the training device with whole-batch tensor ops (airbench's approach).

The dataset is moved to the device once, as uint8 NCHW (150 MB for the train split). A batch is an
index slice of it; random crop (zero or reflect padding) and horizontal flip are one gather over the
whole batch; normalisation is a few float ops with constants made once per loader. There is no
per-image Python, no PIL and no worker process, and the same code runs on CPU and CUDA.

Randomness is drawn per epoch from a CPU generator seeded by ``(seed, epoch)``: the permutation and
every sample's crop offset and flip (with ``flip="alternate"``, one flip bit per image for the whole
run, drawn from ``seed`` alone, inverted on odd epochs: airbench's alternating flip). So batch ``k``
of epoch ``e`` is a pure function of ``(seed, e, k)``, identical on every device, and a resumed run
sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import math
from typing import Iterator

import torch
import torch.nn.functional as F

# The course's normalisation constants; its checkpoints expect inputs normalised with them.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)
PAD = 4  # the course's crop padding


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit seed for ``(seed, epoch)`` (plain sums would make nearby runs overlap)."""
    digest = hashlib.blake2b(f"cifarctl:{seed}:{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _reflect_index(size: int, pad: int, device: torch.device) -> torch.Tensor:
    """Source index of each position of a ``pad``-reflect-padded axis of ``size`` (as F.pad's 'reflect')."""
    index = torch.arange(-pad, size + pad, device=device).abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def augment_batch(images: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, flip: torch.Tensor,
                  pad: int = PAD, pad_mode: str = "zeros") -> torch.Tensor:
    """Random-crop (padding ``pad``) and flip a uint8 NCHW batch in one gather.

    Sample ``b`` is the ``H x W`` window at ``(dy[b], dx[b])`` of the padded image, mirrored
    left-right where ``flip[b]``: torchvision's ``RandomCrop(H, padding=pad, padding_mode=pad_mode)``
    then ``RandomHorizontalFlip``, for the whole batch at once. Reflect padding is an index map
    into the unpadded image, so it needs no padded copy.
    """
    batch, channels, height, width = images.shape
    device = images.device
    rows = dy[:, None] + torch.arange(height, device=device)                      # [B, H] in padded coordinates
    cols = dx[:, None] + torch.arange(width, device=device)                       # [B, W]
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    if pad_mode == "reflect":
        source = images
        rows, cols = _reflect_index(height, pad, device)[rows], _reflect_index(width, pad, device)[cols]
    else:
        source = F.pad(images, (pad, pad, pad, pad))
    b = torch.arange(batch, device=device)[:, None, None, None]
    c = torch.arange(channels, device=device)[None, :, None, None]
    return source[b, c, rows[:, None, :, None], cols[:, None, None, :]]


def normalize(images: torch.Tensor, dtype: torch.dtype = torch.float32,
              mean: tuple[float, ...] = MEAN, std: tuple[float, ...] = STD) -> torch.Tensor:
    """uint8 NCHW -> ``(x / 255 - mean) / std`` in ``dtype`` (ToTensor + Normalize in one op)."""
    return _normalize(images, *_constants(mean, std, images.device), dtype)


def _constants(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1).to(device),
            torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1).to(device))


def _normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # The same float ops, in the same order, as ToTensor + Normalize: course checkpoints score identically.
    return ((images.float() / 255.0 - mean) / std).to(dtype)


def batches_per_epoch(images: int, batch_size: int, drop_last: bool) -> int:
    """Batches an epoch of ``images`` takes: a last, smaller batch counts unless ``drop_last`` leaves it out."""
    batches = images / batch_size
    return max(math.floor(batches), 1) if drop_last else math.ceil(batches)


def epoch_images(images: int, batch_size: int, drop_last: bool) -> int:
    """Images an epoch trains: all ``images``, or with ``drop_last`` its whole batches' (the record's epoch of
    50,000 is 32 x 1,536 = 49,152). Usage: ``epoch_images(50_000, 1536, True) == 49_152``"""
    return min(images, batches_per_epoch(images, batch_size, True) * batch_size) if drop_last else images


class DeviceLoader:
    """Iterate over batches of one split, made on ``device``.

    Usage::

        loader = DeviceLoader(images, labels, batch_size=100, device="cpu", train=True, seed=0)
        for x, y in loader.epoch(0):
            ...

    ``images`` are uint8 ``[N, 32, 32, 3]`` (HWC, as stored); ``train=True`` shuffles and
    augments: a crop padded by ``translate`` pixels (``pad_mode`` zeros or reflect) and a flip
    (``flip`` random, alternate or none). ``rank``/``world_size`` give each process a disjoint
    shard of every epoch. ``color_jitter``: ``(brightness, contrast)`` ranges, each image shifted by
    ``b`` and scaled by ``1 + c`` after normalisation, ``b`` and ``c`` drawn per image and epoch (the
    current CIFAR-10 record's augmentation). ``drop_last``: an epoch ends before a last, smaller batch.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, device: torch.device | str,
                 train: bool, seed: int = 0, augment: bool = True, channels_last: bool = False,
                 dtype: torch.dtype = torch.float32, rank: int = 0, world_size: int = 1,
                 mean: tuple[float, ...] = MEAN, std: tuple[float, ...] = STD, translate: int = PAD,
                 pad_mode: str = "zeros", flip: str = "random", color_jitter: tuple[float, float] = (0.0, 0.0),
                 drop_last: bool = False) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.translate, self.pad_mode, self.flip = translate, pad_mode, flip
        self.color_jitter, self.drop_last = tuple(color_jitter), drop_last and train
        self.mean, self.std = tuple(mean), tuple(std)
        self.device = torch.device(device)
        self.images = images.permute(0, 3, 1, 2).contiguous().to(self.device)  # NCHW uint8
        self.labels = labels.long().to(self.device)
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.augment = augment and train
        self.channels_last, self.dtype = channels_last, dtype
        self.rank, self.world_size = rank, world_size
        # Made once here: building them per batch would be a host-to-device copy every CUDA step.
        self._mean, self._std = _constants(self.mean, self.std, self.device)

    @property
    def num_samples(self) -> int:
        """Samples this process sees per epoch: an equal share for training (the ranks step together),
        every sample of its stride for evaluation (so the shards cover the whole test set)."""
        n = len(self.labels)
        if self.world_size == 1:
            return n
        return n // self.world_size if self.train else len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        return batches_per_epoch(self.num_samples, self.batch_size, self.drop_last)

    def _epoch_plan(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This rank's sample order and per-sample (dx, dy, flip[, brightness, contrast]) for ``epoch``."""
        n = len(self.labels)
        if not self.train:
            return torch.arange(self.rank, n, self.world_size), None
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        order = torch.randperm(n, generator=gen)
        shifts = 2 * self.translate + 1
        aug = torch.stack([
            torch.randint(0, shifts, (n,), generator=gen),  # dx
            torch.randint(0, shifts, (n,), generator=gen),  # dy
            torch.randint(0, 2, (n,), generator=gen),       # flip
        ])
        if self.flip == "alternate":  # one bit per image (indexed by image, not position), inverted on odd epochs
            base = torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(epoch_seed(self.seed, -1000)))
            aug[2] = base[order] ^ (epoch % 2)
        elif self.flip == "none":
            aug[2] = 0
        if any(self.color_jitter):  # drawn after the rest, so runs without it keep every draw they had
            jitter = torch.rand(2, n, generator=gen) * 2 - 1
            aug = torch.cat([aug.float(), jitter * torch.tensor(self.color_jitter)[:, None]])
        # Every rank draws the same global plan and takes its own stride of it: disjoint shards.
        take = slice(self.rank, self.num_samples * self.world_size, self.world_size)
        return order[take], aug[:, take]

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(inputs, labels)`` for ``epoch``, from batch ``start_step`` on (for exact resume)."""
        order, aug = self._epoch_plan(epoch)
        order = order.to(self.device, non_blocking=True)
        if aug is not None:
            aug = aug.to(self.device, non_blocking=True)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        for step in range(start_step, len(self)):
            sl = slice(step * self.batch_size, (step + 1) * self.batch_size)
            index = order[sl]
            batch = self.images[index]
            if self.augment and aug is not None:
                batch = augment_batch(batch, aug[0, sl].long(), aug[1, sl].long(), aug[2, sl].bool(), self.translate,
                                      self.pad_mode)
            x = _normalize(batch, self._mean, self._std, self.dtype)
            if self.augment and aug is not None and len(aug) > 3:  # brightness, then contrast: (x + b) * (1 + c)
                x = (x + aug[3, sl, None, None, None].to(x.dtype)) * (1 + aug[4, sl, None, None, None].to(x.dtype))
            yield x.contiguous(memory_format=memory_format), self.labels[index]

    def subset(self, indices: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(inputs, labels)`` of the images at ``indices`` (of this split, in that order), in batches of
        ``batch_size``, unaugmented: a second look at some of the test images (selective TTA)."""
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        indices = indices.to(self.device)
        for start in range(0, len(indices), self.batch_size):
            index = indices[start:start + self.batch_size]
            x = _normalize(self.images[index], self._mean, self._std, self.dtype)
            yield x.contiguous(memory_format=memory_format), self.labels[index]
