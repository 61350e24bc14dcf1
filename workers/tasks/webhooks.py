"""The webhook task: one attempt at one delivery (workers/webhooks/delivery.py).

It runs on the `webhooks` queue, in workers that run nothing else, so a slow receiver holds a
webhooks thread (for webhook_timeout_s at most), never a model worker. A database outage
retries the message after a short delay; retries of the receiver wait in PostgreSQL.
"""

from sqlalchemy.exc import InterfaceError, OperationalError

from common.contract import DELIVER_WEBHOOK_TASK
from workers.celery_app import app
from workers.webhooks.delivery import deliver


@app.task(  # type: ignore[untyped-decorator]
    name=DELIVER_WEBHOOK_TASK,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=1,
    retry_backoff_max=30,
    retry_jitter=True,
    max_retries=20,
)
def deliver_webhook(delivery_id: str) -> None:
    deliver(delivery_id)
