"""Does cifarctl evaluate a course checkpoint as the course's own loop does?

    python bench/course_parity.py MODEL RAW_STATE_DICT IMAGE_ROOT

IMAGE_ROOT holds test/<class>/*.jpg|png (e.g. the extracted cifar10-images). The course's loop:
ImageFolder + ToTensor + Normalize(course constants), batch 100, eval mode. cifarctl: the same file
through `cifarctl.evaluation` on the dataset imported into the cache from IMAGE_ROOT.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torchvision import datasets, transforms

from cifarctl.data import MEAN, STD, import_cifar10, load_cifar10
from cifarctl.engine import evaluate
from cifarctl.models import create_model


def course_loop(model_name: str, weights: Path, test_dir: Path) -> float:
    model = create_model(model_name)
    model.load_state_dict(torch.load(weights, weights_only=True))
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    loader = torch.utils.data.DataLoader(datasets.ImageFolder(str(test_dir), transform), batch_size=100)
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in loader:
            correct += (model(images).argmax(1) == labels).sum().item()
            total += labels.size(0)
    return 100 * correct / total


def main() -> None:
    model_name, weights, root = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    import_cifar10(root)
    t = time.perf_counter()
    course = course_loop(model_name, weights, root / "test")
    t_course = time.perf_counter() - t
    t = time.perf_counter()
    ours = evaluate(model_name, weights, load_cifar10(), device="cpu")
    t_ours = time.perf_counter() - t
    print(f"course loop: {course:.2f}% ({t_course:.1f}s)  cifarctl: {ours.accuracy:.2f}% ({t_ours:.1f}s)  "
          f"difference {abs(course - ours.accuracy):.2f} points on {ours.images} images")


if __name__ == "__main__":
    main()
