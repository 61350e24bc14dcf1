"""The prediction object, with Replicate's field names."""

from datetime import datetime
from typing import Any

from pydantic import Field, ValidationInfo, field_validator, model_validator

from api.schemas.base import RequestBody, ResponseBody
from db.ids import ID_PATTERN
from db.tables import ALL_EVENTS, WebhookEvent


class PredictionRequest(RequestBody):
    """What to run a model on: the body of `POST /v1/models/{owner}/{name}/predictions`."""

    input: dict[str, Any] = Field(description="Validated against the version's input schema.")
    webhook: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^https?://[!-~]+$",
        description="An http(s) URL to POST the prediction object to when the events of "
        "`webhook_events_filter` happen, signed per Standard Webhooks (the secret is at "
        "`GET /v1/webhooks/default/secret`). It must resolve to a public address.",
    )
    webhook_events_filter: list[WebhookEvent] | None = Field(
        default=None,
        min_length=1,
        max_length=len(ALL_EVENTS),
        description="Which events to send (default: all): `start`, `output` and `logs` (each "
        "at most every 500 ms), `completed`.",
    )

    stream: bool | None = Field(
        default=None,
        description="Accepted for Replicate's clients, which send it: every prediction can be "
        "streamed from `urls.stream`.",
    )

    @field_validator("webhook_events_filter")
    @classmethod
    def needs_webhook(
        cls, events: list[WebhookEvent] | None, info: ValidationInfo
    ) -> list[WebhookEvent] | None:
        if events is not None and "webhook" in info.data and info.data["webhook"] is None:
            raise ValueError("give a webhook to send these events to")
        return None if events is None else [e for e in ALL_EVENTS if e in events]


class PredictionCreate(PredictionRequest):
    version: str | None = Field(default=None, pattern=ID_PATTERN, description="A version id.")
    model: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9-]{1,39}/[A-Za-z0-9._-]{1,100}$",
        description="`owner/name`: runs the model's latest version.",
    )

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
    webhook: str | None
    webhook_events_filter: list[str] | None
    source: str = Field(default="api", description="How it was created, as on Replicate.")
    data_removed: bool = Field(
        default=False, description="Replicate's field; Quern keeps input and output."
    )


class PredictionPage(ResponseBody):
    next: str | None
    previous: str | None
    results: list[PredictionOut]
