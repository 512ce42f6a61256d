"""ResNet-50 with the course's layout (ResNet50_layer4, corrected), so its state_dicts load unchanged.

The course model differs from torchvision's ResNet-50: every conv has a bias and is wrapped with its
BatchNorm and ReLU in a Sequential "unit"; stages have 3/4/6 blocks (no fourth stage of 3); the
downsampling block is the *last* of a stage; and a non-downsampling block always projects its input
with a 1x1 unit (``make_equal_channel``), because the course's ``x.size() is not out.size()`` is
always true. Its checkpoint was trained that way, so we keep it.
"""

from __future__ import annotations

import torch
from torch import nn

from cifarctl.models.registry import Recipe, register_model


def unit(in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int) -> nn.Sequential:
    """Conv (with bias) + BatchNorm + ReLU: the course's conv1x1/conv3x3 building block."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ResidualBlock(nn.Module):
    """Bottleneck block: 1x1 reduce, 3x3, 1x1 expand, plus a projected shortcut (no ReLU after the sum)."""

    def __init__(self, in_channels: int, middle_channels: int, out_channels: int, downsample: bool = False) -> None:
        super().__init__()
        self.downsample = downsample
        stride = 2 if downsample else 1
        self.layer = nn.Sequential(
            unit(in_channels, middle_channels, 1, stride, 0),
            unit(middle_channels, middle_channels, 3, 1, 1),
            unit(middle_channels, out_channels, 1, 1, 0),
        )
        if downsample:
            self.downsize = unit(in_channels, out_channels, 1, 2, 0)
        else:
            self.make_equal_channel = unit(in_channels, out_channels, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.downsize(x) if self.downsample else self.make_equal_channel(x)
        return self.layer(x) + shortcut


def _stage(in_channels: int, middle: int, out_channels: int, blocks: int, downsample_last: bool) -> nn.Sequential:
    layers = [ResidualBlock(in_channels, middle, out_channels)]
    layers += [ResidualBlock(out_channels, middle, out_channels) for _ in range(blocks - 2)]
    layers.append(ResidualBlock(out_channels, middle, out_channels, downsample=downsample_last))
    return nn.Sequential(*layers)


class ResNet50Course(nn.Module):
    """The course's ResNet50_layer4: 32x32 -> 8x8 stem, stages at 8x8, 4x4 and 2x2, global average."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.layer1 = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        self.layer2 = _stage(64, 64, 256, blocks=3, downsample_last=True)
        self.layer3 = _stage(256, 128, 512, blocks=4, downsample_last=True)
        self.layer4 = _stage(512, 256, 1024, blocks=6, downsample_last=False)
        # The course used AvgPool2d(2) on its final 2x2 map; adaptive pooling is the same there and
        # also serves larger inputs (e.g. 3x224x224 for inspect).
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1024, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer1(x)
        out = self.layer2(out)
        out = self.layer3(out)
        out = self.layer4(out)
        out = self.avgpool(out)
        out = out.view(out.size(0), -1)
        return self.fc(out)


@register_model(recipes=[Recipe("course", reference="none published (the course gives a 285-epoch checkpoint)",
                                summary="the course's recipe")])
def resnet50(num_classes: int = 10) -> nn.Module:
    """Course ResNet-50 (bottlenecks 3/4/6), 14,750,730 parameters; loads the course's checkpoints."""
    return ResNet50Course(num_classes=num_classes)
