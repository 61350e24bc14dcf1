"""Webhooks: a prediction's delivery log and redelivery, and the signing secret."""

from fastapi import APIRouter

from api.deps import CurrentUser, TransactionDep
from api.errors import PROBLEMS
from api.schemas.webhooks import WebhookDeliveryList, WebhookDeliveryOut, WebhookSecretOut
from api.services import webhooks

router = APIRouter(prefix="/v1", tags=["webhooks"], responses=PROBLEMS)


@router.get("/predictions/{prediction_id}/webhooks", response_model=WebhookDeliveryList)
def list_webhook_deliveries(
    prediction_id: str, tx: TransactionDep, user: CurrentUser
) -> WebhookDeliveryList:
    """The prediction's webhook deliveries (the latest 100), oldest first, each with every
    attempt: when, the receiver's status code, the latency, or why it failed."""
    return webhooks.deliveries(tx, user, prediction_id)


@router.post(
    "/predictions/{prediction_id}/webhooks/redeliver",
    status_code=202,
    response_model=WebhookDeliveryOut,
)
def redeliver_webhook(
    prediction_id: str, tx: TransactionDep, user: CurrentUser
) -> WebhookDeliveryOut:
    """Send the `completed` event again (before the prediction completes: its latest event),
    as a new delivery with a new `webhook-id`. 409 if the prediction has no webhook."""
    return webhooks.redeliver(tx, user, prediction_id)


@router.get("/webhooks/default/secret", response_model=WebhookSecretOut)
def get_webhook_secret(tx: TransactionDep, user: CurrentUser) -> WebhookSecretOut:
    """Your signing secret: check each delivery's `webhook-signature` with it (Standard
    Webhooks; e.g. `standardwebhooks.Webhook(key).verify(body, headers)`)."""
    return webhooks.secret(tx, user)
