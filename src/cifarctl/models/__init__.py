"""Models by name: ``create_model("vgg16")``. Importing this package registers the built-ins."""

from cifarctl.models import airbench, resnet, resnet18, vgg  # noqa: F401  (registers the models)
from cifarctl.models.registry import create_model, default_recipe, is_model, list_models, register_model
from cifarctl.models.spec import model_card  # a registered model's card, or one for a spec of your own model

__all__ = ["create_model", "default_recipe", "is_model", "list_models", "model_card", "register_model"]
