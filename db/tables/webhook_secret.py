"""Each user's webhook signing secret (Standard Webhooks: `whsec_` + base64 of 32 bytes).

Made on first use, by whichever comes first: `GET /v1/webhooks/default/secret` or the first
delivery to sign. Stored as is: signing needs the key itself, not a hash of it.
"""

from datetime import datetime

from sqlalchemy import ForeignKey, String, func
from sqlalchemy.orm import Mapped, mapped_column

from db.base import Base


class WebhookSecret(Base):
    __tablename__ = "webhook_secrets"

    owner_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    secret: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
