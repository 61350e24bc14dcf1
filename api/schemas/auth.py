"""Accounts and tokens."""

from datetime import datetime

from pydantic import Field

from api.schemas.base import RequestBody, ResponseBody

USERNAME_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,37}[a-z0-9])?$"


class RegisterRequest(RequestBody):
    username: str = Field(
        pattern=USERNAME_PATTERN,
        description="Lowercase letters, digits and inner hyphens; 1-39 characters.",
    )
    password: str = Field(min_length=8, max_length=256)


class UserOut(ResponseBody):
    id: str
    username: str
    role: str
    created_at: datetime


class TokenOut(ResponseBody):
    access_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret
    expires_in: int
