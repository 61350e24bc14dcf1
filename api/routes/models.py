"""The model registry: anyone signed in reads it, administrators add to it."""

from typing import Annotated

from fastapi import APIRouter, Path, Response

from api.deps import AdminUser, BaseUrl, CurrentUser, ListenerDep, SettingsDep, TransactionDep
from api.errors import PROBLEMS
from api.schemas.models import (
    MODEL_NAME_PATTERN,
    ModelCreate,
    ModelOut,
    ModelPage,
    ModelUpdate,
    VersionCreate,
    VersionOut,
    VersionPage,
)
from api.services import models

router = APIRouter(prefix="/v1/models", tags=["models"], responses=PROBLEMS)

Owner = Annotated[str, Path(max_length=39)]
Name = Annotated[str, Path(pattern=MODEL_NAME_PATTERN)]


@router.get("", response_model=ModelPage)
def list_models(base_url: BaseUrl, tx: TransactionDep, user: CurrentUser) -> ModelPage:
    """Every model with its latest version and input schema."""
    return models.list_models(tx.session, base_url)


@router.post("", status_code=201, response_model=ModelOut)
def create_model(
    body: ModelCreate, base_url: BaseUrl, tx: TransactionDep, admin: AdminUser
) -> ModelOut:
    """Register a model as `<you>/<name>` (administrators only); add versions to it next."""
    return models.create_model(tx.session, admin, body, base_url)


@router.get("/{owner}/{name}", response_model=ModelOut)
def get_model(
    owner: Owner, name: Name, base_url: BaseUrl, tx: TransactionDep, user: CurrentUser
) -> ModelOut:
    """One model with its latest version."""
    return models.get_model(tx.session, owner, name, base_url)


@router.patch("/{owner}/{name}", response_model=ModelOut)
def update_model(
    owner: Owner,
    name: Name,
    body: ModelUpdate,
    base_url: BaseUrl,
    tx: TransactionDep,
    admin: AdminUser,
    settings: SettingsDep,
) -> ModelOut:
    """Change the model's description and links (its owner; any admin with
    `QUERN_ADMINS_PUBLISH_ANY_MODEL=true`): only the fields given change."""
    return models.update_model(
        tx.session,
        owner,
        name,
        body,
        base_url,
        by=admin,
        any_model=settings.admins_publish_any_model,
    )


@router.delete("/{owner}/{name}", status_code=204, response_class=Response)
def delete_model(
    owner: Owner,
    name: Name,
    tx: TransactionDep,
    admin: AdminUser,
    settings: SettingsDep,
    listener: ListenerDep,
) -> Response:
    """Delete a model that has no versions (its owner; any admin with
    `QUERN_ADMINS_PUBLISH_ANY_MODEL=true`). One with versions is 409: delete them first."""
    any_model = settings.admins_publish_any_model
    models.delete_model(tx.session, owner, name, by=admin, any_model=any_model)
    # Other processes hear the announcement; this one forgets before it answers.
    tx.after_commit.append(listener.versions.clear)
    return Response(status_code=204)


@router.post("/{owner}/{name}/versions", status_code=201, response_model=VersionOut)
def create_version(
    owner: Owner,
    name: Name,
    body: VersionCreate,
    tx: TransactionDep,
    admin: AdminUser,
    settings: SettingsDep,
) -> VersionOut:
    """Add a version (administrators, to their own models). It becomes the model's latest at
    once, and workers serve it without a restart. Versions are immutable: change something, add
    a version."""
    return models.create_version(
        tx.session, owner, name, body, by=admin, any_model=settings.admins_publish_any_model
    )


@router.get("/{owner}/{name}/versions", response_model=VersionPage)
def list_versions(owner: Owner, name: Name, tx: TransactionDep, user: CurrentUser) -> VersionPage:
    """Every version of the model, newest first."""
    return models.list_versions(tx.session, owner, name)


@router.get("/{owner}/{name}/versions/{version_id}", response_model=VersionOut)
def get_version(
    owner: Owner, name: Name, version_id: str, tx: TransactionDep, user: CurrentUser
) -> VersionOut:
    """One version of the model."""
    return models.get_version(tx.session, owner, name, version_id)


@router.delete("/{owner}/{name}/versions/{version_id}", status_code=204, response_class=Response)
def delete_version(
    owner: Owner,
    name: Name,
    version_id: str,
    tx: TransactionDep,
    admin: AdminUser,
    settings: SettingsDep,
    listener: ListenerDep,
) -> Response:
    """Delete a version no prediction uses (the model's owner; any admin with
    `QUERN_ADMINS_PUBLISH_ANY_MODEL=true`); one that has predictions is 409. If it was the
    latest, the version before it becomes the latest."""
    any_model = settings.admins_publish_any_model
    models.delete_version(tx.session, owner, name, version_id, by=admin, any_model=any_model)
    tx.after_commit.append(listener.versions.clear)
    return Response(status_code=204)
