"""The model registry as clients see it. Weights references stay on the server."""

from datetime import datetime
from typing import Any

from pydantic import Field

from api.schemas.base import RequestBody, ResponseBody

MODEL_NAME_PATTERN = r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,98}[A-Za-z0-9])?$"


class ModelCreate(RequestBody):
    name: str = Field(
        pattern=MODEL_NAME_PATTERN,
        description="Letters, digits, `.`, `_`, `-`; 1-100 characters. The model is "
        "`<your username>/<name>`.",
    )
    description: str = Field(default="", max_length=2000, pattern=r"^[^\x00]*$")


class VersionOut(ResponseBody):
    id: str
    model_type: str
    input_schema: dict[str, Any]
    hardware: str
    max_batch_size: int
    max_batch_wait_ms: int
    run_timeout_s: int
    created_at: datetime


class ModelOut(ResponseBody):
    owner: str
    name: str
    description: str
    latest_version: VersionOut | None


class ModelPage(ResponseBody):
    next: str | None
    previous: str | None
    results: list[ModelOut]
