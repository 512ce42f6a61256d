"""Models by name: ``create_model("vgg16")``. Importing this package registers the built-ins."""

from cifarctl.models import resnet, vgg  # noqa: F401  (registers the models)
from cifarctl.models.registry import create_model, is_model, list_models, register_model

__all__ = ["create_model", "is_model", "list_models", "register_model"]
