"""What PostgreSQL cannot store in JSONB or text: NUL, lone surrogates, NaN and infinities.

Checked before writing, so bad data becomes a clear error instead of a failed INSERT.
"""

import math
from typing import Any


def unstorable(value: Any, path: str, max_chars: int | None = None) -> list[tuple[str, str]]:
    """(path, reason) for every part of `value` that the database would reject, and every
    string longer than `max_chars` if given."""
    problems: list[tuple[str, str]] = []
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
            problems += unstorable(key, f"{path}.<key>", max_chars)
            problems += unstorable(item, f"{path}.{key}", max_chars)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            problems += unstorable(item, f"{path}[{index}]", max_chars)
    return problems
