"""`Idempotency-Key` on prediction create: which prediction a client's key produced."""

from datetime import datetime

from sqlalchemy import ForeignKey, String, func
from sqlalchemy.orm import Mapped, mapped_column

from db.base import Base


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"

    owner_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    # SHA-256 of the request (body and headers that change its meaning): a different request
    # under the same key is refused, not silently answered with the first one's prediction.
    request_hash: Mapped[str] = mapped_column(String(64))
    prediction_id: Mapped[str] = mapped_column(ForeignKey("predictions.id", ondelete="CASCADE"))
    # Keys are honoured for 24 h; the workers' sweeper deletes older ones.
    created_at: Mapped[datetime] = mapped_column(server_default=func.now(), index=True)
