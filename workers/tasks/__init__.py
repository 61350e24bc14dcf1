"""Celery tasks, one module per domain."""
