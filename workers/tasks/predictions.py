"""The prediction task: join the version's next batch, return once the outcome is recorded.

Returning is what acks the message (late acks), so a worker that dies before the outcome is
in PostgreSQL leaves the message to be delivered again.
"""

from workers.batches import batcher_for
from workers.celery_app import RUN_PREDICTION_TASK, app


@app.task(name=RUN_PREDICTION_TASK)  # type: ignore[untyped-decorator]
def run_prediction(prediction_id: str, version_id: str) -> None:
    batcher_for(version_id).submit(prediction_id).result()
