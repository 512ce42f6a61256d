"""ResNet-18 for CIFAR: torchvision's ResNet with the CIFAR stem (3x3 conv, stride 1, no max-pool).

torchvision's ImageNet stem (7x7 stride 2 and a max-pool) shrinks 32x32 to 8x8 before the first
stage and costs CIFAR accuracy; this stem keeps 32x32 there, as kuangliu/pytorch-cifar's ResNet18.
"""

from __future__ import annotations

from torch import nn

from cifarctl.models.registry import SGD_ONECYCLE_RECIPE, Recipe, register_model


@register_model(recipes=[Recipe("onecycle", SGD_ONECYCLE_RECIPE,
                                reference="93.02% after 200 epochs (kuangliu/pytorch-cifar ResNet18); measured "
                                          "here: 54.21% after --epochs 1 (n=1, at the earlier lr 0.4) on a CPU, JPEG copy "
                                          "(docs/accuracy.md); "
                                          "its 40 epochs unmeasured")])
def resnet18(num_classes: int = 10) -> nn.Module:
    """CIFAR ResNet-18 (BasicBlocks 2/2/2/2, 3x3 stem), 11,173,962 parameters at 10 classes."""
    from torchvision.models import resnet   # here: importing torchvision costs a second that others need not pay
    model = resnet.resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision's stem
    model.maxpool = nn.Identity()
    return model
