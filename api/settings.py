"""API settings, read from the environment (QUERN_*, plus REDIS_URL)."""

from functools import lru_cache
from typing import Annotated, Literal

from limits import parse
from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from db.secret_setting import EMPTY_IS_UNSET, at_least

DEVELOPMENT_JWT_SECRET = "quern-development-secret-do-not-use-in-production"  # noqa: S105


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QUERN_", extra="ignore")

    # "development" allows the built-in JWT secret; anything else demands a real one.
    env: Literal["development", "production", "test"] = "production"
    jwt_secret: str = DEVELOPMENT_JWT_SECRET
    jwt_ttl_s: int = Field(default=3600, ge=60, le=30 * 24 * 3600)
    jwt_issuer: str = "quern"
    jwt_audience: str = "quern-api"
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("REDIS_URL", "QUERN_REDIS_URL"),
    )
    # Must equal the workers' value: with several apps on one broker the shortest wins.
    broker_visibility_timeout_s: int = 3600
    # Starlette has no limit of its own; prompts and texts fit easily in this.
    max_body_bytes: int = 1024 * 1024
    # Uploads (POST /v1/files): the largest file, and how long it is kept before the cleaner
    # removes it. The body limit above does not apply to uploads: this one does.
    max_file_bytes: int = Field(default=100 * 1024 * 1024, ge=1)
    file_ttl_s: int = Field(default=24 * 3600, ge=60, le=365 * 24 * 3600)
    # A `data:` URL given as a file input: at most this many bytes once decoded.
    max_data_url_bytes: int = Field(default=1024 * 1024, ge=1)
    # Backpressure: a version with this many queued predictions answers 503 + Retry-After.
    max_queued_per_version: int = Field(default=10_000, ge=1)
    page_size_default: int = 20
    page_size_max: int = 100
    # Rate limits (`limits` notation: "600/minute", "10/second"), per API token (or per user for
    # JWTs): writes are POST/DELETE, reads are GET; `auth` is per client address on sign-up and
    # sign-in.
    rate_limit_write: str = "600/minute"
    rate_limit_read: str = "3000/minute"
    rate_limit_auth: str = "30/minute"
    # Failed sign-ins per account, whatever address they come from (password guessing spread
    # over many addresses). Only failures count.
    rate_limit_signin_failures: str = "20/hour"
    # Resource limits per user: unfinished predictions (429 beyond), live API tokens.
    max_in_flight_per_user: int = Field(default=1000, ge=1)
    max_tokens_per_user: int = Field(default=100, ge=1)
    # Versions of a model are published by its owner, who alone changes or deletes the model
    # and its versions. True lets any admin do so to any model (the built-in `quern/...` models
    # included, whose owner cannot sign in).
    admins_publish_any_model: bool = False
    # Any string anywhere in a prediction's input (the version's schema may say less).
    max_input_string_chars: int = Field(default=100_000, ge=1)
    # The operators' bearer token: /metrics and /ready's details (api/ops_access.py). Unset:
    # only a client on this machine, not through a proxy, gets them.
    metrics_token: Annotated[
        SecretStr | None, EMPTY_IS_UNSET, at_least("QUERN_METRICS_TOKEN", 16)
    ] = None
    # How long an OpenAI-compatible request (api/routes/openai.py) waits for its predictions,
    # streamed or not; then they are canceled (408). The OpenAI clients' own default timeout.
    openai_timeout_s: float = Field(default=600.0, gt=0, le=3600)
    # Seconds between handing freed memory back to the OS (api/memory.py); 0: never.
    malloc_trim_interval_s: float = Field(default=60.0, ge=0)
    # Argon2id cost of new password hashes (api/security.py), above the OWASP minimum (m=19 MiB,
    # t=2, p=1). Lower only outside production (the test suite: every test user's sign-up and
    # sign-in would pay it); a stored hash carries its own cost, so any of them verifies.
    password_hash_memory_kib: int = Field(default=19 * 1024, ge=8)
    password_hash_time_cost: int = Field(default=2, ge=1)

    @field_validator(
        "rate_limit_write", "rate_limit_read", "rate_limit_auth", "rate_limit_signin_failures"
    )
    @classmethod
    def parse_rate_limit(cls, value: str) -> str:
        parse(value)  # ValueError names the bad spec
        return value

    @model_validator(mode="after")
    def refuse_default_secret(self) -> "ApiSettings":
        if self.env != "development" and self.jwt_secret == DEVELOPMENT_JWT_SECRET:
            raise ValueError("QUERN_JWT_SECRET must be set outside development (QUERN_ENV)")
        if len(self.jwt_secret) < 32:
            raise ValueError("QUERN_JWT_SECRET must be at least 32 characters")
        if self.env == "production" and (
            self.password_hash_memory_kib < 19 * 1024 or self.password_hash_time_cost < 2
        ):
            raise ValueError(
                "QUERN_PASSWORD_HASH_MEMORY_KIB below 19456 or QUERN_PASSWORD_HASH_TIME_COST "
                "below 2 is refused in production (QUERN_ENV)"
            )
        return self


@lru_cache
def get_api_settings() -> ApiSettings:
    return ApiSettings()
