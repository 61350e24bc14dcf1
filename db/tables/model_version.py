"""An immutable version of a model: what to load, how to validate input, how to batch."""

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, false, func
from sqlalchemy.orm import Mapped, mapped_column

from db.base import Base
from db.ids import new_id


class Hardware(StrEnum):
    CPU = "cpu"
    GPU = "gpu"


class Batching(StrEnum):
    """How a version's predictions share the model: `static` runs a gathered batch to its last
    token; `continuous` (text generation) schedules per token (workers/engine.py)."""

    STATIC = "static"
    CONTINUOUS = "continuous"


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (
        CheckConstraint("hardware IN ('cpu', 'gpu')", name="hardware"),
        CheckConstraint("max_batch_size >= 1", name="max_batch_size"),
        CheckConstraint("max_batch_wait_ms >= 0", name="max_batch_wait_ms"),
        CheckConstraint("run_timeout_s >= 1", name="run_timeout_s"),
        CheckConstraint("batching IN ('static', 'continuous')", name="batching"),
        CheckConstraint("cache_ttl_s >= 1", name="cache_ttl_s"),
        Index("ix_model_versions_model_id_created_at", "model_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(26), primary_key=True, default=new_id)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    # A key of models.registry (text-generation, embeddings, ...).
    model_type: Mapped[str] = mapped_column(String(64))
    # model_type "custom": the class to load, `package.module:ClassName`, importable on workers.
    predictor: Mapped[str | None] = mapped_column(String(200))
    # package://<module>/<path>, file:///<path>: resolved by the worker, never by the API.
    weights: Mapped[str] = mapped_column(String(1024))
    input_schema: Mapped[dict[str, Any]]
    hardware: Mapped[str] = mapped_column(String(8), default=Hardware.CPU)
    max_batch_size: Mapped[int] = mapped_column(default=1)
    max_batch_wait_ms: Mapped[int] = mapped_column(default=5)
    batching: Mapped[str] = mapped_column(
        String(16), default=Batching.STATIC, server_default=Batching.STATIC.value
    )
    run_timeout_s: Mapped[int] = mapped_column(default=300)
    # The result cache (api/services/result_cache.py): a repeated deterministic input is answered
    # with the output of a prediction that succeeded within cache_ttl_s, the caller's own unless
    # cache_shared (an output can reveal someone else's input).
    cache_enabled: Mapped[bool] = mapped_column(default=False, server_default=false())
    cache_ttl_s: Mapped[int] = mapped_column(default=86400, server_default="86400")
    cache_shared: Mapped[bool] = mapped_column(default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    @property
    def cache(self) -> dict[str, Any]:
        """The cache settings as the API shows them (`VersionOut.cache`)."""
        return {
            "enabled": self.cache_enabled,
            "ttl_s": self.cache_ttl_s,
            "shared": self.cache_shared,
        }
