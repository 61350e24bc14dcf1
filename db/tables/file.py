"""A file: one a prediction produced (an image), or one a user uploaded (the Files API).

Kept in PostgreSQL: one backup, one permission check, no shared volume between workers and
API. A prediction's output files keep their bytes inline (`data`: kilobytes to a few
megabytes). An upload has no prediction, a name, metadata and an expiry, and its bytes are in
`file_chunks` (db/repositories/file_bytes.py), read and written a chunk at a time.
"""

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, LargeBinary, String, func, text
from sqlalchemy.orm import Mapped, mapped_column

from db.base import Base
from db.ids import new_id


class File(Base):
    __tablename__ = "files"
    __table_args__ = (
        # A user's uploads, newest first (GET /v1/files).
        Index(
            "ix_files_uploads_owner_id_created_at_id",
            "owner_id",
            "created_at",
            "id",
            postgresql_where=text("prediction_id IS NULL"),
        ),
        # What the cleaner removes.
        Index("ix_files_expires_at", "expires_at", postgresql_where=text("expires_at IS NOT NULL")),
    )

    id: Mapped[str] = mapped_column(String(26), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    # The prediction whose output it is; None for an upload.
    prediction_id: Mapped[str | None] = mapped_column(
        ForeignKey("predictions.id", ondelete="CASCADE"), index=True
    )
    content_type: Mapped[str] = mapped_column(String(100))
    size: Mapped[int]
    sha256: Mapped[str] = mapped_column(String(64))
    data: Mapped[bytes | None] = mapped_column(LargeBinary)  # an output's bytes
    filename: Mapped[str | None] = mapped_column(String(255))
    file_metadata: Mapped[dict[str, Any]] = mapped_column(
        "metadata", default=dict, server_default=text("'{}'::jsonb")
    )
    expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class FileChunk(Base):
    """1 MiB of an uploaded file's bytes, in order of `number` from 0."""

    __tablename__ = "file_chunks"

    file_id: Mapped[str] = mapped_column(
        ForeignKey("files.id", ondelete="CASCADE"), primary_key=True
    )
    number: Mapped[int] = mapped_column(primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
