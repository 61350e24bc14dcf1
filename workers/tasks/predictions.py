"""The prediction task: join the version's next batch, return once the outcome is recorded.

Returning is what acks the message (late acks), so a worker that dies before the outcome is
in PostgreSQL leaves the message to be delivered again. A database outage retries the
message after a short delay (seconds: far below the visibility timeout); longer waits live
in PostgreSQL (`next_attempt_at`) and the sweeper.
"""

from sqlalchemy.exc import InterfaceError, OperationalError

from workers.batches import batcher_for
from workers.celery_app import RUN_PREDICTION_TASK, app


@app.task(  # type: ignore[untyped-decorator]
    name=RUN_PREDICTION_TASK,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=1,
    retry_backoff_max=30,
    retry_jitter=True,
    max_retries=20,
)
def run_prediction(prediction_id: str, version_id: str) -> None:
    batcher_for(version_id).submit(prediction_id).result()
