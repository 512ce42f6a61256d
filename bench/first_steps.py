"""The per-step training loss of a model's first steps on the cached dataset, at a constant lr, with the
classifier at its own lr: how docs/accuracy.md found why vgg16_bn and resnet18 climbed above chance.

A plain loop over cifarctl's model and loader (no schedule, no evaluation), so each variant is one flag:

    python bench/first_steps.py vgg16_bn --lr 0.02                 # the classifier at 0.02 too: climbs
    python bench/first_steps.py vgg16_bn --lr 0.02 --head-scale 0.05
    python bench/first_steps.py resnet18 --lr 0.05 --nesterov --label-smoothing 0.1 --weight-decay 5e-4
    python bench/first_steps.py vgg16_bn --lr 0.02 --body-scale 0  # only the classifier trains

Prints ``loss/gradient norm`` of every step. Uses CIFARCTL_HOME's dataset (`cifarctl download` first).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from cifarctl.data import DeviceLoader, load_cifar10
from cifarctl.models import create_model


def classifier(model: nn.Module) -> nn.Module:
    """The last linear layer: the module whose input is the pooled feature vector."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise SystemExit("this model has no linear classifier")
    return linears[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--head-scale", type=float, default=1.0, help="the classifier's lr over --lr")
    parser.add_argument("--body-scale", type=float, default=1.0, help="the other parameters' lr over --lr")
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--nesterov", action="store_true")
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    data = load_cifar10()
    torch.manual_seed(args.seed)
    model = create_model(args.model)
    channels_last = not args.no_channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    head = list(classifier(model).parameters())
    in_head = {id(p) for p in head}
    body = [p for p in model.parameters() if id(p) not in in_head]
    opt = torch.optim.SGD([{"params": body, "lr": args.lr * args.body_scale},
                           {"params": head, "lr": args.lr * args.head_scale}],
                          lr=args.lr, momentum=args.momentum, nesterov=args.nesterov, weight_decay=args.weight_decay)
    loader = DeviceLoader(data.train_images, data.train_labels, args.batch_size, "cpu", train=True, seed=args.seed,
                          channels_last=channels_last)
    model.train()
    out, started = [], time.perf_counter()
    for step, (x, y) in enumerate(loader.epoch(0), 1):
        loss = F.cross_entropy(model(x), y, label_smoothing=args.label_smoothing)
        opt.zero_grad()
        loss.backward()
        norm = torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]).norm()
        opt.step()
        out.append(f"{loss.item():.2f}/{norm.item():.1f}")
        if step == args.steps:
            break
    print(vars(args), f"{time.perf_counter() - started:.0f} s")
    print(" ".join(out))


if __name__ == "__main__":
    main()
