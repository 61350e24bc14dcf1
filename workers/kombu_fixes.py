"""Work around a kombu 5.7 / celery 5.7 bug that stops a worker when Redis restarts mid-task.

When the broker connection drops while tasks run, the consumer drops the old connection and
reconnects. Two later steps still use the old, closed channel and crash the consumer with
"Unrecoverable error: AttributeError('NoneType' object has no attribute 'hostname'/'client')":
  1. closing the channel restores its unacked messages through the released client;
  2. a task that finishes after the reconnect acks on the old channel.
Quern needs neither: an unacked message stays in Redis's unacked hash and comes back after the
visibility timeout, and PostgreSQL (conditional claims, leases, the sweeper) decides what runs,
so a message redelivered after its prediction finished is a no-op. tests/test_faults.py
restarts Redis under a running batch to prove the worker keeps consuming.
"""

from typing import Any

from kombu.transport import redis

_basic_ack = redis.Channel.basic_ack


def _ack_unless_closed(self: Any, delivery_tag: Any, multiple: bool = False) -> None:
    if self.connection is None or self.connection.client is None:
        return  # the channel died with its connection: the message will be redelivered
    _basic_ack(self, delivery_tag, multiple)  # type: ignore[no-untyped-call]


def survive_broker_reconnects() -> None:
    redis.Channel.do_restore = False
    redis.Channel.basic_ack = _ack_unless_closed  # type: ignore[method-assign]
