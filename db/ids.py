"""Public ids: 26 lowercase base32 characters, like Replicate's, unguessable (128 random bits)."""

import base64
import secrets


def new_id() -> str:
    return base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=").lower()
