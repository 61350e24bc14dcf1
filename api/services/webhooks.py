"""A prediction's webhook deliveries (the log, redelivery) and the user's signing secret."""

import logging

from api.deps import Transaction
from api.errors import Conflict
from api.schemas.webhooks import (
    WebhookAttemptOut,
    WebhookDeliveryList,
    WebhookDeliveryOut,
    WebhookSecretOut,
)
from api.services import predictions
from db.repositories import webhook_deliveries, webhook_secrets
from db.repositories.webhook_deliveries import DeliveryLog
from db.tables import Prediction, User

log = logging.getLogger(__name__)

# Deliveries shown in the log: the latest ones (a long stream sends many `output` events).
LOG_LIMIT = 100


def _prediction(tx: Transaction, user: User, prediction_id: str) -> Prediction:
    return predictions.find(tx, user, prediction_id).prediction


def _out(entry: DeliveryLog) -> WebhookDeliveryOut:
    d = entry.delivery
    return WebhookDeliveryOut(
        id=d.id,
        event=d.event,
        url=d.url,
        status=d.status,
        created_at=d.created_at,
        next_attempt_at=d.next_attempt_at,
        completed_at=d.completed_at,
        redelivery_of=d.redelivery_of,
        attempts=[WebhookAttemptOut.model_validate(attempt) for attempt in entry.attempts],
    )


def deliveries(tx: Transaction, user: User, prediction_id: str) -> WebhookDeliveryList:
    _prediction(tx, user, prediction_id)
    found = webhook_deliveries.list_for_prediction(
        tx.session, prediction_id=prediction_id, limit=LOG_LIMIT
    )
    return WebhookDeliveryList(results=[_out(entry) for entry in found])


def redeliver(tx: Transaction, user: User, prediction_id: str) -> WebhookDeliveryOut:
    """A new delivery of the latest `completed` event (or the latest event before that); the
    webhooks workers' dispatcher hears of it when this commits."""
    if _prediction(tx, user, prediction_id).webhook is None:
        raise Conflict("This prediction has no webhook")
    copy = webhook_deliveries.redeliver(tx.session, prediction_id=prediction_id)
    if copy is None:
        raise Conflict("This prediction has sent no webhook event yet")
    log.info("webhook delivery %s redelivers %s", copy.id, copy.redelivery_of)
    return _out(DeliveryLog(copy, []))


def secret(tx: Transaction, user: User) -> WebhookSecretOut:
    return WebhookSecretOut(key=webhook_secrets.get_or_create(tx.session, owner_id=user.id))
