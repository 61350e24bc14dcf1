"""Reading the model registry."""

from sqlalchemy.orm import Session

from api.schemas.models import ModelOut, ModelPage, VersionOut
from db.repositories import models
from db.repositories.models import ModelWithOwner


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
