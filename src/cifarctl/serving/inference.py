"""A trained model with what it needs to see an image as its training did: ``predict`` on your own pictures.

Images of any size and mode are turned into what the model was trained on: RGB (transparency
composited onto white), the shorter side resized to 32 pixels (bicubic, antialiased), the centre
32x32 kept, then normalised with the run's mean and std.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cifarctl.data.cifar10 import CLASSES
from cifarctl.data.images import to_rgb
from cifarctl.data.loader import normalize
from cifarctl.device import resolve_device
from cifarctl.errors import UsageError
from cifarctl.evaluation import load_model, tta_logits
from cifarctl.run.config import SELECTIVE

SIZE = 32


@dataclass
class TrainedModel:
    """A model with its weights loaded, in eval mode, and the facts about its training that inference needs."""

    name: str
    model: nn.Module
    checkpoint: str
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    tta: int                        # the TTA level its run reported with (selective: 2, each picture looked at again)
    device: torch.device


def load_trained(model_name: str, checkpoint: Path | str, device: str = "cpu",
                 model_kwargs: dict[str, Any] | None = None, num_classes: int | None = None) -> TrainedModel:
    """Load ``checkpoint`` (cifarctl's or a raw state_dict) into ``model_name``, on ``device``, in eval mode.

    ``model_name`` is a registered name or a spec, built with ``model_kwargs`` (default: those its run
    recorded). Class names come from the checkpoint when its run saved them, else CIFAR-10's; mean, std
    and the TTA level from the run's config, else the model's recipe.
    Usage: ``trained = load_trained("airbench94", "last.pt")``
    """
    loaded = load_model(model_name, checkpoint, num_classes, model_kwargs)
    classes = tuple(loaded.state.get("classes") or CLASSES)
    config = loaded.trained
    dev = resolve_device(device)
    return TrainedModel(model_name, loaded.model.to(dev).eval(), str(checkpoint), classes, tuple(config["mean"]),
                        tuple(config["std"]), 2 if config["tta"] == SELECTIVE else int(config["tta"]), dev)


# -- images ------------------------------------------------------------------------------------

def image_files(paths: list[Path]) -> list[Path]:
    """The files to predict: files as given, and every image file under a folder (recursively, sorted)."""
    from PIL import Image

    known = {ext.lower() for ext in Image.registered_extensions()}
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in known)
        else:
            files.append(path)
    return files


def read_image(path: Path) -> torch.Tensor:
    """``path`` as a 3x32x32 uint8 tensor (see the module's docstring); a one-line ``ValueError`` if unreadable."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    try:
        with Image.open(path) as img:
            img.load()   # decode now: a truncated file fails here
            rgb = to_rgb(img, background=(255, 255, 255))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a folder") from None
    except UnidentifiedImageError:
        raise ValueError(f"{path}: not an image PIL can read") from None
    except (OSError, SyntaxError) as exc:   # truncated or damaged files
        raise ValueError(f"{path}: unreadable image ({exc})") from None
    small = TF.resize(rgb, SIZE, interpolation=InterpolationMode.BICUBIC, antialias=True)
    return TF.pil_to_tensor(TF.center_crop(small, [SIZE, SIZE]))


# -- predictions -------------------------------------------------------------------------------

@dataclass
class Prediction:
    """The top classes of one image, most probable first."""

    image: str
    top: list[tuple[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image, "class": self.top[0][0], "probability": self.top[0][1],
                "top": [{"class": c, "probability": p} for c, p in self.top]}


@dataclass
class PredictResult:
    model: str
    checkpoint: str
    tta: int
    predictions: list[Prediction] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)       # one line per image that could not be read

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "checkpoint": self.checkpoint, "tta": self.tta,
                "predictions": [p.to_dict() for p in self.predictions], "failures": self.failures}


def predict_images(trained: TrainedModel, images: torch.Tensor, top_k: int = 3, tta: int | None = None,
                   batch_size: int = 256) -> list[list[tuple[str, float]]]:
    """Top-``top_k`` (class, probability) of each image in an Nx3x32x32 uint8 batch."""
    level = trained.tta if tta is None else tta
    k = max(1, min(top_k, len(trained.classes)))
    out: list[list[tuple[str, float]]] = []
    with torch.inference_mode():
        for chunk in images.split(batch_size):
            x = normalize(chunk.to(trained.device), mean=trained.mean, std=trained.std)
            probs = tta_logits(trained.model, x, level).softmax(1)
            values, indices = probs.topk(k, dim=1)
            out += [[(trained.classes[i], round(float(v), 6)) for v, i in zip(vs, ix)]
                    for vs, ix in zip(values.tolist(), indices.tolist())]
    return out


def predict(model_name: str, checkpoint: Path | str, paths: list[Path], top_k: int = 3, tta: int | None = None,
            device: str = "cpu", model_kwargs: dict[str, Any] | None = None,
            num_classes: int | None = None) -> PredictResult:
    """Predict the class of every image in ``paths`` (files, or folders read recursively in sorted order).

    An unreadable image becomes one line in ``failures``; the others are still predicted.
    Usage: ``predict("airbench94", "last.pt", [Path("cat.jpg")]).predictions[0].top``
    """
    files = image_files(paths)
    if not files:
        raise UsageError(f"no image files in {', '.join(str(p) for p in paths)}: give images or folders of images")
    trained = load_trained(model_name, checkpoint, device, model_kwargs, num_classes)
    level = trained.tta if tta is None else tta
    result = PredictResult(model_name, str(checkpoint), level)
    read: list[tuple[Path, torch.Tensor]] = []
    for path in files:
        try:
            read.append((path, read_image(path)))
        except ValueError as exc:
            result.failures.append(str(exc))
    if read:
        tops = predict_images(trained, torch.stack([t for _, t in read]), top_k, level)
        result.predictions = [Prediction(str(path), top) for (path, _), top in zip(read, tops)]
    return result
