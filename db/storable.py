"""What PostgreSQL cannot store in JSONB or text: NUL, lone surrogates, NaN and infinities.

Checked before writing, so bad data becomes a clear error instead of a failed INSERT.
"""

import math
from typing import Any

# pydantic refuses to serialize deeper values (about 255 levels); JSON inputs need far fewer.
MAX_DEPTH = 64


def unstorable(
    value: Any, path: str, max_chars: int | None = None, depth: int = 0
) -> list[tuple[str, str]]:
    """(path, reason) for every part of `value` that the database would reject, every string
    longer than `max_chars` if given, and nesting deeper than MAX_DEPTH (stored, such a value
    could not be serialized back)."""
    problems: list[tuple[str, str]] = []
    if isinstance(value, dict | list | tuple) and depth >= MAX_DEPTH:
        return [(path, f"Nested deeper than {MAX_DEPTH} levels")]
    if isinstance(value, str):
        if max_chars is not None and len(value) > max_chars:
            problems.append((path, f"Longer than {max_chars} characters"))
        elif "\x00" in value:
            problems.append((path, "NUL characters are not allowed"))
        elif not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                problems.append((path, "Invalid Unicode (lone surrogate)"))
    elif isinstance(value, float):
        if not math.isfinite(value):
            problems.append((path, "NaN and infinite numbers are not allowed"))
    elif isinstance(value, dict):
        for key, item in value.items():
            problems += unstorable(key, f"{path}.<key>", max_chars, depth + 1)
            problems += unstorable(item, f"{path}.{key}", max_chars, depth + 1)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            problems += unstorable(item, f"{path}[{index}]", max_chars, depth + 1)
    return problems
