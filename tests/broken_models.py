"""Small models, each broken in one way that `inspect` must explain (used by test_trace.py)."""

import torch
from torch import nn


class TwoBranchCat(nn.Module):
    def __init__(self):
        super().__init__()
        self.left = nn.Conv2d(3, 8, 3, padding=1)
        self.right = nn.Conv2d(3, 8, 3, stride=2, padding=1)

    def forward(self, x):
        return torch.cat([self.left(x), self.right(x)], dim=1)


def channel_mismatch():
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 16, 3, padding=1))


def batchnorm_mismatch():
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(32))


def linear_mismatch():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 10))


def pool_too_large():
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.MaxPool2d(2), nn.AvgPool2d(7))


def conv_too_large():
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=8, padding=1), nn.Conv2d(8, 8, 5))


class BadView(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.MaxPool2d(2))
        self.fc = nn.Linear(512, 10)

    def forward(self, x):
        x = self.features(x)
        return self.fc(x.view(1, 512))


class DataDependent(nn.Module):
    """Branches on a value: cannot run on meta tensors, so inspect falls back to a real CPU pass."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        return y if float(y.mean()) > -1e9 else -y


class ResidualOK(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())

    def forward(self, x):
        return x + self.body(x)


class NeedsArgs(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3)
