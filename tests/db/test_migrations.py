"""The migrations build exactly the tables the code declares, and run both ways."""

import importlib
import secrets
import subprocess
import sys

from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from tests.conftest import DATABASE_URL, SERVER_URL, migrate


def test_tables_and_migrations_do_not_drift() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "No new upgrade operations detected" in result.stdout + result.stderr


def test_upgrade_downgrade_upgrade_on_an_empty_database() -> None:
    from alembic import command
    from alembic.config import Config

    name = f"quern_mig_{secrets.token_hex(4)}"
    url = make_url(SERVER_URL).set(database=name).render_as_string(False)
    server = create_engine(SERVER_URL, isolation_level="AUTOCOMMIT")
    with server.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        migrate(url)
        config = Config("alembic.ini")
        config.attributes["url"] = url
        command.downgrade(config, "base")
        engine = create_engine(url)
        assert set(inspect(engine).get_table_names()) == {"alembic_version"}
        engine.dispose()
        migrate(url)
        engine = create_engine(url)
        tables = set(inspect(engine).get_table_names())
        assert {"users", "models", "model_versions", "predictions"} <= tables
        engine.dispose()
    finally:
        with server.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        server.dispose()


def test_test_database_is_the_runs_own() -> None:
    assert make_url(DATABASE_URL).database.startswith("quern_test_")


def test_model_data_is_never_given_to_pglz() -> None:
    """Migration 0014: an embedding is past TOAST's 2 kB and pglz gives up on it, after the
    work; lz4 where the server has it, else no compression."""
    migration = importlib.import_module("migrations.versions.0014_model_data_without_pglz")
    engine = create_engine(DATABASE_URL)
    try:
        with engine.connect() as conn:
            lz4 = conn.execute(text(migration.HAS_LZ4)).scalar()
            forms = conn.execute(
                text("SELECT attname, attcompression, attstorage FROM pg_attribute "
                     "WHERE attrelid = 'predictions'::regclass AND attname = ANY(:columns)"),
                {"columns": list(migration.COLUMNS)},
            ).all()  # fmt: skip
    finally:
        engine.dispose()
    expected = ("l", "x") if lz4 else ("", "e")
    assert {name: (compression, storage) for name, compression, storage in forms} == {
        "input": expected,
        "output": expected,
    }
