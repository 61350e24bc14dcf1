"""Persistence: tables, engine, sessions and repositories. PostgreSQL is the source of truth."""
