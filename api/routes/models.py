"""The model registry: anyone signed in reads it, administrators add to it."""

from typing import Annotated

from fastapi import APIRouter, Path

from api.deps import AdminUser, BaseUrl, CurrentUser, SettingsDep, TransactionDep
from api.errors import PROBLEMS
from api.schemas.models import (
    MODEL_NAME_PATTERN,
    ModelCreate,
    ModelOut,
    ModelPage,
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
