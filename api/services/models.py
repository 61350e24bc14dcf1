"""The model registry: models and their immutable versions."""

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.errors import Conflict, Forbidden, NotFound
from api.schemas.models import (
    ModelCreate,
    ModelOut,
    ModelPage,
    ModelUpdate,
    VersionCreate,
    VersionOut,
    VersionPage,
)
from db.ids import is_id
from db.repositories import cache_notices, models
from db.repositories.models import ModelWithOwner
from db.seed import SYSTEM_USER
from db.tables import ModelVersion, User

LINKS = ("github_url", "paper_url", "license_url", "cover_image_url")


def to_out(row: ModelWithOwner, base_url: str, run_count: int) -> ModelOut:
    """Replicate's model object; `url` is the model in this API (Quern has no web pages)."""
    latest, model = row.latest_version, row.model
    return ModelOut(
        url=f"{base_url}/v1/models/{row.ref}",
        owner=row.owner,
        name=model.name,
        description=model.description,
        **{link: getattr(model, link) for link in LINKS},
        run_count=run_count,
        is_official=row.owner == SYSTEM_USER,
        latest_version=VersionOut.model_validate(latest) if latest else None,
    )


def _with_run_counts(session: Session, rows: list[ModelWithOwner], base_url: str) -> list[ModelOut]:
    counts = models.run_counts(session, model_ids=[row.model.id for row in rows])
    return [to_out(row, base_url, counts.get(row.model.id, 0)) for row in rows]


def list_models(session: Session, base_url: str) -> ModelPage:
    rows = models.list(session)
    return ModelPage(next=None, previous=None, results=_with_run_counts(session, rows, base_url))


def _find(session: Session, owner: str, name: str) -> ModelWithOwner:
    row = models.get(session, owner=owner, name=name)
    if row is None:
        raise NotFound(f"No model {owner}/{name}")
    return row


def get_model(session: Session, owner: str, name: str, base_url: str) -> ModelOut:
    return _with_run_counts(session, [_find(session, owner, name)], base_url)[0]


def create_model(session: Session, owner: User, body: ModelCreate, base_url: str) -> ModelOut:
    """A model owned by the caller, with no versions yet. `visibility` is public (the schema
    refuses private) and `hardware` is set per version, so neither is stored."""
    if body.owner is not None and body.owner != owner.username:
        raise Forbidden(f"You can create models as {owner.username} only, not {body.owner}")
    ref = f"{owner.username}/{body.name}"
    if models.get(session, owner=owner.username, name=body.name) is not None:
        raise Conflict(f"Model {ref} exists already")
    try:
        with session.begin_nested():
            model = models.create(
                session,
                owner_id=owner.id,
                name=body.name,
                description=body.description,
                **body.model_dump(include=set(LINKS)),
            )
    except IntegrityError:  # created concurrently
        raise Conflict(f"Model {ref} exists already") from None
    return to_out(ModelWithOwner(model, owner.username, None), base_url, run_count=0)


def _owned(session: Session, owner: str, name: str, *, by: User, any_model: bool) -> ModelWithOwner:
    """The model, if `by` may change it: its owner (or any admin when `any_model`,
    QUERN_ADMINS_PUBLISH_ANY_MODEL). Anyone else is 403: models are public, so saying it
    exists tells nothing."""
    row = _find(session, owner, name)
    if row.model.owner_id != by.id and not any_model:
        raise Forbidden(f"Only {owner} may change {owner}/{name} and its versions")
    return row


def update_model(
    session: Session,
    owner: str,
    name: str,
    body: ModelUpdate,
    base_url: str,
    *,
    by: User,
    any_model: bool,
) -> ModelOut:
    """Only the fields the body gives change; a null link clears it, as does a null
    description. `visibility` is public (the schema refuses private), so it is not stored."""
    row = _owned(session, owner, name, by=by, any_model=any_model)
    changes = body.model_dump(include=body.model_fields_set & {"description", *LINKS})
    if "description" in changes and changes["description"] is None:
        changes["description"] = ""
    models.update(session, row.model, **changes)
    return get_model(session, owner, name, base_url)


def delete_model(session: Session, owner: str, name: str, *, by: User, any_model: bool) -> None:
    """Only a model without versions: 409 otherwise (delete them first, each unused)."""
    row = _owned(session, owner, name, by=by, any_model=any_model)
    # Counted under the row lock: no version is added between the count and the delete.
    models.lock(session, model_id=row.model.id)
    versions = models.count_versions(session, model_id=row.model.id)
    if versions:
        raise Conflict(
            f"{owner}/{name} has {versions} version{'s' if versions > 1 else ''}: delete "
            f"{'them' if versions > 1 else 'it'} first (DELETE /v1/models/{owner}/{name}/"
            "versions/{id}), then the model"
        )
    models.delete_model(session, model_id=row.model.id)
    # API processes drop their cached `owner/name` → version once this commits.
    cache_notices.announce(session, what=cache_notices.VERSIONS)


def delete_version(
    session: Session, owner: str, name: str, version_id: str, *, by: User, any_model: bool
) -> None:
    """Only a version no prediction uses: 409 otherwise. If it was the latest, the one
    before it becomes the model's latest (or it has none)."""
    row = _owned(session, owner, name, by=by, any_model=any_model)
    version = _find_version(session, row, version_id)
    refused = (
        f"Version {version.id} of {owner}/{name} has predictions, which keep it: only a "
        "version no prediction uses can be deleted"
    )
    if models.is_used(session, version_id=version.id):
        raise Conflict(refused)
    try:
        with session.begin_nested():
            models.delete_version(session, version_id=version.id)
    except IntegrityError:  # a prediction of it was created meanwhile
        raise Conflict(refused) from None
    # API processes drop the cached version and `owner/name` → latest once this commits.
    cache_notices.announce(session, what=cache_notices.VERSIONS)


def create_version(
    session: Session, owner: str, name: str, body: VersionCreate, *, by: User, any_model: bool
) -> VersionOut:
    """The model's new latest version, published by its owner (or by any admin when
    `any_model`). Workers read it by id when its first prediction arrives, so it is served
    without restarting them."""
    # The new version becomes the latest for everyone who runs `owner/name`.
    row = _owned(session, owner, name, by=by, any_model=any_model)
    version = models.create_version(session, model_id=row.model.id, **body.stored())
    # API processes drop their cached `owner/name` → latest version once this commits.
    cache_notices.announce(session, what=cache_notices.VERSIONS)
    return VersionOut.model_validate(version)


def list_versions(session: Session, owner: str, name: str) -> VersionPage:
    row = _find(session, owner, name)
    versions = models.list_versions(session, model_id=row.model.id)
    return VersionPage(
        next=None, previous=None, results=[VersionOut.model_validate(v) for v in versions]
    )


def _find_version(session: Session, row: ModelWithOwner, version_id: str) -> ModelVersion:
    version = session.get(ModelVersion, version_id) if is_id(version_id) else None
    if version is None or version.model_id != row.model.id:
        raise NotFound(f"No version {version_id} of {row.ref}")
    return version


def get_version(session: Session, owner: str, name: str, version_id: str) -> VersionOut:
    return VersionOut.model_validate(
        _find_version(session, _find(session, owner, name), version_id)
    )
