"""airbench94's network at a quarter of its widths as a student writes it from the paper's description.

Three blocks of conv -> 2x2 max-pool -> BatchNorm -> ReLU -> conv -> BatchNorm -> ReLU with 16, 64 and
64 channels, a plain 3x3 conv stem instead of the whitening one, a global max-pool and a linear head,
PyTorch's own initialisation: none of airbench's tricks (whitening, scaled logits, identity-initialised
filters). The tuning benchmark's model (docs/accuracy.md): what `cifarctl tune` finds for a model of
one's own, set against the built-in `airbench94_quarter`.
"""

import torch
from torch import nn


def block(cin, cout):
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(cout), nn.ReLU(),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
    )


class PlainQuarter(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 24, 3, padding=1), nn.ReLU())
        self.blocks = nn.Sequential(block(24, 16), block(16, 64), block(64, 64))
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(64, num_classes, bias=False)

    def forward(self, x):
        return self.head(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))
