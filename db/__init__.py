"""Persistence: SQLAlchemy tables, the engine, sessions and repositories. PostgreSQL is the source of truth."""
