"""Two kombu 5.7 patches: survive Redis restarting mid-task, and stop paying for a new Redis
client on every publish and ack.

A kombu 5.7 / celery 5.7 bug stops a worker when Redis restarts mid-task.
When the broker connection drops while tasks run, the consumer drops the old connection and
reconnects. Two later steps still use the old, closed channel and crash the consumer with
"Unrecoverable error: AttributeError('NoneType' object has no attribute 'hostname'/'client')":
  1. closing the channel restores its unacked messages through the released client;
  2. a task that finishes after the reconnect acks on the old channel.
Quern needs neither: an unacked message stays in Redis's unacked hash and comes back after the
visibility timeout, and PostgreSQL (conditional claims, leases, the sweeper) decides what runs,
so a message redelivered after its prediction finished is a no-op. tests/system/test_faults.py
restarts Redis under a running batch to prove the worker keeps consuming.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis

_basic_ack = redis.Channel.basic_ack


def _ack_unless_closed(self: Any, delivery_tag: Any, multiple: bool = False) -> None:
    if self.connection is None or self.connection.client is None:
        return  # the channel died with its connection: the message will be redelivered
    _basic_ack(self, delivery_tag, multiple)  # type: ignore[no-untyped-call]


@contextmanager
def _reused_client(self: Any, client: Any = None) -> Iterator[Any]:
    """kombu builds a redis-py client (costly since redis 8) for every task event it publishes
    and every ack; one per channel and connection pool serves them all (it is thread-safe)."""
    if client is None:
        client = getattr(self, "_quern_client", None)
        if client is None or client.connection_pool is not self.pool:
            client = self._quern_client = self._create_client()
    yield client


def survive_broker_reconnects() -> None:
    redis.Channel.do_restore = False
    redis.Channel.basic_ack = _ack_unless_closed  # type: ignore[method-assign]
    redis.Channel.conn_or_acquire = _reused_client  # type: ignore[method-assign]
