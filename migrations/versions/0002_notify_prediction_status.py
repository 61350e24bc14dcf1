"""notify prediction status changes

Every committed status change of a prediction is announced with NOTIFY on the channel
`quern_prediction_status`, payload "<id> <status>". NOTIFY is transactional: listeners hear
only changes that committed, whoever wrote them (a worker, a cancel, a sweeper).

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION quern_notify_prediction_status() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('quern_prediction_status', NEW.id || ' ' || NEW.status);
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER predictions_notify_status
        AFTER UPDATE OF status ON predictions
        FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
        EXECUTE FUNCTION quern_notify_prediction_status()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER predictions_notify_status ON predictions")
    op.execute("DROP FUNCTION quern_notify_prediction_status()")
