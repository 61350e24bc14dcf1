"""Prediction input against a version's JSON Schema: every bad field named, defaults filled in."""

from typing import Any

from jsonschema import Draft202012Validator, SchemaError, ValidationError
from referencing import Registry
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

from api.errors import Unprocessable, summarize
from db.storable import unstorable

# No retrieval: a `$ref` to a URL must never make the API fetch it (SSRF, and a request that
# hangs on someone else's server). Only references inside the schema itself resolve.
_LOCAL_ONLY = Registry()


def input_validator(schema: dict[str, Any]) -> Draft202012Validator:
    return Draft202012Validator(schema, registry=_LOCAL_ONLY)


def check_input_schema(schema: dict[str, Any]) -> None:
    """ValueError (a 422 naming `input_schema`) unless `schema` is a JSON Schema of an object
    whose references are its own and whose defaults it accepts."""
    problems = unstorable(schema, "input_schema")
    if problems:
        raise ValueError(f"{problems[0][0]}: {problems[0][1]}")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(part) for part in exc.absolute_path) or "the top level"
        raise ValueError(f"not a valid JSON Schema at {where}: {exc.message[:200]}") from None
    if schema.get("type") != "object":
        raise ValueError('must describe an object: "type": "object"')
    resolver = _LOCAL_ONLY.with_resource("", DRAFT202012.create_resource(schema)).resolver()
    for ref in _references(schema):
        if not ref.startswith("#"):
            raise ValueError(f"$ref {ref[:100]!r} points outside the schema; use #/$defs/...")
        try:
            resolver.lookup(ref)
        except Unresolvable:
            raise ValueError(f"$ref {ref[:100]!r} names nothing in the schema") from None
    validator = input_validator(schema)
    for name, prop in schema.get("properties", {}).items():
        if isinstance(prop, dict) and "default" in prop:
            # Within the whole schema, so that a default beside a local $ref resolves.
            error = next(validator.descend(prop["default"], prop), None)
            if error is not None:
                raise ValueError(f"the default of {name!r} is invalid: {error.message[:200]}")


def _references(schema: Any) -> list[str]:
    if isinstance(schema, dict):
        found = [
            v for k, v in schema.items() if k in ("$ref", "$dynamicRef") and isinstance(v, str)
        ]
        return found + [ref for value in schema.values() for ref in _references(value)]
    if isinstance(schema, list):
        return [ref for item in schema for ref in _references(item)]
    return []


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
    names = _alternatives(error)
    if names is not None and isinstance(error.instance, dict):
        given = [name for name in names if name in error.instance]
        others = " or ".join(f"`{name}`" for name in names[1:])
        if not given:
            message = f"Field required (or give {others} instead)"
            return [{"field": f"{_path(error)}.{names[0]}", "message": message}]
        listed = " and ".join(f"`{name}`" for name in given)
        message = f"Give only one of {listed}"
        return [{"field": f"{_path(error)}.{given[-1]}", "message": message}]
    if error.validator == "additionalProperties":
        allowed = error.schema.get("properties", {})
        unknown = [key for key in error.instance if key not in allowed]
        return [{"field": f"{_path(error)}.{key}", "message": "Unknown field"} for key in unknown]
    return [{"field": _path(error), "message": _message(error)}]


def _alternatives(error: ValidationError) -> list[str] | None:
    """The fields of a `oneOf` whose every branch is `{"required": [one field]}` (give exactly
    one of them, as `prompt` or `messages`), in order; None for any other failure."""
    branches = error.validator_value
    if error.validator != "oneOf" or not isinstance(branches, list):
        return None
    names = []
    for branch in branches:
        if not isinstance(branch, dict) or branch.keys() != {"required"}:
            return None
        required = branch["required"]
        if not isinstance(required, list) or len(required) != 1:
            return None
        names.append(str(required[0]))
    return names


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
    validator: Draft202012Validator,
    given: dict[str, Any],
    max_string_chars: int,
    file_fields: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The input to store: `given` plus the schema's top-level defaults. 422 if invalid.
    `validator` is the version's, compiled once (api/services/versions.py). Strings of
    `file_fields` (data: URLs) are not held to `max_string_chars`: their own limit is checked
    with the file (api/services/file_inputs.py)."""
    problems = unstorable(given, "input", max_string_chars)
    if file_fields:
        files = {name: given[name] for name in file_fields if name in given}
        others = {name: value for name, value in given.items() if name not in files}
        problems = unstorable(others, "input", max_string_chars) + unstorable(files, "input")
    invalid = [{"field": path, "message": reason} for path, reason in problems]
    if not invalid:
        filled = dict(given)
        for name, prop in validator.schema.get("properties", {}).items():
            if name not in filled and isinstance(prop, dict) and "default" in prop:
                filled[name] = prop["default"]
        errors = sorted(validator.iter_errors(filled), key=lambda e: list(e.absolute_path))
        invalid = [item for error in errors for item in _describe(error)]
    if invalid:
        raise Unprocessable(f"Invalid input: {summarize(invalid)}", invalid_fields=invalid)
    return filled
