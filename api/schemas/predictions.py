"""The prediction object, with Replicate's field names."""

import re
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, Query
from pydantic import BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator

from api.schemas.base import Matching, NeverNull, RequestBody, ResponseBody
from db.ids import ID_PATTERN
from db.repositories.predictions import Filters
from db.tables import ALL_EVENTS, PredictionStatus, WebhookEvent

# `owner/name`, as a create or a list filter names a model.
MODEL_REF_PATTERN = r"^[a-z0-9-]{1,39}/[A-Za-z0-9._-]{1,100}$"

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
        pattern=MODEL_REF_PATTERN,
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
    input_token_count: int | None = Field(
        default=None, description="Language models: the prompt's tokens, as the model read it."
    )
    output_token_count: int | None = Field(
        default=None, description="Language models: the tokens generated."
    )
    cache_hit: bool = Field(
        default=False,
        description="Answered at once from the result cache with an earlier prediction's output "
        "(the version caches, and the input is deterministic): no model ran.",
    )


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
    source: str = Field(
        default="api",
        description="How it was created: `api` (this API) or `openai` (the OpenAI-compatible "
        "API under /openai/v1).",
    )
    data_removed: bool = Field(
        default=False, description="Replicate's field; Quern keeps input and output."
    )


class PredictionPage(ResponseBody):
    next: str | None
    previous: str | None
    results: list[PredictionOut]


# --- GET /v1/predictions filters, as Replicate's -------------------------------------------

# RFC 3339 allows a leap second (`23:59:60`), which Python's datetime cannot hold.
_LEAP_SECOND = re.compile(r"^([0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:)60(?:\.[0-9]+)?")


def _leap_second(value: Any) -> Any:
    """A leap second is read as the last microsecond before it."""
    return _LEAP_SECOND.sub(r"\g<1>59.999999", value, count=1) if isinstance(value, str) else value


Moment = Annotated[datetime, BeforeValidator(_leap_second)]
_MOMENT = (
    "An ISO 8601 date-time such as `2025-01-31T12:00:00Z` or `2025-01-31T13:00:00+01:00` "
    "(without an offset: UTC)."
)


def _utc(moment: datetime) -> datetime:
    """`moment` in UTC. One that UTC puts outside Python's years 1-9999 (year 1 ahead of UTC,
    9999 behind it) is the first or last moment Python has: it filters the same."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        return (datetime.min if moment.year == 1 else datetime.max).replace(tzinfo=UTC)


@dataclass(frozen=True)
class PredictionFilters:
    """What `GET /v1/predictions` is narrowed to (all that are given, combined)."""

    created_after: datetime | None = None  # in UTC
    created_before: datetime | None = None
    source: str | None = None
    status: str | None = None
    model: str | None = None
    version: str | None = None

    @property
    def matches_nothing(self) -> bool:
        """Quern has no web interface: no prediction's source is `web`."""
        return self.source == "web"

    def params(self) -> dict[str, str]:
        """As query parameters: the page's `next` and `previous` URLs carry them."""
        given = ((f.name, getattr(self, f.name)) for f in fields(self))
        return {
            name: value.isoformat() if isinstance(value, datetime) else str(value)
            for name, value in given
            if value is not None
        }

    def for_query(self) -> Filters:
        owner, _, name = (self.model or "").partition("/")
        return Filters(
            created_after=self.created_after,
            created_before=self.created_before,
            status=self.status,
            model=(owner, name) if self.model else None,
            version_id=self.version,
            source=self.source,
        )


async def prediction_filters(
    created_after: Annotated[
        Moment | None,
        Query(description=f"Only predictions created at or after this moment. {_MOMENT}"),
        NeverNull(),
    ] = None,
    created_before: Annotated[
        Moment | None,
        Query(description=f"Only predictions created before this moment. {_MOMENT}"),
        NeverNull(),
    ] = None,
    source: Annotated[
        Literal["api", "openai", "web"] | None,
        Query(
            description="How they were created: `api` (this API), `openai` (the "
            "OpenAI-compatible API under /openai/v1), or `web` (none: Quern has no web "
            "interface)."
        ),
        NeverNull(),
    ] = None,
    status: Annotated[
        PredictionStatus | None, Query(description="Only predictions in this status."), NeverNull()
    ] = None,
    model: Annotated[
        str | None,
        Query(
            pattern=MODEL_REF_PATTERN,
            description="Only predictions of this model (`owner/name`), any version.",
        ),
        NeverNull(),
    ] = None,
    version: Annotated[
        str | None,
        Query(pattern=ID_PATTERN, description="Only predictions of this model version (its id)."),
        NeverNull(),
    ] = None,
) -> PredictionFilters:
    """async: parsed on the event loop, no thread hop."""
    return PredictionFilters(
        created_after=None if created_after is None else _utc(created_after),
        created_before=None if created_before is None else _utc(created_before),
        source=source,
        status=None if status is None else str(status),
        model=model,
        version=version,
    )


PredictionFiltersDep = Annotated[PredictionFilters, Depends(prediction_filters)]
