"""version batching: `static` (a gathered batch runs to its last token) or `continuous`

- model_versions.batching: how the version's predictions share the model. `continuous` (text
  generation only, checked by the API) schedules per token: requests join and leave a running
  batch between steps (workers/engine.py). Existing versions keep `static`.

Revision ID: 0012
Revises: 0011
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "model_versions",
        sa.Column("batching", sa.String(length=16), server_default="static", nullable=False),
    )
    op.create_check_constraint("batching", "model_versions", "batching IN ('static', 'continuous')")


def downgrade() -> None:
    op.drop_constraint(op.f("ck_model_versions_batching"), "model_versions", type_="check")
    op.drop_column("model_versions", "batching")
