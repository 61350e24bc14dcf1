"""Webhook signing secrets, one per user, made on first use."""

import base64
import secrets

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from db.tables import WebhookSecret


def new_secret() -> str:
    """Standard Webhooks' form: `whsec_` and the base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def get_or_create(session: Session, *, owner_id: str) -> str:
    """The user's secret, made now if they have none (two first uses at once agree on one)."""
    query = select(WebhookSecret.secret).where(WebhookSecret.owner_id == owner_id)
    found = session.scalar(query)
    if found is None:
        session.execute(
            insert(WebhookSecret)
            .values(owner_id=owner_id, secret=new_secret())
            .on_conflict_do_nothing(index_elements=["owner_id"])
        )
        found = session.scalars(query).one()
    return found
