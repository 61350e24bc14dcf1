"""The prediction task: join the version's next batches, return once every outcome is recorded.

A message carries the ids of predictions of one version created around the same time (the
API groups them: one message, task thread and set of task events for many predictions), or
one id as a plain string (messages of an older API). Returning is what acks the message (late
acks), so a worker that dies before every outcome is in PostgreSQL leaves the message to be
delivered again; the ids already recorded are then skipped by the claim. While the task runs,
its ids are held under a lease (workers/leases.py), so if this worker dies, the sweeper sends
the ones it had not started yet again after about a lease (workers/orphans.py). A database outage
retries the message after a short delay (seconds: far below the visibility timeout); longer
waits live in PostgreSQL (`next_attempt_at`) and the sweeper.
"""

from concurrent.futures import wait

from sqlalchemy.exc import InterfaceError, OperationalError

from common.contract import RUN_PREDICTION_TASK
from workers.celery_app import app
from workers.runtime import get_runtime


@app.task(  # type: ignore[untyped-decorator]
    name=RUN_PREDICTION_TASK,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=1,
    retry_backoff_max=30,
    retry_jitter=True,
    max_retries=20,
)
def run_prediction(prediction_ids: list[str] | str, version_id: str) -> None:
    given = [prediction_ids] if isinstance(prediction_ids, str) else prediction_ids
    ids = list(dict.fromkeys(given))
    runtime = get_runtime()
    runtime.leases.hold(ids)
    try:
        batcher = runtime.batcher_for(version_id)
        futures = [batcher.submit(id) for id in ids]
        wait(futures)  # all settled before the ack, even when one failed
    finally:
        runtime.leases.release(ids)
    for future in futures:
        future.result()
