"""Model types by name: the one place that maps a version's `model_type` to code.

`custom` takes the class from the version (`package.module:ClassName`), so users add a model
by installing a package on the workers, without touching Quern.
"""

import importlib
import re
from pathlib import Path

from models.base import Predictor

CUSTOM = "custom"
# Imported lazily so that listing the types never imports torch.
MODEL_TYPES = {
    "embeddings": "models.embeddings:EmbeddingsPredictor",
    "text-generation": "models.text_generation:TextGenerationPredictor",
    "text-to-image": "models.text_to_image:TextToImagePredictor",
}
# What each type's predict_batch returns for one input, as JSON Schema: text is one string
# (streamed chunks concatenate to it), an embedding a list of numbers, images a list of file
# URLs. A custom class's output is unknown: {}.
OUTPUT_SCHEMAS: dict[str, dict[str, object]] = {
    "embeddings": {"type": "array", "items": {"type": "number"}},
    "text-generation": {"type": "string"},
    "text-to-image": {"type": "array", "items": {"type": "string", "format": "uri"}},
}
CLASS_PATH_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"


class UnknownModelType(Exception):
    """The version names a model type or class this worker does not have."""


def load_class(model_type: str, class_path: str | None = None) -> type[Predictor]:
    if model_type == CUSTOM:
        if class_path is None or not re.fullmatch(CLASS_PATH_PATTERN, class_path):
            raise UnknownModelType(f"a custom version needs a class path, not {class_path!r}")
        path = class_path
    elif model_type in MODEL_TYPES:
        path = MODEL_TYPES[model_type]
    else:
        raise UnknownModelType(f"unknown model type {model_type!r}")
    module_name, _, class_name = path.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise UnknownModelType(f"cannot load {path} on this worker: {exc}") from None
    if not all(callable(getattr(cls, name, None)) for name in ("setup", "predict_batch")):
        raise UnknownModelType(f"{path} is not a predictor: it needs setup() and predict_batch()")
    return cls  # type: ignore[no-any-return]


def create(model_type: str, weights: Path, device: str, class_path: str | None = None) -> Predictor:
    """A predictor for `device` ("cpu" or "cuda"), not yet set up."""
    return load_class(model_type, class_path)(weights, device)
