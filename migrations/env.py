"""Alembic environment: the URL and metadata come from db/, so there is one source of truth."""

from alembic import context
from sqlalchemy import create_engine, pool

import db.tables  # noqa: F401 - registers the tables on the metadata
from db.base import Base
from db.settings import get_database_settings

config = context.config
url = config.attributes.get("url") or get_database_settings().url


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
