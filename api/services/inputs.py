"""Prediction input against a version's JSON Schema: every bad field named, defaults filled in."""

from typing import Any

from jsonschema import Draft202012Validator, ValidationError

from api.errors import Unprocessable, summarize
from db.storable import unstorable


def _path(error: ValidationError) -> str:
    path = "input"
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _describe(error: ValidationError) -> list[dict[str, str]]:
    """One entry per offending field, with the field's own path (not its parent's)."""
    if error.validator == "required":
        missing = [name for name in error.validator_value if name not in error.instance]
        return [
            {"field": f"{_path(error)}.{name}", "message": "Field required"} for name in missing
        ]
    if error.validator == "additionalProperties":
        allowed = error.schema.get("properties", {})
        unknown = [key for key in error.instance if key not in allowed]
        return [{"field": f"{_path(error)}.{key}", "message": "Unknown field"} for key in unknown]
    return [{"field": _path(error), "message": _message(error)}]


def _message(error: ValidationError) -> str:
    """jsonschema's messages quote the offending value: fine for `5`, not for a 5 MB string."""
    if error.validator == "maxLength":
        return f"Longer than {error.validator_value} characters"
    if error.validator == "minLength":
        return f"Shorter than {error.validator_value} characters"
    if error.validator in ("maxItems", "minItems"):
        bound = "most" if error.validator == "maxItems" else "least"
        return f"Must have at {bound} {error.validator_value} items"
    message = str(error.message)
    return message if len(message) <= 200 else message[:197] + "..."


def validate_input(
    schema: dict[str, Any], given: dict[str, Any], max_string_chars: int
) -> dict[str, Any]:
    """The input to store: `given` plus the schema's top-level defaults. 422 if invalid."""
    invalid = [
        {"field": path, "message": reason}
        for path, reason in unstorable(given, "input", max_string_chars)
    ]
    if not invalid:
        filled = dict(given)
        for name, prop in schema.get("properties", {}).items():
            if name not in filled and isinstance(prop, dict) and "default" in prop:
                filled[name] = prop["default"]
        errors = sorted(
            Draft202012Validator(schema).iter_errors(filled), key=lambda e: list(e.absolute_path)
        )
        invalid = [item for error in errors for item in _describe(error)]
    if invalid:
        raise Unprocessable(f"Invalid input: {summarize(invalid)}", invalid_fields=invalid)
    return filled
