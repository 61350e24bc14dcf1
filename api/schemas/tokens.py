"""API tokens as clients see them. The token itself appears once, in the create response."""

from datetime import datetime

from pydantic import AwareDatetime, Field

from api.schemas.base import RequestBody, ResponseBody


class TokenCreate(RequestBody):
    name: str = Field(
        min_length=1,
        max_length=100,
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="What the token is for, e.g. `ci` or `batch-job`.",
    )
    expires_at: AwareDatetime | None = Field(
        default=None,
        description="When it stops working (with a timezone); never if omitted or null. It must "
        "be in the future and before 9999-01-01T00:00:00Z: any other is refused (422 naming "
        "`expires_at`).",
    )


class ApiTokenOut(ResponseBody):
    id: str
    name: str
    prefix: str = Field(description="The token's first characters, to tell tokens apart.")
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None


class ApiTokenCreated(ApiTokenOut):
    token: str = Field(description="The secret. Shown only now: store it safely.")


class ApiTokenList(ResponseBody):
    results: list[ApiTokenOut]
