"""Files as Replicate's Files API shows them."""

from datetime import datetime
from typing import Any

from pydantic import Field

from api.schemas.base import ResponseBody


class FileOut(ResponseBody):
    id: str
    name: str
    content_type: str
    size: int
    etag: str = Field(description="The SHA-256 of the bytes.")
    checksums: dict[str, str] = Field(description="`sha256`, hex.")
    metadata: dict[str, Any]
    created_at: datetime
    expires_at: datetime | None = Field(
        description="When the cleaner removes it; an expired file is gone for every purpose."
    )
    urls: dict[str, str] = Field(
        description="`get`: this object (pass it as a file input); `download`: the bytes."
    )


class FilePage(ResponseBody):
    next: str | None
    previous: str | None = None
    results: list[FileOut]
