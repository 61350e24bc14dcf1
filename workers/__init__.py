"""Celery workers: load models through models/, run predictions, write results to PostgreSQL."""
