"""result cache: a version may answer a repeated input with an earlier prediction's output

- model_versions.cache_enabled / cache_ttl_s / cache_shared: the version's cache settings (off
  by default; the seed turns it on for the built-in embeddings version).
- predictions.cache_key: SHA-256 of the validated input in canonical form, written at create
  when the version caches and the input is deterministic (models/determinism.py). A row with a
  key becomes a cache entry the moment it succeeds: the partial index holds only those.
- A prediction inserted already `succeeded` (a hit) sends the webhooks a run would have,
  `start` then `completed` (those its filter asks for): the status trigger of 0006 fires only
  on UPDATE, so INSERT gets its own.

Revision ID: 0010
Revises: 0009
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_predictions_cache_entries"


def upgrade() -> None:
    op.add_column(
        "model_versions",
        sa.Column("cache_enabled", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    op.add_column(
        "model_versions",
        sa.Column("cache_ttl_s", sa.Integer(), server_default="86400", nullable=False),
    )
    op.add_column(
        "model_versions",
        sa.Column("cache_shared", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    op.create_check_constraint("cache_ttl_s", "model_versions", "cache_ttl_s >= 1")
    op.add_column("predictions", sa.Column("cache_key", sa.LargeBinary(), nullable=True))
    op.create_index(
        INDEX,
        "predictions",
        ["version_id", "cache_key", "completed_at"],
        postgresql_where=sa.text("status = 'succeeded' AND cache_key IS NOT NULL"),
    )
    op.execute(
        """
        CREATE FUNCTION quern_webhook_inserted_events() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF 'start' = ANY(NEW.webhook_events_filter) THEN
                INSERT INTO webhook_deliveries (id, prediction_id, event, url, snapshot)
                VALUES (quern_new_id(), NEW.id, 'start', NEW.webhook, to_jsonb(NEW));
            END IF;
            IF 'completed' = ANY(NEW.webhook_events_filter) THEN
                INSERT INTO webhook_deliveries (id, prediction_id, event, url, snapshot)
                VALUES (quern_new_id(), NEW.id, 'completed', NEW.webhook, to_jsonb(NEW));
            END IF;
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER predictions_inserted_webhook_events
        AFTER INSERT ON predictions
        FOR EACH ROW WHEN (NEW.status = 'succeeded' AND NEW.webhook IS NOT NULL)
        EXECUTE FUNCTION quern_webhook_inserted_events()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER predictions_inserted_webhook_events ON predictions")
    op.execute("DROP FUNCTION quern_webhook_inserted_events()")
    op.drop_index(INDEX, table_name="predictions")
    op.drop_column("predictions", "cache_key")
    op.drop_constraint(op.f("ck_model_versions_cache_ttl_s"), "model_versions", type_="check")
    op.drop_column("model_versions", "cache_shared")
    op.drop_column("model_versions", "cache_ttl_s")
    op.drop_column("model_versions", "cache_enabled")
