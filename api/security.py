"""Password hashing (Argon2id), access tokens (JWT, HS256, explicit algorithm list) and API
tokens (random, stored as SHA-256)."""

import hashlib
import secrets
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from jose import JWTError, jwt
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from api.settings import ApiSettings, get_api_settings

JWT_ALGORITHM = "HS256"


@lru_cache
def _passwords() -> tuple[PasswordHash, str]:
    """Argon2id at the settings' cost (above the OWASP minimum outside tests), and a hash
    verified against when the user does not exist, so timing does not reveal which usernames
    exist."""
    settings = get_api_settings()
    hasher = Argon2Hasher(
        memory_cost=settings.password_hash_memory_kib,
        time_cost=settings.password_hash_time_cost,
        parallelism=1,
    )
    passwords = PasswordHash((hasher,))
    return passwords, passwords.hash("quern-dummy-password")


def hash_password(password: str) -> str:
    return _passwords()[0].hash(password)


def verify_password(password: str, password_hash: str | None) -> bool:
    passwords, dummy_hash = _passwords()
    if password_hash is None:
        passwords.verify(password, dummy_hash)
        return False
    return passwords.verify(password, password_hash)


def create_access_token(user_id: str, settings: ApiSettings) -> str:
    now = datetime.now(UTC)
    claims = {
        "sub": user_id,
        "iat": now,
        "exp": now + timedelta(seconds=settings.jwt_ttl_s),
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
    }
    return jwt.encode(claims, settings.jwt_secret, algorithm=JWT_ALGORITHM)


class InvalidToken(Exception):
    """Expired, tampered, wrongly signed or malformed."""


def decode_access_token(token: str, settings: ApiSettings) -> str:
    """The user id inside a valid token."""
    try:
        claims = jwt.decode(
            token,
            settings.jwt_secret,
            algorithms=[JWT_ALGORITHM],
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            # python-jose checks `aud` and `iss` only when present unless they are required.
            options={
                "require_exp": True,
                "require_sub": True,
                "require_iat": True,
                "require_aud": True,
                "require_iss": True,
            },
        )
    except JWTError as exc:
        raise InvalidToken(str(exc)) from exc
    subject = claims.get("sub")
    if not isinstance(subject, str):
        raise InvalidToken("token has no subject")
    return subject


# API tokens: "qrn_" + 43 URL-safe characters (256 random bits). The prefix tells them apart from
# JWTs at a glance (and lets secret scanners find leaked ones).
API_TOKEN_PREFIX = "qrn_"  # noqa: S105 - a marker, not a secret


def new_api_token() -> str:
    return API_TOKEN_PREFIX + secrets.token_urlsafe(32)


def is_api_token(bearer: str) -> bool:
    return bearer.startswith(API_TOKEN_PREFIX)


def hash_api_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
