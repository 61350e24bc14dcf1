"""Predictions: create, read, list, cancel."""

from dataclasses import dataclass
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from api.deps import (
    CurrentUser,
    ListenerDep,
    Reader,
    SettingsDep,
    TransactionDep,
    request_base_url,
)
from api.errors import PROBLEMS, NotFound, Unprocessable
from api.queue import Publisher
from api.schemas.auth import USERNAME_PATTERN
from api.schemas.base import NeverNull
from api.schemas.models import MODEL_NAME_PATTERN
from api.schemas.predictions import (
    CancelAfter,
    Cursor,
    PredictionCreate,
    PredictionFiltersDep,
    PredictionOut,
    PredictionPage,
    PredictionRequest,
)
from api.services import predictions
from api.services.streams import open_stream, prediction_events
from api.services.waiting import WaitingResponse, parse_prefer_wait
from api.settings import ApiSettings
from api.status_listener import StatusListener
from db.ids import new_id
from db.tables import User

# A comment line this often keeps proxies from closing a quiet stream.
PING_S = 15

router = APIRouter(prefix="/v1/predictions", tags=["predictions"], responses=PROBLEMS)
# POST /v1/models/{owner}/{name}/predictions: a prediction, addressed by its model.
model_router = APIRouter(prefix="/v1/models", tags=["predictions"], responses=PROBLEMS)


CancelAfterHeader = Annotated[
    CancelAfter | None,
    Header(
        alias="Cancel-After",
        description="Deadline, from 1 s to 7 days: `30s`, `5m`, `1h30m`, or `30` (seconds). "
        "Hours, minutes and seconds come in that order, and after the first unit minutes and "
        "seconds are under 60 (`1h30m0s` as Go writes it; not `1h90m`). Not started by then: "
        "`aborted`; running then: `canceled`.",
    ),
    NeverNull(),
]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=255,
        pattern=r"^[!-~]+$",
        description="Retry safely: the same key and body within 24 h returns the first "
        "prediction (header `Idempotent-Replayed: true`) instead of running it again. The same "
        "key with another body or `Cancel-After` is refused (422 naming `Idempotency-Key`).",
    ),
    NeverNull(),
]
Prefer = Annotated[
    str | None,
    Header(
        max_length=256,
        description="`wait` or `wait=N` (1-60 s): answer when the prediction is finished, "
        "or after N seconds with status `starting` (as Replicate) and a `Location` header "
        "to poll.",
    ),
    NeverNull(),
]


@dataclass(frozen=True)
class CreateHeaders:
    cancel_after: str | None
    idempotency_key: str | None
    prefer: str | None


async def create_headers(
    cancel_after: CancelAfterHeader = None,
    idempotency_key: IdempotencyKey = None,
    prefer: Prefer = None,
) -> CreateHeaders:
    """The headers both create routes take (async: parsed on the event loop, no thread hop)."""
    return CreateHeaders(cancel_after, idempotency_key, prefer)


CreateHeadersDep = Annotated[CreateHeaders, Depends(create_headers)]


@router.post("", status_code=201, response_model=PredictionOut)
async def create_prediction(
    body: PredictionCreate,
    request: Request,
    response: Response,
    user: CurrentUser,
    settings: SettingsDep,
    listener: ListenerDep,
    headers: CreateHeadersDep,
) -> Response:
    """Validate the input, store the prediction, queue it. Returns at once with `starting`,
    unless `Prefer: wait` asks to wait for the result."""
    return await _create(body, request, response, user, settings, listener, headers)


@model_router.post("/{owner}/{name}/predictions", status_code=201, response_model=PredictionOut)
async def create_model_prediction(
    owner: Annotated[str, Path(pattern=USERNAME_PATTERN)],
    name: Annotated[str, Path(pattern=MODEL_NAME_PATTERN)],
    body: PredictionRequest,
    request: Request,
    response: Response,
    user: CurrentUser,
    settings: SettingsDep,
    listener: ListenerDep,
    headers: CreateHeadersDep,
) -> Response:
    """Run the model's latest version: the same as `POST /v1/predictions` with
    `"model": "owner/name"`."""
    create = PredictionCreate(model=f"{owner}/{name}", **body.model_dump())
    try:
        return await _create(create, request, response, user, settings, listener, headers)
    except Unprocessable as exc:
        if exc.invalid_fields and exc.invalid_fields[0]["field"] == "model":
            # The path names the model: a missing one is a missing resource, as on Replicate.
            raise NotFound(exc.detail) from None
        raise


async def _create(
    body: PredictionCreate,
    request: Request,
    response: Response,
    user: User,
    settings: ApiSettings,
    listener: StatusListener,
    headers: CreateHeaders,
) -> Response:
    """Answered directly (not through `response_model`): the object is built and checked once."""
    wait_s = parse_prefer_wait(headers.prefer)
    base_url = request_base_url(request)
    publisher: Publisher = request.state.publisher
    watching = None
    if headers.idempotency_key is None:
        prediction_id = new_id()
        # Watched before the row exists: no change can go unheard, so no first read.
        watching = listener.watch(prediction_id) if wait_s is not None else None
        try:
            prediction = await predictions.create(
                request.state.pool,
                publisher,
                listener.versions,
                user,
                body,
                base_url,
                settings,
                headers.cancel_after,
                prediction_id,
            )
        except BaseException:
            if watching is not None:
                listener.unwatch(prediction_id, watching)
            raise
    else:
        prediction, replayed = await run_in_threadpool(
            predictions.create_idempotent,
            publisher,
            user,
            body,
            base_url,
            settings,
            headers.cancel_after,
            headers.idempotency_key,
        )
        if replayed:
            response.headers["Idempotent-Replayed"] = "true"
    if wait_s is not None:
        load = partial(predictions.load_async, request.state.reads, user, prediction.id, base_url)
        return WaitingResponse(prediction, wait_s, load, response.headers, watching)
    return Response(
        prediction.model_dump_json(),
        201,
        headers=dict(response.headers),
        media_type="application/json",
    )


@router.get("", response_model=PredictionPage)
def list_predictions(
    request: Request,
    tx: TransactionDep,
    user: CurrentUser,
    settings: SettingsDep,
    filters: PredictionFiltersDep,
    cursor: Annotated[
        Cursor | None,
        Query(description="From a page's `next` or `previous` URL: pass it back as given."),
        NeverNull(),
    ] = None,
    page_size: Annotated[int | None, Query(ge=1, le=100), NeverNull()] = None,
) -> PredictionPage:
    """Your predictions, newest first, in cursor pages; the filters given (Replicate's
    `created_after`, `created_before`, `source`, and `status`, `model`, `version`) are all
    applied, and the `next` and `previous` URLs carry them."""
    size = min(page_size or settings.page_size_default, settings.page_size_max)
    return predictions.list_page(tx, user, cursor, size, request_base_url(request), filters)


@router.get("/{prediction_id}", response_model=PredictionOut)
def get_prediction(
    prediction_id: str, request: Request, tx: TransactionDep, user: CurrentUser
) -> PredictionOut:
    """One of your predictions; anyone else's is 404."""
    return predictions.get(tx, user, prediction_id, request_base_url(request))


@router.get(
    "/{prediction_id}/stream",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "The event stream"}},
)
def stream_prediction(
    prediction_id: str,
    request: Request,
    tx: TransactionDep,
    reader: Reader,
    last_event_id: Annotated[
        str | None, Header(alias="Last-Event-ID", max_length=64), NeverNull()
    ] = None,
) -> EventSourceResponse:
    """Server-Sent Events: `output` (each token or chunk; text as is, anything else as JSON),
    `logs`, then `error` if it failed and `done` (`{"status": ...}`). Every event has an id (the
    last ones repeat the id before them): reconnect with `Last-Event-ID` to resume without loss
    or repeats. Opened after the end, it replays the output and ends. `urls.stream` as given
    (with `expires` and `signature`) needs no token: one whose signature is tampered, expired or
    another prediction's is 403."""
    base_url = request_base_url(request)
    prediction, load = open_stream(tx, reader, prediction_id, base_url)  # 404 if not yours
    return EventSourceResponse(
        prediction_events(prediction, load, last_event_id),
        ping=PING_S,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.post("/{prediction_id}/cancel", response_model=PredictionOut)
def cancel_prediction(
    prediction_id: str, request: Request, tx: TransactionDep, user: CurrentUser
) -> PredictionOut:
    """Cancel: a queued one never runs, a running one stops at its next step, a finished one
    is returned unchanged."""
    return predictions.cancel(tx, user, prediction_id, request_base_url(request))
