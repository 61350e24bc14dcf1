"""What the API and the workers share: neither imports the other, and both import this.

The contract between them (task and queue names, the event stream key: contract.py), the
retry backoff (backoff.py), logging with context (log_format.py), the webhook SSRF guard and
its settings (webhook_guard.py) and the one prediction serializer (prediction_object.py).
`db/` keeps what is about the database; a module here may use it, never api/ or workers/.
"""
