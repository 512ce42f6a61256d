"""cifarctl: train, evaluate and debug CNNs on CIFAR-10.

The library is usable without the CLI::

    from cifarctl.models import create_model
    from cifarctl.data import load_cifar10
    from cifarctl.engine import TrainConfig, train, evaluate
"""

__version__ = "0.1.0"
