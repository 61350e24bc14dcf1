"""Database settings, read from the environment."""

from functools import lru_cache

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class DatabaseSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QUERN_DB_", extra="ignore")

    url: str = Field(
        default="postgresql+psycopg://postgres@127.0.0.1:5432/quern",
        validation_alias=AliasChoices("DATABASE_URL", "QUERN_DB_URL"),
    )
    pool_size: int = 10
    max_overflow: int = 20
    # A statement that runs longer than this is a bug or a lock pile-up, not work.
    statement_timeout_ms: int = 30_000
    # A transaction left idle this long belongs to a process that hung or was paused (SIGSTOP,
    # a frozen VM): PostgreSQL ends its session, so the locks it held (the sweeper's advisory
    # lock, row locks) go back to the live processes instead of blocking them indefinitely.
    idle_in_transaction_timeout_ms: int = 30_000

    @field_validator("url")
    @classmethod
    def use_psycopg3(cls, url: str) -> str:
        """Operators paste `postgres://` or `postgresql://`; SQLAlchemy needs the driver named."""
        for prefix in ("postgres://", "postgresql://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url.removeprefix(prefix)
        return url

    @property
    def libpq_url(self) -> str:
        """The URL for psycopg itself (LISTEN connections), without SQLAlchemy's driver name."""
        return self.url.replace("postgresql+psycopg://", "postgresql://", 1)


@lru_cache
def get_database_settings() -> DatabaseSettings:
    return DatabaseSettings()
