"""A file a prediction produced (an image), served at `GET /v1/files/{id}` to its owner.

Kept in PostgreSQL beside the prediction: one backup, one permission check, no shared volume
between workers and API. Meant for outputs of kilobytes to a few megabytes.
"""

from datetime import datetime

from sqlalchemy import ForeignKey, LargeBinary, String, func
from sqlalchemy.orm import Mapped, mapped_column

from db.base import Base
from db.ids import new_id


class File(Base):
    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(26), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    prediction_id: Mapped[str] = mapped_column(
        ForeignKey("predictions.id", ondelete="CASCADE"), index=True
    )
    content_type: Mapped[str] = mapped_column(String(100))
    size: Mapped[int]
    sha256: Mapped[str] = mapped_column(String(64))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
