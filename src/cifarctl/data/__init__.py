"""CIFAR-10: the cache, its sources, and device-resident batch loaders."""

from cifarctl.data.cifar10 import CIFAR10, CLASSES, cache_info, fake_cifar10, load_cifar10
from cifarctl.data.loader import MEAN, STD, DeviceLoader, augment_batch, normalize
from cifarctl.data.prepare import PrepareResult, dataset_for, download_cifar10, ensure_cifar10, import_cifar10

__all__ = [
    "CIFAR10", "CLASSES", "MEAN", "STD", "DeviceLoader", "PrepareResult", "augment_batch", "cache_info", "dataset_for",
    "download_cifar10", "ensure_cifar10", "fake_cifar10", "import_cifar10", "load_cifar10", "normalize",
]
