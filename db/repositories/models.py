"""The model registry: models and their immutable versions."""

import builtins
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from db.tables import Model, ModelVersion, Prediction, User


@dataclass(frozen=True)
class ModelWithOwner:
    model: Model
    owner: str
    latest_version: ModelVersion | None

    @property
    def ref(self) -> str:
        return f"{self.owner}/{self.model.name}"


def get(session: Session, *, owner: str, name: str) -> ModelWithOwner | None:
    """A model by `owner/name`, with its latest version, in one query."""
    latest_id = (
        select(ModelVersion.id)
        .where(ModelVersion.model_id == Model.id)
        .order_by(ModelVersion.created_at.desc(), ModelVersion.id.desc())
        .limit(1)
        .correlate(Model)
        .scalar_subquery()
    )
    row = session.execute(
        select(Model, ModelVersion)
        .join(User, Model.owner_id == User.id)
        .outerjoin(ModelVersion, ModelVersion.id == latest_id)
        .where(User.username == owner, Model.name == name)
    ).one_or_none()
    return None if row is None else ModelWithOwner(row[0], owner, row[1])


def list(session: Session) -> builtins.list[ModelWithOwner]:
    rows = session.execute(
        select(Model, User.username)
        .join(User, Model.owner_id == User.id)
        .order_by(User.username, Model.name)
    ).all()
    latest = {
        version.model_id: version
        for version in session.scalars(
            select(ModelVersion)
            .distinct(ModelVersion.model_id)
            .order_by(ModelVersion.model_id, ModelVersion.created_at.desc(), ModelVersion.id.desc())
        )
    }
    return [ModelWithOwner(model, owner, latest.get(model.id)) for model, owner in rows]


def get_version(session: Session, *, id: str) -> tuple[ModelVersion, str] | None:
    """A version and its model's `owner/name`."""
    row = session.execute(
        select(ModelVersion, User.username, Model.name)
        .join(Model, ModelVersion.model_id == Model.id)
        .join(User, Model.owner_id == User.id)
        .where(ModelVersion.id == id)
    ).one_or_none()
    if row is None:
        return None
    version, owner, name = row
    return version, f"{owner}/{name}"


def list_versions(session: Session, *, model_id: str) -> builtins.list[ModelVersion]:
    """Newest first."""
    return builtins.list(
        session.scalars(
            select(ModelVersion)
            .where(ModelVersion.model_id == model_id)
            .order_by(ModelVersion.created_at.desc(), ModelVersion.id.desc())
        )
    )


def run_counts(session: Session, *, model_ids: builtins.list[str]) -> dict[str, int]:
    """Predictions per model, over all its versions; a model never run is absent."""
    rows = session.execute(
        select(ModelVersion.model_id, func.count(Prediction.id))
        .join(Prediction, Prediction.version_id == ModelVersion.id)
        .where(ModelVersion.model_id.in_(model_ids))
        .group_by(ModelVersion.model_id)
    ).all()
    return {model_id: count for model_id, count in rows}


def create(
    session: Session, *, owner_id: str, name: str, description: str = "", **links: str | None
) -> Model:
    """`links`: github_url, paper_url, license_url, cover_image_url."""
    model = Model(owner_id=owner_id, name=name, description=description, **links)
    session.add(model)
    session.flush()
    return model


def update(session: Session, model: Model, **fields: str | None) -> Model:
    """`fields`: description, github_url, paper_url, license_url, cover_image_url."""
    for field, value in fields.items():
        setattr(model, field, value)
    session.flush()
    return model


def lock(session: Session, *, model_id: str) -> None:
    """Hold the model's row until commit: a version being added to it (whose foreign key
    check shares the row) finishes first, and none can be added meanwhile."""
    session.execute(select(Model.id).where(Model.id == model_id).with_for_update())


def count_versions(session: Session, *, model_id: str) -> int:
    return (
        session.scalar(
            select(func.count()).select_from(ModelVersion).where(ModelVersion.model_id == model_id)
        )
        or 0
    )


def delete_model(session: Session, *, model_id: str) -> None:
    session.execute(delete(Model).where(Model.id == model_id))


def is_used(session: Session, *, version_id: str) -> bool:
    """Whether any prediction runs (or ran) the version."""
    used = select(Prediction.id).where(Prediction.version_id == version_id).exists()
    return bool(session.scalar(select(used)))


def delete_version(session: Session, *, version_id: str) -> None:
    """IntegrityError if a prediction uses it (the foreign key restricts), even one created
    after the caller counted them."""
    session.execute(delete(ModelVersion).where(ModelVersion.id == version_id))


def create_version(
    session: Session,
    *,
    model_id: str,
    model_type: str,
    weights: str,
    input_schema: dict[str, Any],
    hardware: str,
    max_batch_size: int,
    max_batch_wait_ms: int,
    run_timeout_s: int,
    predictor: str | None = None,
    cache_enabled: bool = False,
    cache_ttl_s: int = 86400,
    cache_shared: bool = False,
    batching: str = "static",
) -> ModelVersion:
    version = ModelVersion(
        predictor=predictor,
        model_id=model_id,
        model_type=model_type,
        weights=weights,
        input_schema=input_schema,
        hardware=hardware,
        max_batch_size=max_batch_size,
        max_batch_wait_ms=max_batch_wait_ms,
        run_timeout_s=run_timeout_s,
        cache_enabled=cache_enabled,
        cache_ttl_s=cache_ttl_s,
        cache_shared=cache_shared,
        batching=batching,
    )
    session.add(version)
    session.flush()
    return version


def copy_version(
    session: Session,
    base: ModelVersion,
    *,
    model_id: str,
    max_batch_size: int,
    max_batch_wait_ms: int,
    run_timeout_s: int | None = None,
    batching: str | None = None,
) -> ModelVersion:
    """A version of `model_id` that runs `base`'s weights with other batching limits (and no
    result cache)."""
    return create_version(
        session,
        model_id=model_id,
        model_type=base.model_type,
        predictor=base.predictor,
        weights=base.weights,
        input_schema=base.input_schema,
        hardware=base.hardware,
        max_batch_size=max_batch_size,
        max_batch_wait_ms=max_batch_wait_ms,
        run_timeout_s=run_timeout_s or base.run_timeout_s,
        batching=batching or base.batching,
    )
