"""predictions.source: which API created a prediction, `api` (Quern's own) or `openai`

Every prediction so far came through Quern's own API: the column's default says so. A column
with a constant default is added without rewriting the table (PostgreSQL 11+). The check is
added NOT VALID and then validated, which reads the table without blocking writes to it.

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHECK = "ck_predictions_source"


def upgrade() -> None:
    op.add_column(
        "predictions",
        sa.Column("source", sa.String(length=16), server_default="api", nullable=False),
    )
    op.execute(
        f"ALTER TABLE predictions ADD CONSTRAINT {CHECK} "
        "CHECK (source IN ('api', 'openai')) NOT VALID"
    )
    op.execute(f"ALTER TABLE predictions VALIDATE CONSTRAINT {CHECK}")


def downgrade() -> None:
    op.drop_constraint(op.f(CHECK), "predictions", type_="check")
    op.drop_column("predictions", "source")
