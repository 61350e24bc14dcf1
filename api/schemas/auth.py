"""Accounts and tokens."""

from datetime import datetime
from typing import Literal

from pydantic import Field, computed_field

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


class AccountOut(UserOut):
    """Replicate's account object, with Quern's fields. Quern has no organizations and no
    display names: `name` is the username."""

    type: Literal["user"] = "user"
    github_url: None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def name(self) -> str:
        return self.username


class TokenOut(ResponseBody):
    access_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret
    expires_in: int
