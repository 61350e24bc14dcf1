"""What every pooled connection is told at connect: a paused or hung process cannot hold its
locks (the sweeper's, rows') for longer than the idle-in-transaction timeout."""

import time

import psycopg
import pytest
from sqlalchemy import func, select, text

from db.engine import get_engine
from db.settings import get_database_settings
from workers.sweeper import SWEEP_LOCK


def test_pooled_connections_end_transactions_left_idle() -> None:
    with get_engine().connect() as connection:
        shown = connection.execute(text("SHOW idle_in_transaction_session_timeout")).scalar()
    assert shown == "30s"


def test_a_paused_sweeper_gives_the_lock_back_when_its_transaction_is_ended() -> None:
    timeout_ms = 300  # as the fault tests lower it; 30 s by default
    url = get_database_settings().libpq_url
    options = f"-c idle_in_transaction_session_timeout={timeout_ms}"
    paused = psycopg.connect(url, options=options)  # a sweeper, mid-sweep, then SIGSTOPped
    paused.execute("SELECT pg_advisory_xact_lock(%s)", (SWEEP_LOCK,))
    with get_engine().connect() as other:
        taken = select(func.pg_try_advisory_xact_lock(SWEEP_LOCK))
        assert other.execute(taken).scalar() is False
        other.rollback()
        time.sleep(timeout_ms / 1000 + 0.5)
        assert other.execute(taken).scalar() is True
        other.rollback()
    with pytest.raises(psycopg.Error):
        paused.execute("SELECT 1")  # PostgreSQL ended its session
    paused.close()
