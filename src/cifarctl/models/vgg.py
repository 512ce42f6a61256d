"""VGG-16 with the course's layout (vgg16_full.py), so its raw state_dicts load unchanged."""

from __future__ import annotations

import math

import torch
from torch import nn

from cifarctl.models.registry import SGD_ONECYCLE_RECIPE, Recipe, register_model

# Channel counts per conv layer; "M" is a 2x2 max pool. Five pools take 32x32 to 1x1.
VGG16_CFG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                              512, 512, 512, "M", 512, 512, 512, "M"]


class VGG(nn.Module):
    """VGG with a small BN classifier head, as the course trained it on CIFAR-10."""

    def __init__(self, cfg: list[int | str], num_classes: int = 10) -> None:
        super().__init__()
        self.features = _make_features(cfg)
        self.classifier = nn.Sequential(
            nn.Dropout(0.5),
            nn.Linear(512, 512),
            nn.BatchNorm1d(512),
            nn.ReLU(True),
            nn.Dropout(0.5),
            nn.Linear(512, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He init as in the course code: std = sqrt(2 / fan_out).
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
                m.bias.data.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = x.view(x.size(0), -1)
        return self.classifier(x)


def _make_features(cfg: list[int | str], batch_norm: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    in_channels = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers.append(nn.Conv2d(in_channels, int(v), kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(int(v)))
            layers.append(nn.ReLU(inplace=True))
            in_channels = int(v)
    return nn.Sequential(*layers)


class VGGBN(nn.Module):
    """The common CIFAR VGG with BatchNorm after every conv and one linear layer on the 512-d feature."""

    def __init__(self, cfg: list[int | str], num_classes: int = 10) -> None:
        super().__init__()
        self.features = _make_features(cfg, batch_norm=True)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@register_model(recipes=[Recipe("course", reference="86.12% after 250 + 1 epochs (the course's checkpoint, n=1, as the "
                                                    "seed reports it)", summary="the course's recipe")])
def vgg16(num_classes: int = 10) -> nn.Module:
    """VGG-16 (13 conv + BN head), 14,983,498 parameters; loads the course's vgg16 checkpoints."""
    return VGG(VGG16_CFG, num_classes=num_classes)


@register_model(recipes=[Recipe("onecycle", SGD_ONECYCLE_RECIPE,
                                reference="92.64% after 200 epochs (kuangliu/pytorch-cifar VGG16); measured "
                                          "here: 59.19% after --epochs 1, 79.12% after --epochs 3 (n=1 each) on a CPU, JPEG "
                                          "copy (docs/accuracy.md); its 40 epochs unmeasured")])
def vgg16_bn(num_classes: int = 10) -> nn.Module:
    """CIFAR VGG-16 with BatchNorm after every conv and a linear head, 14,728,266 parameters."""
    return VGGBN(VGG16_CFG, num_classes=num_classes)
