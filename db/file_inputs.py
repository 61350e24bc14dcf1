"""File inputs, as both the API (which checks them) and the workers (which fetch them) read them.

A version's input field is a file when its schema says `"type": "string", "format": "uri"` (as
Cog marks files), or it is an array of such strings. Its value is one of:
- a Quern file URL, `.../v1/files/<id>`: an upload's `urls.get`, or a file a prediction
  produced (its owner's);
- a `data:` URL (RFC 2397), for small files;
- an `http(s)` URL, which the worker fetches through the SSRF guard (common/webhook_guard.py).
In `db` because the API and the workers both import it.
"""

import base64
import re
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import unquote_to_bytes

from db.signed_urls import FILE_URL

# data:[<type>][;<name>=<value>]*[;base64],<data>
DATA_URL = re.compile(
    r"data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[\w.+-]+=[^;,]*)*)(?P<base64>;base64)?,"
    r"(?P<data>.*)",
    re.DOTALL | re.IGNORECASE,
)


def _is_file(schema: Any) -> bool:
    return (
        isinstance(schema, dict)
        and schema.get("type") == "string"
        and (schema.get("format") == "uri")
    )


def file_fields(schema: Mapping[str, Any]) -> tuple[str, ...]:
    """The top-level input fields of `schema` that are files, or arrays of files."""
    properties = schema.get("properties", {})
    return tuple(
        name
        for name, field in properties.items()
        if _is_file(field)
        or (
            isinstance(field, dict)
            and field.get("type") == "array"
            and _is_file(field.get("items"))
        )
    )


def references(input: Mapping[str, Any], fields: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    """(path, value) of every file value in `input` (`image`, `images[2]`)."""
    for name in fields:
        value = input.get(name)
        if isinstance(value, str):
            yield name, value
        elif isinstance(value, list):
            yield from (
                (f"{name}[{i}]", item) for i, item in enumerate(value) if isinstance(item, str)
            )


def quern_file_id(value: str) -> str | None:
    """The file id of a Quern file URL (its query, a signature, ignored), else None."""
    match = FILE_URL.fullmatch(value.split("?", 1)[0].split("#", 1)[0])
    return None if match is None else match[1]


def parse_data_url(value: str) -> tuple[str, bytes]:
    """(content type, bytes) of a `data:` URL; ValueError if it is not a valid one."""
    match = DATA_URL.fullmatch(value)
    if match is None:
        raise ValueError("not a valid data: URL")
    content_type = (match["type"] or "application/octet-stream").lower()
    if match["base64"]:
        try:
            return content_type, base64.b64decode(match["data"], validate=True)
        except ValueError:
            raise ValueError("the data: URL's base64 is invalid") from None
    return content_type, unquote_to_bytes(match["data"])


def is_data_url(value: str) -> bool:
    return value[:5].lower() == "data:"


def is_web_url(value: str) -> bool:
    return value[:7].lower() == "http://" or value[:8].lower() == "https://"


def fixed_content(input: Mapping[str, Any], fields: tuple[str, ...]) -> bool:
    """Whether every file of `input` names fixed bytes: a Quern file (never changes) or a
    `data:` URL, not an http(s) URL whose answer may change. Only then may a result cache key
    on the input."""
    return all(
        quern_file_id(value) is not None or is_data_url(value)
        for _, value in references(input, fields)
    )
