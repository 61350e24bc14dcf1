"""Worker settings, read from the environment (QUERN_WORKER_*, plus REDIS_URL)."""

from functools import lru_cache

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QUERN_WORKER_", extra="ignore")

    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("REDIS_URL", "QUERN_REDIS_URL"),
    )
    # Must equal the API's value: with several apps on one broker the shortest wins.
    broker_visibility_timeout_s: int = Field(
        default=3600, validation_alias=AliasChoices("QUERN_BROKER_VISIBILITY_TIMEOUT_S")
    )
    # Hard ceiling on one task; kept below the visibility timeout so a slow task is never
    # redelivered (and run a second time) while it is still running.
    task_time_limit_s: int = 1800
    # Task threads per worker process: predictions in flight there, the largest batch it forms.
    concurrency: int = Field(default=64, ge=1, le=1024)
    # Retries of transient failures (out of memory, a lost worker): full-jitter exponential
    # backoff, delay = random(0, min(cap, base * 2^(attempt-1))), kept in PostgreSQL.
    max_attempts: int = Field(default=5, ge=1, le=100)
    retry_base_s: float = Field(default=1.0, gt=0)
    retry_cap_s: float = Field(default=300.0, gt=0)
    # A worker renews its lease on running predictions every lease_s / 3; when a lease runs
    # out (the worker died), the sweeper puts the prediction back in the queue.
    lease_s: float = Field(default=60.0, gt=0)
    sweep_interval_s: float = Field(default=2.0, gt=0)
    # A queued prediction whose message is older than this is assumed lost and sent again
    # (a duplicate is harmless: the claim is conditional).
    requeue_after_s: float = Field(default=900.0, gt=0)
    # Memory for the models one process holds, per device (CPU RAM, or the GPU's memory); past
    # it the least recently used model is dropped. 0: half the RAM, or 80% of the GPU.
    model_memory_mb: int = Field(default=0, ge=0)
    # Prometheus metrics of this process on http://<metrics_host>:<metrics_port>/metrics; 0: off.
    metrics_port: int = Field(default=0, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    # Where clients reach the API: file outputs become {public_url}/v1/files/{id}.
    public_url: str = Field(
        default="http://127.0.0.1:8000", validation_alias=AliasChoices("QUERN_PUBLIC_URL")
    )
    # Files one prediction may store (they live in PostgreSQL): more fails the prediction.
    max_output_file_bytes: int = Field(default=20 * 1024 * 1024, ge=0)
    # File inputs given as http(s) URLs (db/file_inputs.py): the most bytes fetched, and the
    # time the whole fetch may take.
    max_input_file_bytes: int = Field(default=100 * 1024 * 1024, ge=1)
    input_fetch_timeout_s: float = Field(default=30.0, gt=0, le=600)
    # Webhook deliveries (the `webhooks` queue). One attempt (resolve, connect, send, read the
    # answer) gets webhook_timeout_s in all; the worker holds a delivery under a lease that
    # outlasts an attempt, so a lapsed lease means the worker died and it is tried again.
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    webhook_lease_s: float = Field(default=60.0, gt=0)
    # Retries (any answer but 2xx and 410, or none): delay = random(3c/4, c) with
    # c = min(cap, base * 2^(attempt-1)), so each wait is longer than the last; a 429 or 503
    # `Retry-After` is honoured up to the cap. No attempt after max_attempts, or later than
    # horizon_s after the event. The defaults spread 10 attempts over 13 to 17 hours.
    webhook_max_attempts: int = Field(default=10, ge=1, le=100)
    webhook_retry_base_s: float = Field(default=120.0, gt=0)
    webhook_retry_cap_s: float = Field(default=12 * 3600.0, gt=0)
    webhook_retry_horizon_s: float = Field(default=24 * 3600.0, gt=0)
    # The dispatcher (in webhooks workers) wakes on every new delivery and when a retry is due;
    # at least this often it also takes back deliveries whose worker died and republishes those
    # published longer than webhook_requeue_after_s ago and never started (message lost).
    webhook_dispatch_interval_s: float = Field(default=5.0, gt=0)
    webhook_requeue_after_s: float = Field(default=600.0, gt=0)

    @model_validator(mode="after")
    def _lease_outlasts_an_attempt(self) -> "WorkerSettings":
        if self.webhook_lease_s <= self.webhook_timeout_s:
            raise ValueError(
                "QUERN_WORKER_WEBHOOK_LEASE_S must exceed QUERN_WORKER_WEBHOOK_TIMEOUT_S"
            )
        return self

    @field_validator("public_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")


@lru_cache
def get_worker_settings() -> WorkerSettings:
    return WorkerSettings()
