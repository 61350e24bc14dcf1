"""Typed tables. Importing this package registers every table on Base.metadata."""

from db.tables.api_token import ApiToken
from db.tables.file import File, FileChunk
from db.tables.idempotency_key import IdempotencyKey
from db.tables.model import Model
from db.tables.model_version import Batching, Hardware, ModelVersion
from db.tables.prediction import Prediction, PredictionSource, PredictionStatus
from db.tables.user import Role, User
from db.tables.webhook_delivery import (
    ALL_EVENTS,
    PROGRESS_EVENTS,
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEvent,
)
from db.tables.webhook_secret import WebhookSecret

__all__ = [
    "ALL_EVENTS",
    "PROGRESS_EVENTS",
    "ApiToken",
    "Batching",
    "DeliveryStatus",
    "File",
    "FileChunk",
    "Hardware",
    "IdempotencyKey",
    "Model",
    "ModelVersion",
    "Prediction",
    "PredictionSource",
    "PredictionStatus",
    "Role",
    "User",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEvent",
    "WebhookSecret",
]
