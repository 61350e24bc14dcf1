"""Predictions. Every state change is a conditional UPDATE that reports whether it happened,
so a redelivered task or a late writer is a no-op instead of a regression."""

import builtins
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select, tuple_, update
from sqlalchemy.orm import Session

from db.tables import Model, ModelVersion, Prediction, PredictionStatus, User

UNFINISHED = (PredictionStatus.STARTING, PredictionStatus.PROCESSING)
# Every committed status change is announced here as "<id> <status>" (migration 0002).
STATUS_CHANNEL = "quern_prediction_status"


@dataclass(frozen=True)
class PredictionWithModel:
    prediction: Prediction
    model: str  # owner/name


@dataclass(frozen=True)
class Cursor:
    """A position in the newest-first order: (created_at, id) of a row."""

    created_at: datetime
    id: str


def _with_model() -> Select[Prediction, str, str]:
    return (
        select(Prediction, User.username, Model.name)
        .join(ModelVersion, Prediction.version_id == ModelVersion.id)
        .join(Model, ModelVersion.model_id == Model.id)
        .join(User, Model.owner_id == User.id)
    )


def create(
    session: Session, *, owner_id: str, version_id: str, input: dict[str, Any]
) -> Prediction:
    prediction = Prediction(owner_id=owner_id, version_id=version_id, input=input)
    session.add(prediction)
    session.flush()  # eager defaults: created_at comes back from the server in the INSERT
    return prediction


def get(session: Session, *, id: str, owner_id: str | None = None) -> PredictionWithModel | None:
    """Owner-scoped when owner_id is given: another user's prediction does not exist."""
    query = _with_model().where(Prediction.id == id)
    if owner_id is not None:
        query = query.where(Prediction.owner_id == owner_id)
    row = session.execute(query).one_or_none()
    return None if row is None else PredictionWithModel(row[0], f"{row[1]}/{row[2]}")


def list(
    session: Session,
    *,
    owner_id: str,
    limit: int,
    after: Cursor | None = None,
    before: Cursor | None = None,
) -> builtins.list[PredictionWithModel]:
    """Newest first. `after`: rows older than the cursor; `before`: rows newer than it."""
    key = tuple_(Prediction.created_at, Prediction.id)
    query = _with_model().where(Prediction.owner_id == owner_id)
    if before is not None:
        query = query.where(key > tuple_(before.created_at, before.id)).order_by(
            Prediction.created_at.asc(), Prediction.id.asc()
        )
    else:
        if after is not None:
            query = query.where(key < tuple_(after.created_at, after.id))
        query = query.order_by(Prediction.created_at.desc(), Prediction.id.desc())
    rows = [
        PredictionWithModel(p, f"{owner}/{name}")
        for p, owner, name in session.execute(query.limit(limit))
    ]
    return rows[::-1] if before is not None else rows


@dataclass(frozen=True)
class Claim:
    """A prediction a worker has just moved to `processing` and must now run."""

    id: str
    input: dict[str, Any]
    attempts: int


def claim(session: Session, *, ids: builtins.list[str]) -> builtins.list[Claim]:
    """Move those of `ids` still `starting` to `processing`, in one statement.

    The rest (canceled, finished, or claimed by another delivery) are left out.
    """
    rows = session.execute(
        update(Prediction)
        .where(Prediction.id.in_(ids), Prediction.status == PredictionStatus.STARTING)
        .values(
            status=PredictionStatus.PROCESSING,
            started_at=func.now(),
            attempts=Prediction.attempts + 1,
        )
        .returning(Prediction.id, Prediction.input, Prediction.attempts)
    )
    return [Claim(id=row.id, input=row.input, attempts=row.attempts) for row in rows]


def update_status(
    session: Session,
    *,
    id: str,
    from_statuses: tuple[PredictionStatus, ...],
    status: PredictionStatus,
    owner_id: str | None = None,
    **values: Any,
) -> bool:
    """Set `status` (and `values`) only if the row is still in one of `from_statuses`.

    Terminal statuses also stamp `completed_at`. Returns whether the row changed.
    """
    query = update(Prediction).where(Prediction.id == id, Prediction.status.in_(from_statuses))
    if owner_id is not None:
        query = query.where(Prediction.owner_id == owner_id)
    if status.is_terminal:
        values.setdefault("completed_at", func.now())
    result = session.execute(query.values(status=status, **values))
    return bool(result.rowcount)  # type: ignore[attr-defined]
