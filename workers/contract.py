"""What the API and the workers agree on: task names, queues, ids per message.

The API copies what it sends (api/queue.py: the two never import each other), and
tests/test_architecture.py checks that the copies match.
"""

# args [prediction_ids, version_id]: ids of one version, at most MAX_IDS_PER_MESSAGE of them
# (a plain str id is accepted too: messages of an older API).
RUN_PREDICTION_TASK = "quern.predictions.run"
MAX_IDS_PER_MESSAGE = 64
# Webhook deliveries have their own queue (and workers), so slow receivers never hold model workers.
WEBHOOKS_QUEUE = "webhooks"
DELIVER_WEBHOOK_TASK = "quern.webhooks.deliver"


def prediction_queue(hardware: str) -> str:
    """One queue per hardware class: a GPU worker takes only what needs a GPU, and a version is
    never loaded on a machine that cannot run it."""
    return f"predictions.{hardware}"
