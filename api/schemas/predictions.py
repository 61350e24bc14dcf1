"""The prediction object, with Replicate's field names."""

from datetime import datetime
from typing import Annotated, Any

from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from api.schemas.base import Matching, RequestBody, ResponseBody
from db.ids import ID_PATTERN
from db.tables import ALL_EVENTS, WebhookEvent

# A list page's position: the direction, then the created_at (microseconds since 1970) and id of
# the row it is next to. Any such position can be listed from, existing or not.
CURSOR_PATTERN = rf"^(next|previous)\.[0-9]{{1,16}}\.{ID_PATTERN.strip('^$')}$"
Cursor = Annotated[
    str, Matching(CURSOR_PATTERN, "Invalid cursor: pass back a `next` or `previous` URL as given")
]

# Exactly the durations from 1 s to 7 days the parser reads (api/services/predictions.py): bare
# seconds, or hours, minutes and seconds in that order, each after the first under 60, as Go
# writes durations (`1h30m0s`).
_UNDER_60 = "[0-5]?[0-9]"
CANCEL_AFTER_PATTERN = (
    "^(?:"
    f"(?:[1-9][0-9]?|1[0-5][0-9]|16[0-7])h(?:{_UNDER_60}m)?(?:{_UNDER_60}s)?"  # 1-167 h
    "|168h(?:0{1,2}m)?(?:0{1,2}s)?"
    f"|(?:[1-9][0-9]{{0,3}}|100[0-7][0-9])m(?:{_UNDER_60}s)?"  # 1-10079 m
    "|10080m(?:0{1,2}s)?"
    "|(?:[1-9][0-9]{0,4}|[1-5][0-9]{5}|60[0-3][0-9]{3}|604[0-7][0-9]{2}|604800)s?"  # 1-604800 s
    ")$"
)
CancelAfter = Annotated[
    str,
    Matching(
        CANCEL_AFTER_PATTERN,
        "Not a duration from 1s to 7 days like 30s, 5m, 1h30m or 30 (seconds); after the first "
        "unit, minutes and seconds are under 60",
    ),
]


# For the document: `webhook_events_filter` (a list) needs a `webhook` (a string).
_EVENTS_NEED_WEBHOOK: dict[str, Any] = {
    "if": {
        "required": ["webhook_events_filter"],
        "properties": {"webhook_events_filter": {"type": "array"}},
    },
    "then": {"required": ["webhook"], "properties": {"webhook": {"type": "string"}}},
}


class PredictionRequest(RequestBody):
    """What to run a model on: the body of `POST /v1/models/{owner}/{name}/predictions`."""

    model_config = ConfigDict(json_schema_extra=_EVENTS_NEED_WEBHOOK)

    input: dict[str, Any] = Field(description="Validated against the version's input schema.")
    webhook: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^https?://[!-~]+$",
        description="An http(s) URL to POST the prediction object to when the events of "
        "`webhook_events_filter` happen, signed per Standard Webhooks (the secret is at "
        "`GET /v1/webhooks/default/secret`). It must resolve to a public address: a host that "
        "does not resolve, or resolves to a private, loopback, link-local, reserved or cloud "
        "metadata address, is refused (422 naming `webhook`, with the reason).",
    )
    webhook_events_filter: list[WebhookEvent] | None = Field(
        default=None,
        min_length=1,
        max_length=len(ALL_EVENTS),
        description="Which events to send (default: all): `start`, `output` and `logs` (each "
        "at most every 500 ms), `completed`. Only with a `webhook`.",
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
    """What to run: exactly one of `version` and `model` (null counts as not given), and
    its input."""

    # For the document: exactly one of `version` and `model` is given, as a string.
    model_config = ConfigDict(
        json_schema_extra=_EVENTS_NEED_WEBHOOK
        | {
            "oneOf": [
                {"required": [name], "properties": {name: {"type": "string"}}}
                for name in ("version", "model")
            ]
        }
    )

    version: str | None = Field(
        default=None,
        pattern=ID_PATTERN,
        description="A version id. Give this or `model`, not both.",
    )
    model: str | None = Field(
        default=None,
        validate_default=True,
        pattern=r"^[a-z0-9-]{1,39}/[A-Za-z0-9._-]{1,100}$",
        description="`owner/name`: runs the model's latest version. Give this or `version`, "
        "not both.",
    )

    @field_validator("model")
    @classmethod
    def version_xor_model(cls, model: str | None, info: ValidationInfo) -> str | None:
        if "version" in info.data and (info.data["version"] is None) == (model is None):
            # Named as the field it is checked on: `model`; the message names both.
            raise ValueError("give exactly one of `version` and `model`")
        return model


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
