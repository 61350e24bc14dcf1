"""A model in the registry: `owner/name`, with versions."""

from datetime import datetime

from sqlalchemy import ForeignKey, String, Text, UniqueConstraint, func
from sqlalchemy.orm import Mapped, mapped_column

from db.base import Base
from db.ids import new_id


class Model(Base):
    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("owner_id", "name"),)

    id: Mapped[str] = mapped_column(String(26), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(Text, default="")
    # Links shown with the model, as on Replicate; never fetched by Quern.
    github_url: Mapped[str | None] = mapped_column(String(1024))
    paper_url: Mapped[str | None] = mapped_column(String(1024))
    license_url: Mapped[str | None] = mapped_column(String(1024))
    cover_image_url: Mapped[str | None] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
