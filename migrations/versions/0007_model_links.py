"""models' links as Replicate has them: GitHub, paper, license, cover image

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LINKS = ("github_url", "paper_url", "license_url", "cover_image_url")


def upgrade() -> None:
    for column in LINKS:
        op.add_column("models", sa.Column(column, sa.String(length=1024), nullable=True))


def downgrade() -> None:
    for column in reversed(LINKS):
        op.drop_column("models", column)
