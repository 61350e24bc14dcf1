"""The model registry as clients see it. Weights references stay on the server."""

from datetime import datetime
from typing import Any

from api.schemas.base import ResponseBody


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
