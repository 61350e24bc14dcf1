"""Predictions: create, read, list, cancel."""

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response

from api.deps import CurrentUser, SettingsDep, TransactionDep
from api.errors import PROBLEMS
from api.schemas.predictions import PredictionCreate, PredictionOut, PredictionPage
from api.services import predictions

router = APIRouter(prefix="/v1/predictions", tags=["predictions"], responses=PROBLEMS)


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


@router.post("", status_code=201, response_model=PredictionOut)
def create_prediction(
    body: PredictionCreate,
    request: Request,
    response: Response,
    tx: TransactionDep,
    user: CurrentUser,
    settings: SettingsDep,
    cancel_after: Annotated[
        str | None,
        Header(
            alias="Cancel-After",
            max_length=32,
            description="Deadline: `30s`, `5m`, `1h`. Not started by then: `aborted`; "
            "running then: `canceled`.",
        ),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            max_length=255,
            pattern=r"^[!-~]+$",
            description="Retry safely: the same key and body within 24 h returns the first "
            "prediction (header `Idempotent-Replayed: true`) instead of running it again.",
        ),
    ] = None,
) -> PredictionOut:
    """Validate the input, store the prediction, queue it. Returns at once with `starting`."""
    prediction, replayed = predictions.create(
        tx, user, body, _base_url(request), settings, cancel_after, idempotency_key
    )
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return prediction


@router.get("", response_model=PredictionPage)
def list_predictions(
    request: Request,
    tx: TransactionDep,
    user: CurrentUser,
    settings: SettingsDep,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    page_size: Annotated[int | None, Query(ge=1, le=100)] = None,
) -> PredictionPage:
    """Your predictions, newest first, in cursor pages."""
    size = min(page_size or settings.page_size_default, settings.page_size_max)
    return predictions.list_page(tx, user, cursor, size, _base_url(request))


@router.get("/{prediction_id}", response_model=PredictionOut)
def get_prediction(
    prediction_id: str, request: Request, tx: TransactionDep, user: CurrentUser
) -> PredictionOut:
    """One of your predictions; anyone else's is 404."""
    return predictions.get(tx, user, prediction_id, _base_url(request))


@router.post("/{prediction_id}/cancel", response_model=PredictionOut)
def cancel_prediction(
    prediction_id: str, request: Request, tx: TransactionDep, user: CurrentUser
) -> PredictionOut:
    """Cancel: a queued one never runs, a running one stops at its next step, a finished one
    is returned unchanged."""
    return predictions.cancel(tx, user, prediction_id, _base_url(request))
