"""Public ids: 26 lowercase base32 characters, like Replicate's, unguessable (128 random bits)."""

import base64
import re
import secrets

ID_PATTERN = r"^[a-z2-7]{26}$"
_ID = re.compile(ID_PATTERN)


def new_id() -> str:
    return base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=").lower()


def is_id(value: str) -> bool:
    """Shaped like an id we issued: anything else cannot exist, so it is not worth a query."""
    return _ID.fullmatch(value) is not None
