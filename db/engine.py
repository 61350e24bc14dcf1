"""The one engine factory: every connection says which process opened it."""

import os
import sys
from functools import lru_cache

from sqlalchemy import Engine, create_engine

from db import json_codec
from db.settings import get_database_settings


def process_label() -> str:
    """`quern-api-1234`: shows up in pg_stat_activity.application_name."""
    role = os.environ.get("QUERN_PROCESS_ROLE") or os.path.basename(sys.argv[0] or "python")
    return f"quern-{role}-{os.getpid()}"[:63]


@lru_cache
def get_engine() -> Engine:
    settings = get_database_settings()
    return create_engine(
        settings.url,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_pre_ping=True,
        json_deserializer=json_codec.loads,
        connect_args={
            "application_name": process_label(),
            "connect_timeout": 5,
            "options": f"-c statement_timeout={settings.statement_timeout_ms} "
            f"-c idle_in_transaction_session_timeout={settings.idle_in_transaction_timeout_ms}",
        },
    )
