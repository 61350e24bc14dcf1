"""A version's input and output as the OpenAPI document Cog publishes for a model
(`components.schemas.Input` and `Output`). Replicate's clients read it: the Python client
hands back an iterator only when `Output` is an array with `x-cog-array-type: iterator`, so
`Output` says exactly what Quern stores (text is one string, not a list of tokens)."""

from typing import Any

from models.registry import OUTPUT_SCHEMAS

# The Cog release whose schema form this follows; `+quern`: made by Quern, which runs no Cog.
COG_VERSION = "0.16.0+quern"


def openapi_schema(model_type: str, input_schema: dict[str, Any]) -> dict[str, Any]:
    inputs = {key: value for key, value in input_schema.items() if key != "$schema"}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Cog", "version": "0.1.0"},
        "paths": {},
        "components": {
            "schemas": {
                "Input": {"title": "Input", **inputs},
                "Output": {"title": "Output", **OUTPUT_SCHEMAS.get(model_type, {})},
            }
        },
    }
