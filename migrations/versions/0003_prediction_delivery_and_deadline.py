"""prediction delivery bookkeeping (enqueued_at, next_attempt_at, lease) and deadline

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("deadline", "enqueued_at", "next_attempt_at", "lease_expires_at")


def upgrade() -> None:
    for name in COLUMNS:
        op.add_column("predictions", sa.Column(name, sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_predictions_starting_version_id",
        "predictions",
        ["version_id"],
        postgresql_where=sa.text("status = 'starting'"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_predictions_starting_version_id",
        table_name="predictions",
        postgresql_where=sa.text("status = 'starting'"),
    )
    for name in reversed(COLUMNS):
        op.drop_column("predictions", name)
