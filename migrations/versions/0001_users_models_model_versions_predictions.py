"""users, models, model versions, predictions

Revision ID: 0001
Revises:
Create Date: 2026-11-22 22:29:17.683091
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("username", sa.String(length=39), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=True),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("role IN ('user', 'admin')", name=op.f("ck_users_role")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("username", name=op.f("uq_users_username")),
    )
    op.create_table(
        "models",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("owner_id", sa.String(length=26), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["users.id"], name=op.f("fk_models_owner_id_users"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_models")),
        sa.UniqueConstraint("owner_id", "name", name=op.f("uq_models_owner_id")),
    )
    op.create_index(op.f("ix_models_owner_id"), "models", ["owner_id"], unique=False)
    op.create_table(
        "model_versions",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("model_id", sa.String(length=26), nullable=False),
        sa.Column("model_type", sa.String(length=64), nullable=False),
        sa.Column("weights", sa.String(length=1024), nullable=False),
        sa.Column("input_schema", postgresql.JSONB(), nullable=False),
        sa.Column("hardware", sa.String(length=8), nullable=False),
        sa.Column("max_batch_size", sa.Integer(), nullable=False),
        sa.Column("max_batch_wait_ms", sa.Integer(), nullable=False),
        sa.Column("run_timeout_s", sa.Integer(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("hardware IN ('cpu', 'gpu')", name=op.f("ck_model_versions_hardware")),
        sa.CheckConstraint("max_batch_size >= 1", name=op.f("ck_model_versions_max_batch_size")),
        sa.CheckConstraint(
            "max_batch_wait_ms >= 0", name=op.f("ck_model_versions_max_batch_wait_ms")
        ),
        sa.CheckConstraint("run_timeout_s >= 1", name=op.f("ck_model_versions_run_timeout_s")),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["models.id"],
            name=op.f("fk_model_versions_model_id_models"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
    )
    op.create_index(
        "ix_model_versions_model_id_created_at",
        "model_versions",
        ["model_id", "created_at"],
        unique=False,
    )
    op.create_table(
        "predictions",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("owner_id", sa.String(length=26), nullable=False),
        sa.Column("version_id", sa.String(length=26), nullable=False),
        sa.Column("input", postgresql.JSONB(), nullable=False),
        sa.Column("output", postgresql.JSONB(), nullable=True),
        sa.Column("logs", sa.Text(), server_default="", nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("metrics", postgresql.JSONB(), server_default="{}", nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('starting', 'processing', 'succeeded', 'failed', 'canceled', 'aborted')",
            name=op.f("ck_predictions_status"),
        ),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["users.id"],
            name=op.f("fk_predictions_owner_id_users"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["model_versions.id"],
            name=op.f("fk_predictions_version_id_model_versions"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_predictions")),
    )
    op.create_index(
        "ix_predictions_owner_id_created_at_id",
        "predictions",
        ["owner_id", "created_at", "id"],
        unique=False,
    )
    op.create_index(
        "ix_predictions_unfinished",
        "predictions",
        ["status", "created_at"],
        unique=False,
        postgresql_where=sa.text("status IN ('starting', 'processing')"),
    )
    op.create_index(op.f("ix_predictions_version_id"), "predictions", ["version_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_predictions_version_id"), table_name="predictions")
    op.drop_index(
        "ix_predictions_unfinished",
        table_name="predictions",
        postgresql_where=sa.text("status IN ('starting', 'processing')"),
    )
    op.drop_index("ix_predictions_owner_id_created_at_id", table_name="predictions")
    op.drop_table("predictions")
    op.drop_index("ix_model_versions_model_id_created_at", table_name="model_versions")
    op.drop_table("model_versions")
    op.drop_index(op.f("ix_models_owner_id"), table_name="models")
    op.drop_table("models")
    op.drop_table("users")
