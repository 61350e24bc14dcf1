"""Webhooks: the outbox rows are written with the status changes that cause them (a trigger,
migration 0006) or by the batch runner (progress.py); the dispatcher publishes due ones to the
`webhooks` queue; a webhooks worker delivers each (delivery.py, sending.py)."""
