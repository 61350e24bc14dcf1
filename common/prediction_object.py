"""The prediction object (Replicate's field names): the one serializer of a prediction.

The API answers with it (`GET /v1/predictions/{id}`) and the workers POST it to webhooks, so
it lives here, where both may import it (tests/test_architecture.py). Its `urls.stream` and
the file URLs in its output are signed (db/signed_urls.py): they open without a token.
"""

import json
import time
from datetime import datetime
from typing import Any

from pydantic_core import to_jsonable_python
from sqlalchemy import DateTime

from db.signed_urls import get_url_signer
from db.tables import Prediction, PredictionSource


def prediction_object(p: Prediction, model: str, base_url: str) -> dict[str, Any]:
    """`model` is the model's `owner/name`; `base_url` where clients reach the API."""
    url = f"{base_url}/v1/predictions/{p.id}"
    signer, now = get_url_signer(), time.time()
    return {
        "id": p.id,
        "model": model,
        "version": p.version_id,
        "input": p.input,
        "output": signer.sign_files(p.output, p.id, now),
        "logs": p.logs,
        "error": p.error,
        "status": p.status,
        "created_at": p.created_at,
        "started_at": p.started_at,
        "completed_at": p.completed_at,
        "deadline": p.deadline,
        "urls": {
            "get": url,
            "cancel": f"{url}/cancel",
            "stream": signer.stream_url(f"{url}/stream", p.id, now),
        },
        "metrics": {
            "predict_time": p.metrics.get("predict_time"),
            "total_time": _seconds(p.created_at, p.completed_at),
            "queue_time": _seconds(p.created_at, p.started_at),
            "batch_size": p.metrics.get("batch_size"),
            "attempts": p.attempts,
            # Measured by language models (models.base.Metered), as Replicate names them.
            "input_token_count": p.metrics.get("input_token_count"),
            "output_token_count": p.metrics.get("output_token_count"),
            "cache_hit": p.metrics.get("cache_hit", False),
        },
        "webhook": p.webhook,
        "webhook_events_filter": p.webhook_events_filter,
        # A webhook's snapshot written before migration 0009 has no source: it was `api`.
        "source": p.source or PredictionSource.API,
        "data_removed": False,
    }


def to_json(value: dict[str, Any]) -> str:
    """JSON text as the API writes it (pydantic's datetimes, compact, UTF-8 as is)."""
    return json.dumps(
        to_jsonable_python(value), ensure_ascii=False, allow_nan=False, separators=(",", ":")
    )


def from_snapshot(snapshot: dict[str, Any]) -> Prediction:
    """A detached prediction from PostgreSQL's `to_jsonb(row)` of one (a webhook's snapshot)."""
    values = {}
    for column in Prediction.__table__.columns:
        value = snapshot.get(column.key)
        if isinstance(column.type, DateTime) and value is not None:
            value = datetime.fromisoformat(value)
        values[column.key] = value
    return Prediction(**values)


def _seconds(start: datetime, end: datetime | None) -> float | None:
    return None if end is None else round((end - start).total_seconds(), 6)
