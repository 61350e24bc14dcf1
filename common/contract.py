"""The API-worker contract, written once: task names, queues, ids per message, stream keys.

The API sends work by task name (api/queue.py) and never imports workers/; the workers
register the tasks under these names (workers/tasks/), consume these queues and publish
prediction events to these Redis Streams (workers/events.py), which the API serves as
Server-Sent Events (api/services/streams.py). tests/test_architecture.py checks that no
other module of api/ or workers/ spells these names itself.
"""

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

# args [prediction_ids, version_id]: ids of one version, at most MAX_IDS_PER_MESSAGE of them
# (a plain str id is accepted too: messages of an older API).
RUN_PREDICTION_TASK = "quern.predictions.run"
MAX_IDS_PER_MESSAGE = 64
# Webhook deliveries have their own queue (and workers), so slow receivers never hold model workers.
WEBHOOKS_QUEUE = "webhooks"
DELIVER_WEBHOOK_TASK = "quern.webhooks.deliver"
# A running prediction's events (output chunks, logs): one Redis Stream per prediction.
EVENTS_KEY_PREFIX = "quern:events:"


def prediction_queue(hardware: str) -> str:
    """One queue per hardware class: a GPU worker takes only what needs a GPU, and a version is
    never loaded on a machine that cannot run it."""
    return f"predictions.{hardware}"


def prediction_messages(
    items: Iterable[tuple[str, str, str]],
) -> list[tuple[tuple[str, str], list[str]]]:
    """The messages that carry (prediction id, version id, hardware) items: ((version id,
    queue), ids), one per version and queue, at most MAX_IDS_PER_MESSAGE ids each, in order
    (the batches common/relay.py publishes with `send_predictions`)."""
    groups: defaultdict[tuple[str, str], list[str]] = defaultdict(list)
    for prediction_id, version_id, hardware in items:
        groups[version_id, hardware].append(prediction_id)
    return [
        ((version_id, prediction_queue(hardware)), ids[start : start + MAX_IDS_PER_MESSAGE])
        for (version_id, hardware), ids in groups.items()
        for start in range(0, len(ids), MAX_IDS_PER_MESSAGE)
    ]


def send_predictions(app: Any, message: tuple[str, str], ids: list[str]) -> None:
    """Publish one RUN_PREDICTION_TASK message with Celery `app`: `message` is (version id,
    queue), as prediction_messages gives it."""
    version_id, queue = message
    app.send_task(RUN_PREDICTION_TASK, args=[ids, version_id], queue=queue, ignore_result=True)


def events_key(prediction_id: str) -> str:
    """The Redis Stream of a prediction's events: the workers add to it, the API reads it."""
    return f"{EVENTS_KEY_PREFIX}{prediction_id}"
