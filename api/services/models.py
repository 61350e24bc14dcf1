"""The model registry: models and their immutable versions."""

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.errors import Conflict, NotFound
from api.schemas.models import (
    ModelCreate,
    ModelOut,
    ModelPage,
    VersionCreate,
    VersionOut,
    VersionPage,
)
from db.ids import is_id
from db.repositories import cache_notices, models
from db.repositories.models import ModelWithOwner
from db.tables import ModelVersion, User


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


def _find(session: Session, owner: str, name: str) -> ModelWithOwner:
    row = models.get(session, owner=owner, name=name)
    if row is None:
        raise NotFound(f"No model {owner}/{name}")
    return row


def get_model(session: Session, owner: str, name: str) -> ModelOut:
    return to_out(_find(session, owner, name))


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


def create_version(session: Session, owner: str, name: str, body: VersionCreate) -> VersionOut:
    """The model's new latest version. Workers read it by id when its first prediction
    arrives, so it is served without restarting them."""
    row = _find(session, owner, name)
    version = models.create_version(session, model_id=row.model.id, **body.model_dump())
    # API processes drop their cached `owner/name` → latest version once this commits.
    cache_notices.announce(session, what=cache_notices.VERSIONS)
    return VersionOut.model_validate(version)


def list_versions(session: Session, owner: str, name: str) -> VersionPage:
    row = _find(session, owner, name)
    versions = models.list_versions(session, model_id=row.model.id)
    return VersionPage(
        next=None, previous=None, results=[VersionOut.model_validate(v) for v in versions]
    )


def get_version(session: Session, owner: str, name: str, version_id: str) -> VersionOut:
    row = _find(session, owner, name)
    version = session.get(ModelVersion, version_id) if is_id(version_id) else None
    if version is None or version.model_id != row.model.id:
        raise NotFound(f"No version {version_id} of {owner}/{name}")
    return VersionOut.model_validate(version)
