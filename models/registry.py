"""Model types by name: the one place that maps a version's `model_type` to code."""

import importlib
from pathlib import Path

from models.base import Predictor

# Imported lazily so that listing the types never imports torch.
MODEL_TYPES = {
    "embeddings": "models.embeddings:EmbeddingsPredictor",
    "text-generation": "models.text_generation:TextGenerationPredictor",
}


class UnknownModelType(Exception):
    """The version names a model type this worker does not have."""


def load_class(model_type: str) -> type[Predictor]:
    try:
        module_name, _, class_name = MODEL_TYPES[model_type].partition(":")
    except KeyError:
        raise UnknownModelType(f"unknown model type {model_type!r}") from None
    cls: type[Predictor] = getattr(importlib.import_module(module_name), class_name)
    return cls


def create(model_type: str, weights: Path) -> Predictor:
    """A predictor, not yet set up."""
    return load_class(model_type)(weights)
