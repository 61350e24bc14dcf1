"""uploaded files: the Files API's uploads beside the files predictions produce

An upload has no prediction, a name, metadata and an expiry; its bytes are stored in 1 MiB
chunks (file_chunks), written and read one chunk at a time, so no process holds a large file
whole. A prediction's output files keep their bytes inline (`files.data`: kilobytes to a few
megabytes, written with the prediction's outcome).

Revision ID: 0011
Revises: 0010
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.alter_column("files", "prediction_id", nullable=True)
    op.alter_column("files", "data", nullable=True)
    op.add_column("files", sa.Column("filename", sa.String(length=255), nullable=True))
    op.add_column(
        "files",
        sa.Column(
            "metadata",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
    )
    op.add_column("files", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_files_uploads_owner_id_created_at_id",
        "files",
        ["owner_id", "created_at", "id"],
        postgresql_where=sa.text("prediction_id IS NULL"),
    )
    op.create_index(
        "ix_files_expires_at",
        "files",
        ["expires_at"],
        postgresql_where=sa.text("expires_at IS NOT NULL"),
    )
    op.create_table(
        "file_chunks",
        sa.Column("file_id", sa.String(length=26), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["file_id"],
            ["files.id"],
            name=op.f("fk_file_chunks_file_id_files"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("file_id", "number", name=op.f("pk_file_chunks")),
    )


def downgrade() -> None:
    op.drop_table("file_chunks")
    op.drop_index("ix_files_expires_at", table_name="files")
    op.drop_index("ix_files_uploads_owner_id_created_at_id", table_name="files")
    op.execute("DELETE FROM files WHERE prediction_id IS NULL OR data IS NULL")
    op.drop_column("files", "expires_at")
    op.drop_column("files", "metadata")
    op.drop_column("files", "filename")
    op.alter_column("files", "data", nullable=False)
    op.alter_column("files", "prediction_id", nullable=False)
