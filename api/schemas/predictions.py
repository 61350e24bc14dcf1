"""The prediction object, with Replicate's field names."""

from datetime import datetime
from typing import Any

from pydantic import Field, model_validator

from api.schemas.base import RequestBody, ResponseBody
from db.ids import ID_PATTERN


class PredictionCreate(RequestBody):
    version: str | None = Field(default=None, pattern=ID_PATTERN, description="A version id.")
    model: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9-]{1,39}/[A-Za-z0-9._-]{1,100}$",
        description="`owner/name`: runs the model's latest version.",
    )
    input: dict[str, Any] = Field(description="Validated against the version's input schema.")

    @model_validator(mode="after")
    def version_xor_model(self) -> "PredictionCreate":
        if (self.version is None) == (self.model is None):
            raise ValueError("give exactly one of 'version' or 'model'")
        return self


class PredictionUrls(ResponseBody):
    get: str
    cancel: str
    stream: str


class PredictionMetrics(ResponseBody):
    predict_time: float | None = None
    total_time: float | None = None
    queue_time: float | None = None
    batch_size: int | None = None
    attempts: int = 0


class PredictionOut(ResponseBody):
    id: str
    model: str
    version: str
    input: dict[str, Any]
    output: Any | None
    logs: str
    error: str | None
    status: str
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    deadline: datetime | None = Field(description="From `Cancel-After`, if given.")
    urls: PredictionUrls
    metrics: PredictionMetrics


class PredictionPage(ResponseBody):
    next: str | None
    previous: str | None
    results: list[PredictionOut]
