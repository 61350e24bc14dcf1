"""Test setup: a fresh PostgreSQL database built by the real migrations, and real Redis.

The database server comes from QUERN_TEST_POSTGRES_URL (default: this machine's server);
each run creates its own database and drops it at the end. In-process API tests publish to
Redis database 14, where no worker listens; live-worker tests use database 15. Two runs on one
machine at once need other databases: QUERN_TEST_REDIS_DBS=12,13 (API, worker). Under
pytest-xdist (make test-fast) each worker process is a run of its own: its own database, and
worker N takes the Redis pair 2N below (gw1: 12,13).
"""

import gc
import os
import secrets
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

SERVER_URL = os.environ.get(
    "QUERN_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_BASE = os.environ.get("QUERN_TEST_REDIS_URL", "redis://127.0.0.1:6379")
_XDIST_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
_API_DB, _WORKER_DB = (
    int(db) - 2 * _XDIST_WORKER for db in os.environ.get("QUERN_TEST_REDIS_DBS", "14,15").split(",")
)
API_REDIS_URL = f"{REDIS_BASE}/{_API_DB}"
WORKER_REDIS_URL = f"{REDIS_BASE}/{_WORKER_DB}"
DATABASE_NAME = f"quern_test_{secrets.token_hex(4)}"
DATABASE_URL = make_url(SERVER_URL).set(database=DATABASE_NAME).render_as_string(False)

# Before any project module reads its (cached) settings.
os.environ.update(
    DATABASE_URL=DATABASE_URL,
    REDIS_URL=API_REDIS_URL,
    QUERN_ENV="test",
    QUERN_JWT_SECRET="test-secret-" + secrets.token_hex(16),
    # Signed URLs (db/signed_urls.py) for the API and the live workers alike.
    QUERN_SIGNED_URL_SECRET="test-url-secret-" + secrets.token_hex(16),
    # Tests of the limits lower them on the settings object; the rest must never meet them.
    QUERN_RATE_LIMIT_WRITE="1000000/minute",
    QUERN_RATE_LIMIT_READ="1000000/minute",
    QUERN_RATE_LIMIT_AUTH="1000000/minute",
    # Every test user signs up and in: production's Argon2id cost (19 MiB, two passes) would
    # spend ~70 ms of CPU on each. Refused in production (api/settings.py).
    QUERN_PASSWORD_HASH_MEMORY_KIB="64",
    QUERN_PASSWORD_HASH_TIME_COST="1",
)


def _server_engine():  # type: ignore[no-untyped-def]
    return create_engine(SERVER_URL, isolation_level="AUTOCOMMIT")


def migrate(url: str) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config("alembic.ini")
    config.attributes["url"] = url
    command.upgrade(config, "head")


@pytest.fixture(scope="session", autouse=True)
def database() -> Iterator[str]:
    """The run's own database: migrated, seeded with the built-in models, dropped at the end."""
    engine = _server_engine()
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{DATABASE_NAME}"'))
    try:
        migrate(DATABASE_URL)
        from db.seed import seed
        from db.session import session_scope

        with session_scope() as session:
            seed(session)
        for url in (API_REDIS_URL, WORKER_REDIS_URL):
            redis.Redis.from_url(url).flushdb()
        yield DATABASE_URL
    finally:
        from db.engine import get_engine

        get_engine().dispose()
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{DATABASE_NAME}" WITH (FORCE)'))
        engine.dispose()


def pytest_collection_finish(session: pytest.Session) -> None:
    """What collection imported (torch, the API, schemathesis: half a million objects) lives
    until the end: out of the collector's sight, so each full collection (the model cache's
    on every eviction, Python's own) walks only what the tests make, not 0.3 s of modules."""
    gc.freeze()


pytest_plugins = ["tests.support.live", "tests.support.transaction"]
