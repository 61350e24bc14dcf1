"""webhook deliveries of one prediction go one at a time, in the order they were written

Until now every delivery was `pending` (due) once written, so a prediction's deliveries were
sent in parallel and `completed` could arrive before an older `output`. Now at most one
delivery of a prediction is `pending` or `delivering`; the later ones are `waiting`, which the
dispatcher never looks at (its queries are unchanged, and as cheap, however many wait behind a
receiver that is down). Triggers keep this, whoever writes or ends a delivery:

- written (BEFORE INSERT): an `output` or `logs` that a later event supersedes is `skipped`
  (every body is the whole prediction, so the later one says all it would have): an earlier
  one of the same event, or any, when `completed` is written. One written once the prediction
  has ended is skipped itself if a `completed` delivery says more (the final transaction
  writes the last `logs` after `completed`), or if it shows the prediction still running (a
  streamed `output` that raced the final transaction). `start` and `completed` are never
  skipped. The new delivery is `waiting` if another of its prediction is unfinished.
- an attempt of a superseded `output` or `logs` fails (BEFORE UPDATE): skipped, not retried.
- ended (AFTER UPDATE: succeeded, failed, stopped, skipped): the oldest `waiting` one becomes
  `pending`, which 0006's trigger NOTIFYs, so it is sent at once.

Each first locks its prediction's row (FOR NO KEY UPDATE, as any UPDATE of the prediction
does: a transaction changing its status holds it already), so a delivery written as another
ends can neither be left waiting nor overtake it. A row lock, not an advisory one: a sweep that
aborts thousands of predictions at once must not fill the shared lock table. Deliveries of
different predictions never wait for each other.

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES = "'pending', 'delivering', 'succeeded', 'failed', 'stopped'"
INDEX = "ix_webhook_deliveries_unfinished_prediction_id"
# The message is db/repositories/webhook_deliveries.py's SUPERSEDED.
FUNCTIONS = {
    "quern_webhook_delivery_written": """
        BEGIN
            PERFORM FROM predictions WHERE id = NEW.prediction_id FOR NO KEY UPDATE;
            IF NEW.event IN ('output', 'logs') AND EXISTS (
                SELECT FROM predictions
                WHERE id = NEW.prediction_id
                  AND status NOT IN ('starting', 'processing')
                  AND ('completed' = ANY(webhook_events_filter)
                       OR NEW.snapshot->>'status' IN ('starting', 'processing'))
            ) THEN
                NEW.status := 'skipped';
                NEW.completed_at := now();
                NEW.last_error := 'Skipped: a later event of the prediction says all it would have';
                RETURN NEW;
            END IF;
            IF NEW.event IN ('output', 'logs', 'completed') THEN
                UPDATE webhook_deliveries
                SET status = 'skipped', completed_at = now(),
                    last_error = 'Skipped: a later event of the prediction says all it would have'
                WHERE prediction_id = NEW.prediction_id
                  AND status IN ('waiting', 'pending')
                  AND event IN ('output', 'logs')
                  AND (NEW.event = 'completed' OR event = NEW.event);
            END IF;
            IF EXISTS (
                SELECT FROM webhook_deliveries
                WHERE prediction_id = NEW.prediction_id
                  AND status IN ('waiting', 'pending', 'delivering')
            ) THEN
                NEW.status := 'waiting';
            END IF;
            RETURN NEW;
        END
    """,
    "quern_webhook_delivery_retried": """
        BEGIN
            PERFORM FROM predictions WHERE id = NEW.prediction_id FOR NO KEY UPDATE;
            IF EXISTS (
                SELECT FROM webhook_deliveries
                WHERE prediction_id = NEW.prediction_id
                  AND status = 'waiting'
                  AND event IN ('completed', NEW.event)
            ) THEN
                NEW.status := 'skipped';
                NEW.completed_at := now();
                NEW.last_error := 'Skipped: a later event of the prediction says all it would have';
            END IF;
            RETURN NEW;
        END
    """,
    "quern_webhook_delivery_ended": """
        BEGIN
            PERFORM FROM predictions WHERE id = NEW.prediction_id FOR NO KEY UPDATE;
            UPDATE webhook_deliveries SET status = 'pending'
            WHERE id = (
                SELECT id FROM webhook_deliveries
                WHERE prediction_id = NEW.prediction_id AND status = 'waiting'
                ORDER BY created_at, id
                LIMIT 1
            )
            AND NOT EXISTS (
                SELECT FROM webhook_deliveries
                WHERE prediction_id = NEW.prediction_id
                  AND status IN ('pending', 'delivering')
            );
            RETURN NULL;
        END
    """,
}

TRIGGERS = {
    "webhook_deliveries_written": (
        "BEFORE INSERT",
        "NEW.status = 'pending'",  # as every writer does; else it stays as written
        "quern_webhook_delivery_written",
    ),
    "webhook_deliveries_retried": (
        "BEFORE UPDATE OF status",
        "OLD.status = 'delivering' AND NEW.status = 'pending' AND NEW.event IN ('output', 'logs')",
        "quern_webhook_delivery_retried",
    ),
    "webhook_deliveries_ended": (
        "AFTER UPDATE OF status",
        "OLD.status IN ('pending', 'delivering') "
        "AND NEW.status IN ('succeeded', 'failed', 'stopped', 'skipped')",
        "quern_webhook_delivery_ended",
    ),
}


def _status_check(statuses: str) -> None:
    name = op.f("ck_webhook_deliveries_status")
    op.drop_constraint(name, "webhook_deliveries", type_="check")
    op.create_check_constraint(name, "webhook_deliveries", f"status IN ({statuses})")


def upgrade() -> None:
    _status_check(f"{STATUSES}, 'waiting', 'skipped'")
    op.create_index(
        INDEX,
        "webhook_deliveries",
        ["prediction_id", "created_at", "id"],
        postgresql_where=sa.text("status IN ('waiting', 'pending', 'delivering')"),
    )
    # Deliveries written before: those never tried nor published wait for an earlier one.
    op.execute(
        """
        UPDATE webhook_deliveries AS later SET status = 'waiting'
        WHERE later.status = 'pending' AND later.attempts = 0 AND later.enqueued_at IS NULL
          AND EXISTS (
              SELECT FROM webhook_deliveries AS earlier
              WHERE earlier.prediction_id = later.prediction_id
                AND earlier.status IN ('pending', 'delivering')
                AND (earlier.created_at, earlier.id) < (later.created_at, later.id)
          )
        """
    )
    for name, body in FUNCTIONS.items():
        op.execute(f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $${body}$$")
    for name, (when, condition, function) in TRIGGERS.items():
        op.execute(
            f"""
            CREATE TRIGGER {name} {when} ON webhook_deliveries
            FOR EACH ROW WHEN ({condition})
            EXECUTE FUNCTION {function}()
            """
        )


def downgrade() -> None:
    for name in TRIGGERS:
        op.execute(f"DROP TRIGGER {name} ON webhook_deliveries")
    for name in FUNCTIONS:
        op.execute(f"DROP FUNCTION {name}()")
    op.execute("UPDATE webhook_deliveries SET status = 'pending' WHERE status = 'waiting'")
    # Never sent, never to be: the nearest status 0006 knows.
    op.execute("UPDATE webhook_deliveries SET status = 'stopped' WHERE status = 'skipped'")
    op.drop_index(INDEX, table_name="webhook_deliveries")
    _status_check(STATUSES)
