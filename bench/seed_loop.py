"""The seed's loop, as the course's main.py runs it: torchvision-style CIFAR10 with per-image PIL
transforms, a DataLoader with no workers, batch 100, fp32, Adam + cross-entropy.

Only the dataset source differs: images come from cifarctl's uint8 arrays (the same bytes
torchvision's CIFAR10 holds), turned into PIL images per sample exactly as CIFAR10.__getitem__ does.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision import transforms

from cifarctl.data.loader import MEAN, STD


class ArrayCIFAR(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable) -> None:
        self.images, self.labels, self.transform = images.numpy(), labels.tolist(), transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(np.asarray(self.images[i]))), self.labels[i]


TRAIN_TRANSFORM = transforms.Compose([
    transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
    transforms.ToTensor(), transforms.Normalize(MEAN, STD),
])
TEST_TRANSFORM = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seed_train(model: nn.Module, images, labels, device: torch.device, steps: int, warmup: int,
               batch_size: int = 100) -> dict[str, float]:
    """Images/s of the course's training loop over ``steps`` steps after ``warmup`` steps."""
    loader = torch.utils.data.DataLoader(ArrayCIFAR(images, labels, TRAIN_TRANSFORM), batch_size=batch_size,
                                         shuffle=True, num_workers=0)
    model.to(device).train()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    start, seen = None, 0
    for i, (x, y) in enumerate(loader):
        if i == warmup:
            _sync(device)
            start, seen = time.perf_counter(), 0
        if i == warmup + steps:
            break
        x, y = x.to(device), y.to(device)
        outputs = model(x)
        loss = criterion(outputs, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (i + 1) % 100 == 0:
            print(f"step {i + 1} loss {loss.item():.4f}")  # the course prints the loss every 100 steps
        seen += len(y)
    _sync(device)
    return {"images": seen, "seconds": time.perf_counter() - start}


def seed_eval(model: nn.Module, images, labels, device: torch.device, batch_size: int = 100) -> dict[str, float]:
    """Images/s of the course's test loop over the given images."""
    loader = torch.utils.data.DataLoader(ArrayCIFAR(images, labels, TEST_TRANSFORM), batch_size=batch_size,
                                         shuffle=False, num_workers=0)
    model.to(device).eval()
    correct = total = 0
    _sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            outputs = model(x)
            _, predicted = torch.max(outputs.data, 1)
            total += y.size(0)
            correct += (predicted == y).sum().item()
    _sync(device)
    return {"images": total, "seconds": time.perf_counter() - start, "accuracy": 100 * correct / total}
