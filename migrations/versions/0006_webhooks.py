"""webhooks: the prediction's webhook and events filter, deliveries, attempts, signing secrets

A trigger writes the `start` and `completed` deliveries in the transaction that changes the
prediction's status, whoever changes it (a worker, a cancel, the sweeper): the transactional
outbox, so no crash loses an event. Every insert into webhook_deliveries is announced with
NOTIFY on `quern_webhook_deliveries` (and so is a retry), which the webhooks workers'
dispatcher listens to.

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _created_at() -> sa.Column[sa.DateTime]:
    return sa.Column(
        "created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
    )


def upgrade() -> None:
    op.add_column("predictions", sa.Column("webhook", sa.String(length=2048), nullable=True))
    op.add_column(
        "predictions",
        sa.Column("webhook_events_filter", postgresql.ARRAY(sa.String(length=16)), nullable=True),
    )
    op.create_table(
        "webhook_secrets",
        sa.Column("owner_id", sa.String(length=26), nullable=False),
        sa.Column("secret", sa.String(length=64), nullable=False),
        _created_at(),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["users.id"],
            name=op.f("fk_webhook_secrets_owner_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("owner_id", name=op.f("pk_webhook_secrets")),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("prediction_id", sa.String(length=26), nullable=False),
        sa.Column("event", sa.String(length=16), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("snapshot", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("body", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "next_attempt_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("redelivery_of", sa.String(length=26), nullable=True),
        _created_at(),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "event IN ('start', 'output', 'logs', 'completed')",
            name=op.f("ck_webhook_deliveries_event"),
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'delivering', 'succeeded', 'failed', 'stopped')",
            name=op.f("ck_webhook_deliveries_status"),
        ),
        sa.ForeignKeyConstraint(
            ["prediction_id"],
            ["predictions.id"],
            name=op.f("fk_webhook_deliveries_prediction_id_predictions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
    )
    op.create_index(
        "ix_webhook_deliveries_prediction_id_created_at",
        "webhook_deliveries",
        ["prediction_id", "created_at"],
    )
    op.create_index(
        "ix_webhook_deliveries_unsent",
        "webhook_deliveries",
        ["next_attempt_at"],
        postgresql_where=sa.text("status = 'pending' AND enqueued_at IS NULL"),
    )
    op.create_index(
        "ix_webhook_deliveries_unfinished",
        "webhook_deliveries",
        ["status"],
        postgresql_where=sa.text("status IN ('pending', 'delivering')"),
    )
    op.create_table(
        "webhook_attempts",
        sa.Column("delivery_id", sa.String(length=26), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Double(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["webhook_deliveries.id"],
            name=op.f("fk_webhook_attempts_delivery_id_webhook_deliveries"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("delivery_id", "number", name=op.f("pk_webhook_attempts")),
    )
    # An id like db/ids.py's: 26 characters of its base32 alphabet, each from the low 5 bits
    # of a byte of two random UUIDs (~128 random bits; only 4 bits of each UUID are fixed).
    op.execute(
        """
        CREATE FUNCTION quern_new_id() RETURNS text LANGUAGE sql VOLATILE AS $$
            SELECT string_agg(
                substr('abcdefghijklmnopqrstuvwxyz234567', get_byte(bytes, i) % 32 + 1, 1),
                '' ORDER BY i)
            FROM (SELECT uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid())) AS r(bytes),
                 generate_series(0, 25) AS i
        $$
        """
    )
    # `start` on the first claim only (a retried attempt has started before); `completed` on
    # every move into a final status. Only the events the prediction's filter asks for.
    # (The Python side names this function where it says which event fires when: WebhookEvent
    # in db/tables/webhook_delivery.py.)
    op.execute(
        """
        CREATE FUNCTION quern_webhook_status_events() RETURNS trigger
        LANGUAGE plpgsql AS $$
        DECLARE
            event text;
        BEGIN
            IF OLD.status = 'starting' AND NEW.status = 'processing' AND NEW.attempts = 1 THEN
                event := 'start';
            ELSIF OLD.status IN ('starting', 'processing')
                  AND NEW.status IN ('succeeded', 'failed', 'canceled', 'aborted') THEN
                event := 'completed';
            ELSE
                RETURN NULL;
            END IF;
            IF event = ANY(NEW.webhook_events_filter) THEN
                INSERT INTO webhook_deliveries (id, prediction_id, event, url, snapshot)
                VALUES (quern_new_id(), NEW.id, event, NEW.webhook, to_jsonb(NEW));
            END IF;
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER predictions_webhook_events
        AFTER UPDATE OF status ON predictions
        FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status AND NEW.webhook IS NOT NULL)
        EXECUTE FUNCTION quern_webhook_status_events()
        """
    )
    # Whenever a delivery is written or becomes pending again (a retry, a lost attempt taken
    # back): the dispatcher then publishes it, or sleeps until it is due. No payload, so
    # PostgreSQL folds the notifications of one transaction into one.
    op.execute(
        """
        CREATE FUNCTION quern_notify_webhook_deliveries() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('quern_webhook_deliveries', '');
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER webhook_deliveries_notify
        AFTER INSERT OR UPDATE OF status ON webhook_deliveries
        FOR EACH ROW WHEN (NEW.status = 'pending')
        EXECUTE FUNCTION quern_notify_webhook_deliveries()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER webhook_deliveries_notify ON webhook_deliveries")
    op.execute("DROP FUNCTION quern_notify_webhook_deliveries()")
    op.execute("DROP TRIGGER predictions_webhook_events ON predictions")
    op.execute("DROP FUNCTION quern_webhook_status_events()")
    op.execute("DROP FUNCTION quern_new_id()")
    op.drop_table("webhook_attempts")
    op.drop_index("ix_webhook_deliveries_unfinished", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_unsent", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_prediction_id_created_at", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_secrets")
    op.drop_column("predictions", "webhook_events_filter")
    op.drop_column("predictions", "webhook")
