"""notify terminal prediction statuses only

0002 announced every status change, `processing` and a retry's `starting` too. Nobody acts on
those (the API wakes waiters and ends streams on a terminal status; workers stop a canceled
prediction), yet each was one more NOTIFY per prediction delivered to every API process and
every worker. Now only terminal statuses are announced: succeeded, failed, canceled, aborted.

Revision ID: 0013
Revises: 0012
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TRIGGER = """
    CREATE TRIGGER predictions_notify_status
    AFTER UPDATE OF status ON predictions
    FOR EACH ROW WHEN ({condition})
    EXECUTE FUNCTION quern_notify_prediction_status()
"""
_CHANGED = "OLD.status IS DISTINCT FROM NEW.status"
_TERMINAL = "NEW.status IN ('succeeded', 'failed', 'canceled', 'aborted')"


def upgrade() -> None:
    # Replacing a trigger locks the table: behind a long transaction, fail rather than queue
    # every request behind this migration.
    op.execute("SET LOCAL lock_timeout = '10s'")
    op.execute("DROP TRIGGER predictions_notify_status ON predictions")
    op.execute(_TRIGGER.format(condition=f"{_CHANGED} AND {_TERMINAL}"))


def downgrade() -> None:
    op.execute("DROP TRIGGER predictions_notify_status ON predictions")
    op.execute(_TRIGGER.format(condition=_CHANGED))
