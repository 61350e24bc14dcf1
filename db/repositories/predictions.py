"""Predictions. Every state change is a conditional UPDATE that reports whether it happened,
so a redelivered task or a late writer is a no-op instead of a regression."""

import builtins
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, func, or_, select, text, tuple_, update
from sqlalchemy.orm import Session

from db.tables import Model, ModelVersion, Prediction, PredictionStatus, User

UNFINISHED = (PredictionStatus.STARTING, PredictionStatus.PROCESSING)
# Every committed terminal status is announced here as "<id> <status>" (migrations 0002, 0013).
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


@dataclass(frozen=True)
class Filters:
    """What a list is narrowed to; each one given is combined with the others (AND)."""

    created_after: datetime | None = None  # at or after
    created_before: datetime | None = None  # strictly before
    status: str | None = None
    model: tuple[str, str] | None = None  # (owner, name)
    version_id: str | None = None
    source: str | None = None


def _with_model() -> Select[Prediction, str, str]:
    return (
        select(Prediction, User.username, Model.name)
        .join(ModelVersion, Prediction.version_id == ModelVersion.id)
        .join(Model, ModelVersion.model_id == Model.id)
        .join(User, Model.owner_id == User.id)
    )


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
    owner_id: str | None,
    limit: int,
    after: Cursor | None = None,
    before: Cursor | None = None,
    filters: Filters | None = None,
) -> builtins.list[PredictionWithModel]:
    """Newest first; everyone's when owner_id is None. `after`: rows older than the cursor;
    `before`: rows newer than it. One statement: the filters narrow the range scan of
    (owner_id, created_at, id) and the joins it already makes for `model`."""
    key = tuple_(Prediction.created_at, Prediction.id)
    query = _with_model()
    filters = filters or Filters()
    if owner_id is not None:
        query = query.where(Prediction.owner_id == owner_id)
    if filters.created_after is not None:
        query = query.where(Prediction.created_at >= filters.created_after)
    if filters.created_before is not None:
        query = query.where(Prediction.created_at < filters.created_before)
    if filters.status is not None:
        query = query.where(Prediction.status == filters.status)
    if filters.version_id is not None:
        query = query.where(Prediction.version_id == filters.version_id)
    if filters.source is not None:
        query = query.where(Prediction.source == filters.source)
    if filters.model is not None:
        owner, name = filters.model
        query = query.where(User.username == owner, Model.name == name)
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
    attempts: int  # this attempt's number: only its owner may record the outcome
    deadline: datetime | None
    owner_id: str  # who the prediction's files belong to
    webhook_events: frozenset[str] = frozenset()  # the events its webhook wants, if it has one


def seconds(value: float | ColumnElement[float]) -> ColumnElement[Any]:
    """An SQL interval of `value` seconds."""
    return func.make_interval(0, 0, 0, 0, 0, 0, value)


def create(
    session: Session,
    *,
    owner_id: str,
    version_id: str,
    input: dict[str, Any],
    deadline: datetime | None = None,
    webhook: str | None = None,
    webhook_events_filter: builtins.list[str] | None = None,
) -> Prediction:
    """A `starting` prediction, marked as enqueued: the caller publishes it after commit."""
    prediction = Prediction(
        owner_id=owner_id,
        version_id=version_id,
        input=input,
        deadline=deadline,
        enqueued_at=func.now(),
        webhook=webhook,
        webhook_events_filter=webhook_events_filter,
    )
    session.add(prediction)
    session.flush()  # eager defaults: created_at comes back from the server in the INSERT
    return prediction


@dataclass(frozen=True)
class Backlog:
    queued_for_version: int  # `starting` predictions of the version
    unfinished_for_owner: int  # the user's predictions in flight


def backlog(
    session: Session, *, version_id: str, owner_id: str, version_limit: int, owner_limit: int
) -> Backlog:
    """Both counts in one round trip, each counted only up to its limit (cheap at any depth)."""

    def counted(*where: ColumnElement[bool], limit: int) -> Any:
        rows = select(Prediction.id).where(*where).limit(limit).subquery()
        return select(func.count()).select_from(rows).scalar_subquery()

    queued = counted(
        Prediction.version_id == version_id,
        Prediction.status == PredictionStatus.STARTING,
        limit=version_limit,
    )
    in_flight = counted(
        Prediction.owner_id == owner_id, Prediction.status.in_(UNFINISHED), limit=owner_limit
    )
    row = session.execute(select(queued, in_flight)).one()
    return Backlog(row[0], row[1])


def queued_by_model(session: Session) -> builtins.list[tuple[str, int]]:
    """(owner/name, queued predictions) for every model with any queued."""
    rows = session.execute(
        select(User.username, Model.name, func.count())
        .select_from(Prediction)
        .join(ModelVersion, Prediction.version_id == ModelVersion.id)
        .join(Model, ModelVersion.model_id == Model.id)
        .join(User, Model.owner_id == User.id)
        .where(Prediction.status == PredictionStatus.STARTING)
        .group_by(User.username, Model.name)
    )
    return [(f"{owner}/{name}", count) for owner, name, count in rows]


def mark_not_enqueued(session: Session, *, ids: builtins.list[str]) -> None:
    """Publishing failed (Redis down): the sweeper will send these once it can."""
    session.execute(
        update(Prediction)
        .where(Prediction.id.in_(ids), Prediction.status == PredictionStatus.STARTING)
        .values(enqueued_at=None)
    )


def claim(session: Session, *, ids: builtins.list[str], lease_s: float) -> builtins.list[Claim]:
    """Move those of `ids` that may start now to `processing`, under a lease of `lease_s`.

    Those past their deadline become `aborted` (in the same statement). The rest (canceled,
    finished, waiting out a retry delay, or claimed by another delivery) are left as they are.
    Claims come back in the order of `ids` (arrival order), whatever order PostgreSQL returns
    the rows in.
    """
    rows = session.execute(_CLAIM, {"ids": ids, "lease_s": lease_s, "expired": _EXPIRED})
    position = {id: index for index, id in enumerate(dict.fromkeys(ids))}
    claims = [
        Claim(id, input, attempts, deadline, owner_id, frozenset(webhook_events or ()))
        for id, input, attempts, deadline, owner_id, webhook_events in rows
    ]
    return sorted(claims, key=lambda claim: position[claim.id])


# Plain SQL on the worker's hot path: built once, no per-call statement construction.
_EXPIRED = "The deadline passed before the prediction started"
_CLAIM = text("""
    WITH aborted AS (
        UPDATE predictions SET status = 'aborted', completed_at = now(), error = :expired
        WHERE id = ANY(CAST(:ids AS text[])) AND status = 'starting' AND deadline <= now()
    )
    UPDATE predictions
    SET status = 'processing', started_at = now(), attempts = attempts + 1,
        lease_expires_at = now() + make_interval(secs => :lease_s)
    WHERE id = ANY(CAST(:ids AS text[])) AND status = 'starting'
        AND (deadline IS NULL OR deadline > now())
        AND (next_attempt_at IS NULL OR next_attempt_at <= now())
    RETURNING id, input, attempts, deadline, owner_id,
        CASE WHEN webhook IS NOT NULL THEN webhook_events_filter END
""")


def renew_leases(session: Session, *, claims: builtins.list[Claim], lease_s: float) -> set[str]:
    """Extend the leases of these attempts (and only these: a taken-over one is left alone).
    Returns the ids whose row is still on this attempt (running, or canceled or recorded
    meanwhile): any other claim was taken over, and its worker must stop it."""
    ids, attempts = [c.id for c in claims], [c.attempts for c in claims]
    rows = session.execute(_RENEW, {"ids": ids, "attempts": attempts, "lease_s": lease_s})
    return {id for (id,) in rows}


_RENEW = text("""
    WITH mine AS (
        SELECT id, status FROM predictions
        WHERE (id, attempts) IN (
            SELECT * FROM unnest(CAST(:ids AS text[]), CAST(:attempts AS int[])))
            AND status <> 'starting'
    ), renewed AS (
        UPDATE predictions SET lease_expires_at = now() + make_interval(secs => :lease_s)
        WHERE id IN (SELECT id FROM mine WHERE status = 'processing')
    )
    SELECT id FROM mine
""")


def lease_held(session: Session, *, ids: builtins.list[str], lease_s: float) -> None:
    """Queued predictions a live worker has received but not started (they wait for a batch)
    get a lease, so the sweeper can tell them from ones whose worker died holding them."""
    session.execute(
        update(Prediction)
        .where(Prediction.id.in_(ids), Prediction.status == PredictionStatus.STARTING)
        .values(lease_expires_at=func.now() + seconds(lease_s))
    )


def forget_enqueued(session: Session) -> int:
    """Redis lost its messages: every queued prediction is to be published again. (For
    webhook deliveries, webhook_deliveries.forget_enqueued, which also takes an age.)"""
    result = session.execute(
        update(Prediction)
        .where(Prediction.status == PredictionStatus.STARTING, Prediction.enqueued_at.is_not(None))
        .values(enqueued_at=None)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def release_held_lost(session: Session) -> builtins.list[str]:
    """Queued predictions whose holder's lease ran out (it died before starting them): to be
    published again at once. No attempt was spent on them, so none is counted."""
    return builtins.list(
        session.execute(
            update(Prediction)
            .where(
                Prediction.status == PredictionStatus.STARTING,
                Prediction.lease_expires_at < func.now(),
            )
            .values(lease_expires_at=None, enqueued_at=None)
            .returning(Prediction.id)
        ).scalars()
    )


def release_orphans(
    session: Session, *, ids: builtins.list[str], older_than_s: float
) -> builtins.list[str]:
    """Of `ids` (from messages a worker took from the broker longer than `older_than_s` ago and
    never acknowledged), the queued ones no live worker holds (no lease) and no message was sent
    for since: to be published again at once. Returns them."""
    return builtins.list(
        session.execute(
            update(Prediction)
            .where(
                Prediction.id.in_(ids),
                Prediction.status == PredictionStatus.STARTING,
                Prediction.lease_expires_at.is_(None),
                Prediction.enqueued_at < func.now() - seconds(older_than_s),
            )
            .values(enqueued_at=None)
            .returning(Prediction.id)
        ).scalars()
    )


def held(session: Session, *, ids: builtins.list[str]) -> set[str]:
    """Those of `ids` a live worker holds (their lease has not run out)."""
    return set(
        session.scalars(
            select(Prediction.id).where(
                Prediction.id.in_(ids), Prediction.lease_expires_at >= func.now()
            )
        )
    )


def canceled_among(session: Session, *, ids: builtins.list[str]) -> set[str]:
    """Those of `ids` that are canceled."""
    return set(
        session.scalars(
            select(Prediction.id).where(
                Prediction.id.in_(ids), Prediction.status == PredictionStatus.CANCELED
            )
        )
    )


@dataclass(frozen=True)
class Fate:
    """What `record` writes for one attempt. `status` None: canceled while it ran, so only
    its logs are kept; `starting`: run it again once `retry_in_s` has passed."""

    id: str
    attempts: int
    status: str | None
    logs: str
    output: str | None = None  # JSON text
    error: str | None = None
    metrics: str | None = None  # JSON text
    retry_in_s: float = 0.0


def record(session: Session, *, fates: builtins.list[Fate]) -> dict[str, bool]:
    """Write every fate in one statement, each only while its attempt still owns the row
    (`processing`, same attempt number); a row canceled meanwhile keeps `canceled` and gets the
    logs. Returns {id: whether its fate was applied} for the rows written (not applied: canceled,
    logs only); a missing id belongs to another attempt now."""
    if not fates:
        return {}
    columns = {name: [getattr(fate, name) for fate in fates] for name in _FATE_COLUMNS}
    return {id: bool(applied) for id, applied in session.execute(_RECORD, columns)}


_FATE_COLUMNS = {
    "id": "text", "attempts": "int", "status": "text", "logs": "text", "output": "text",
    "error": "text", "metrics": "text", "retry_in_s": "float8",
}  # fmt: skip
# Applied: the attempt still owns the row. Otherwise (canceled meanwhile) only logs are added.
_APPLYING = "p.status = 'processing' AND v.status IS NOT NULL"
_RETRYING = f"{_APPLYING} AND v.status = 'starting'"
_RECORD = text(f"""
    UPDATE predictions AS p SET
        status = CASE WHEN {_APPLYING} THEN v.status ELSE p.status END,
        output = CASE WHEN {_APPLYING} THEN CAST(v.output AS jsonb) ELSE p.output END,
        error = CASE WHEN {_APPLYING} THEN v.error ELSE p.error END,
        metrics = CASE WHEN {_APPLYING}
            THEN coalesce(CAST(v.metrics AS jsonb), p.metrics) ELSE p.metrics END,
        logs = p.logs || v.logs,
        lease_expires_at = CASE WHEN {_APPLYING} THEN NULL ELSE p.lease_expires_at END,
        completed_at = CASE WHEN {_APPLYING} AND v.status <> 'starting'
            THEN now() ELSE p.completed_at END,
        next_attempt_at = CASE WHEN {_RETRYING}
            THEN now() + make_interval(secs => v.retry_in_s) ELSE p.next_attempt_at END,
        enqueued_at = CASE WHEN {_RETRYING} THEN NULL ELSE p.enqueued_at END
    FROM unnest({", ".join(f"CAST(:{name} AS {kind}[])" for name, kind in _FATE_COLUMNS.items())})
        AS v({", ".join(_FATE_COLUMNS)})
    WHERE p.id = v.id AND p.attempts = v.attempts AND p.status IN ('processing', 'canceled')
    RETURNING p.id, p.status = v.status AND p.error IS NOT DISTINCT FROM v.error
""")  # noqa: S608 (only constants are formatted in)


def requeue_lost(
    session: Session, *, max_attempts: int, base_s: float, cap_s: float
) -> builtins.list[str]:
    """`processing` rows whose lease ran out (their worker died): back to `starting` after a
    full-jitter backoff (the formula of common/backoff.py, computed here in SQL), or `failed` once
    they used up their attempts. Returns the ids. (For webhook deliveries,
    webhook_deliveries.requeue_lost.)"""
    lost = (
        Prediction.status == PredictionStatus.PROCESSING,
        Prediction.lease_expires_at < func.now(),
    )
    failed = session.execute(
        update(Prediction)
        .where(*lost, Prediction.attempts >= max_attempts)
        .values(
            status=PredictionStatus.FAILED,
            completed_at=func.now(),
            lease_expires_at=None,
            error=f"Gave up after {max_attempts} attempts: the worker running it was lost",
        )
        .returning(Prediction.id)
    ).scalars()
    # common/backoff.py's retry_delay (full jitter), in SQL: each row has its own attempts.
    ceiling = func.least(cap_s, base_s * func.power(2, Prediction.attempts - 1))
    requeued = session.execute(
        update(Prediction)
        .where(*lost)
        .values(
            status=PredictionStatus.STARTING,
            next_attempt_at=func.now() + seconds(func.random() * ceiling),
            enqueued_at=None,
            lease_expires_at=None,
            logs=Prediction.logs + "Attempt lost with its worker; retrying\n",
        )
        .returning(Prediction.id)
    ).scalars()
    return [*failed, *requeued]


def abort_expired(session: Session, *, ids: builtins.list[str] | None = None) -> builtins.list[str]:
    """Queued predictions (of `ids`, or all) whose deadline passed never start."""
    query = update(Prediction).where(
        Prediction.status == PredictionStatus.STARTING, Prediction.deadline <= func.now()
    )
    if ids is not None:
        query = query.where(Prediction.id.in_(ids))
    return builtins.list(
        session.execute(
            query.values(
                status=PredictionStatus.ABORTED,
                completed_at=func.now(),
                error="The deadline passed before the prediction started",
            ).returning(Prediction.id)
        ).scalars()
    )


@dataclass(frozen=True)
class Due:
    """A queued prediction to publish: where its message goes depends on the version."""

    id: str
    version_id: str
    hardware: str


def take_due(session: Session, *, requeue_after_s: float, limit: int) -> builtins.list[Due]:
    """Queued predictions that need a message now: none was sent (Redis was down, a retry is
    due) or the last one is so old it must be lost. Marks them enqueued; returns
    them to publish after commit. Safe with several sweepers (SKIP LOCKED)."""
    due = (
        select(Prediction.id)
        .where(
            Prediction.status == PredictionStatus.STARTING,
            or_(Prediction.next_attempt_at.is_(None), Prediction.next_attempt_at <= func.now()),
            or_(
                Prediction.enqueued_at.is_(None),
                Prediction.enqueued_at < func.now() - seconds(requeue_after_s),
            ),
        )
        .order_by(Prediction.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    marked = (
        update(Prediction)
        .where(Prediction.id.in_(due))
        .values(enqueued_at=func.now())
        .returning(Prediction.id, Prediction.version_id)
        .cte("marked")
    )
    rows = session.execute(
        select(marked.c.id, marked.c.version_id, ModelVersion.hardware).join(
            ModelVersion, ModelVersion.id == marked.c.version_id
        )
    )
    return [Due(row.id, row.version_id, row.hardware) for row in rows]


def update_status(
    session: Session,
    *,
    id: str,
    from_statuses: tuple[PredictionStatus, ...],
    status: PredictionStatus,
    owner_id: str | None = None,
    attempts: int | None = None,
    append_logs: str | None = None,
    **values: Any,
) -> bool:
    """Set `status` (and `values`) only if the row is still in one of `from_statuses` (and,
    given `attempts`, still on that attempt).

    Terminal statuses also stamp `completed_at` and drop the lease. Returns whether the row
    changed.
    """
    query = update(Prediction).where(Prediction.id == id, Prediction.status.in_(from_statuses))
    if owner_id is not None:
        query = query.where(Prediction.owner_id == owner_id)
    if attempts is not None:
        query = query.where(Prediction.attempts == attempts)
    if append_logs is not None:
        values["logs"] = Prediction.logs + append_logs
    if status.is_terminal:
        values.setdefault("completed_at", func.now())
        values.setdefault("lease_expires_at", None)
    result = session.execute(query.values(status=status, **values))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def lock_attempt(session: Session, *, claim: Claim) -> bool:
    """Whether `claim`'s attempt still runs its prediction; if so the row stays locked until
    commit, so a cancel cannot land between this check and the outcome's update."""
    locked = session.scalar(
        select(Prediction.id)
        .where(
            Prediction.id == claim.id,
            Prediction.status == PredictionStatus.PROCESSING,
            Prediction.attempts == claim.attempts,
        )
        .with_for_update()
    )
    return locked is not None
