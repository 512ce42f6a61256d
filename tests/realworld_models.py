"""Ordinary models as people write them, which `inspect` must trace without false alarms (test_trace.py)."""

import torch
import torch.nn.functional as F
from torch import nn


class ConstantWithoutDevice(nn.Module):
    """Builds a constant in forward without ``device=``: runs in PyTorch, so inspect must say it fits."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return self.c(x) + torch.ones(1, 8, 1, 1)


class ConstantOnCpu(nn.Module):
    """A constant pinned to the CPU meets meta tensors: meta's problem, not the model's."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return self.c(x) * torch.full((1, 8, 1, 1), 2.0, device="cpu")


class CatchesItsOwnError(nn.Module):
    """Tries a layer and an op that fail, handles both, and goes on."""

    def __init__(self):
        super().__init__()
        self.wrong = nn.Conv2d(16, 8, 3, padding=1)     # expects 16 channels, gets 3
        self.right = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        try:
            y = self.wrong(x)
        except RuntimeError:
            y = self.right(x)
        try:
            y = y.view(3, -1)
        except RuntimeError:
            pass
        return self.pool(y)


class BatchOneView(nn.Module):
    """``x.view(1, -1)`` fits a batch of 1 and nothing else."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.MaxPool2d(2))
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(self.features(x).view(1, -1))


class LayerNorm2d(nn.Module):
    """ConvNeXt's channels-first LayerNorm: a per-channel affine that broadcasts on purpose."""

    def __init__(self, channels):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + 1e-6)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class AffineAndGate(nn.Module):
    """LayerNorm2d, a bias add, and a squeeze-and-excitation gate: all intended broadcasts."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = LayerNorm2d(8)
        self.shift = nn.Parameter(torch.zeros(8, 1, 1))
        self.squeeze = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 8, 1), nn.Sigmoid())

    def forward(self, x):
        x = self.norm(self.conv(x)) + self.shift
        return x * self.squeeze(x)


class RowGate(nn.Module):
    """Multiplies a map by a 1xW row of itself: a spatial broadcast that is likely a bug."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.row = nn.AdaptiveAvgPool2d((1, 32))

    def forward(self, x):
        x = self.conv(x)
        return x * self.row(x)


class SharedConv(nn.Module):
    """One conv called twice, and one block reachable under two names."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        block = nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU())
        self.first = nn.Sequential(block)
        self.second = nn.Sequential(block)

    def forward(self, x):
        x = self.conv(self.conv(x))
        return self.second(self.first(x))


class Attention(nn.Module):
    """Self-attention over the pixels: MultiheadAttention plus an einsum."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 32, 4, stride=4)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.proj = nn.Parameter(torch.randn(32, 10))

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens, _ = self.attn(tokens, tokens, tokens)
        return torch.einsum("bnc,ck->bk", tokens, self.proj)


class FunctionalConv(nn.Module):
    """Convolution and linear through torch.nn.functional with the module's own weights."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 3, 3, 3))
        self.fc = nn.Parameter(torch.randn(10, 8))

    def forward(self, x):
        x = F.conv2d(x, self.w, padding=1).mean((2, 3))
        return F.linear(x, self.fc)


class InitBug(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(10)


class InitRaises(nn.Module):
    def __init__(self):
        super().__init__()
        self.widths = [8, 16]
        self.last = self.widths[2]


class StringPadding(nn.Module):
    """A residual block whose branch uses padding="valid" and shrinks the map; the shortcut uses "same"."""

    def __init__(self):
        super().__init__()
        self.branch = nn.Sequential(nn.Conv2d(3, 8, 3, padding="valid"), nn.ReLU())
        self.shortcut = nn.Conv2d(3, 8, 3, padding="same")

    def forward(self, x):
        return self.branch(x) + self.shortcut(x)


class RowsFromFeatures(nn.Module):
    """``x.view(-1, 64)`` runs at any batch, but turns 2 images into 4 rows: the output batch is wrong."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.MaxPool2d(2))
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(self.features(x).view(-1, 64))


class SqueezeExcite(nn.Module):
    """A squeeze-and-excitation block: global pooling to 1x1 on purpose, then a 3x3 conv at full size."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 8, 1), nn.Sigmoid())
        self.after = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        x = self.conv(x)
        return self.after(x * self.gate(x))


class TinyTransformer(nn.Module):
    """Patches through nn.TransformerEncoderLayer (a fused fast path on the CPU) and F.scaled_dot_product_attention."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 32, 8, stride=8)
        self.encoder = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, batch_first=True)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        tokens = self.encoder(self.embed(x).flatten(2).transpose(1, 2))
        q = tokens.unflatten(-1, (4, 8)).transpose(1, 2)
        mixed = F.scaled_dot_product_attention(q, q, q).transpose(1, 2).flatten(2)
        return self.head(mixed.mean(1))
