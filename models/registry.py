"""Model types by name: the one place that maps a version's `model_type` to code.

`custom` takes the class from the version (`package.module:ClassName`), so users add a model
by installing a package on the workers, without touching Quern.
"""

import hashlib
import importlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from models.base import Predictor

CUSTOM = "custom"
# Imported lazily so that listing the types never imports torch.
MODEL_TYPES = {
    "embeddings": "models.embeddings:EmbeddingsPredictor",
    "text-generation": "models.text_generation:TextGenerationPredictor",
    "text-to-image": "models.text_to_image:TextToImagePredictor",
    "text-classification": "models.text_classification:TextClassificationPredictor",
    "image-classification": "models.image_classification:ImageClassificationPredictor",
    "image-to-text": "models.image_to_text:ImageToTextPredictor",
}
# Labels with scores, best first (classification).
_LABELS: dict[str, object] = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {"label": {"type": "string"}, "score": {"type": "number"}},
        "required": ["label", "score"],
    },
}
# What each type's predict_batch returns for one input, as JSON Schema: text is one string
# (streamed chunks concatenate to it), an embedding a list of numbers, images a list of file
# URLs. A custom class's output is unknown: {}.
OUTPUT_SCHEMAS: dict[str, dict[str, object]] = {
    "embeddings": {"type": "array", "items": {"type": "number"}},
    "text-generation": {"type": "string"},
    "text-to-image": {"type": "array", "items": {"type": "string", "format": "uri"}},
    "text-classification": _LABELS,
    "image-classification": _LABELS,
    "image-to-text": {"type": "string"},
}
# Types whose outputs are files: the result cache does not answer them (a file belongs to the
# prediction that made it, and to its owner).
FILE_OUTPUTS = frozenset({"text-to-image"})
CLASS_PATH_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"


def is_deterministic(model_type: str, input: Mapping[str, Any]) -> bool:
    """Whether this (validated) input always gets the same output, so that a repeat may be
    answered from the result cache. Text generation: when it is greedy (temperature 0) or
    asks for a `seed` (then the cache is what makes a seed reproducible across batches). A
    custom class: its version's author says so by enabling the cache."""
    if model_type == "text-generation":
        return input.get("temperature") == 0 or input.get("seed") is not None
    return model_type not in FILE_OUTPUTS


def cache_key(model_type: str, input: Mapping[str, Any]) -> bytes | None:
    """SHA-256 of a deterministic (validated) input in canonical form (keys sorted), which
    names its result cache entry; None for any other input."""
    if not is_deterministic(model_type, input):
        return None
    canonical = json.dumps(input, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).digest()


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
