"""cifarctl's evaluation equals the course's own loop (ImageFolder + ToTensor + Normalize, batch 100)."""

from pathlib import Path

import torch
from torchvision import datasets, transforms

from cifarctl.data import MEAN, STD, import_cifar10, load_cifar10
from cifarctl.engine import evaluate
from cifarctl.models import create_model


def course_accuracy(model: torch.nn.Module, test_dir: Path) -> tuple[float, torch.Tensor]:
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    loader = torch.utils.data.DataLoader(datasets.ImageFolder(str(test_dir), transform), batch_size=100)
    model.eval()
    correct = total = 0
    logits = []
    with torch.no_grad():
        for images, labels in loader:
            out = model(images)
            logits.append(out)
            correct += (out.argmax(1) == labels).sum().item()
            total += labels.size(0)
    return 100 * correct / total, torch.cat(logits)


def test_raw_state_dict_evaluates_like_the_course_loop(home: Path, tmp_path: Path) -> None:
    from conftest import write_image_tree

    tree = write_image_tree(tmp_path / "images", per_class=2, test_per_class=6, fmt="jpg")
    import_cifar10(tree)
    torch.manual_seed(0)
    model = create_model("resnet50")
    with torch.no_grad():  # give BatchNorm some non-trivial statistics, as a trained model has
        model.train()(torch.randn(64, 3, 32, 32) * 0.5)
    torch.save(model.state_dict(), tmp_path / "course.pt")

    expected, _ = course_accuracy(model, tree / "test")
    ours = evaluate("resnet50", tmp_path / "course.pt", load_cifar10(), device="cpu", batch_size=100)
    assert ours.images == 60
    assert abs(ours.accuracy - expected) <= 0.2
