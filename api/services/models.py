"""Reading the model registry."""

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.errors import Conflict, NotFound
from api.schemas.models import ModelCreate, ModelOut, ModelPage, VersionOut
from db.repositories import models
from db.repositories.models import ModelWithOwner
from db.tables import User


def to_out(row: ModelWithOwner) -> ModelOut:
    latest = row.latest_version
    return ModelOut(
        owner=row.owner,
        name=row.model.name,
        description=row.model.description,
        latest_version=VersionOut.model_validate(latest) if latest else None,
    )


def list_models(session: Session) -> ModelPage:
    return ModelPage(
        next=None, previous=None, results=[to_out(row) for row in models.list(session)]
    )


def get_model(session: Session, owner: str, name: str) -> ModelOut:
    row = models.get(session, owner=owner, name=name)
    if row is None:
        raise NotFound(f"No model {owner}/{name}")
    return to_out(row)


def create_model(session: Session, owner: User, body: ModelCreate) -> ModelOut:
    """A model owned by the caller, with no versions yet."""
    ref = f"{owner.username}/{body.name}"
    if models.get(session, owner=owner.username, name=body.name) is not None:
        raise Conflict(f"Model {ref} exists already")
    try:
        with session.begin_nested():
            model = models.create(
                session, owner_id=owner.id, name=body.name, description=body.description
            )
    except IntegrityError:  # created concurrently
        raise Conflict(f"Model {ref} exists already") from None
    return to_out(ModelWithOwner(model, owner.username, None))
