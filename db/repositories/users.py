"""Users: create and look up accounts."""

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.tables import Role, User


def get(session: Session, *, id: str) -> User | None:
    return session.get(User, id)


def get_by_username(session: Session, *, username: str) -> User | None:
    return session.scalars(select(User).where(User.username == username)).one_or_none()


def create(
    session: Session, *, username: str, password_hash: str | None, role: Role = Role.USER
) -> User:
    user = User(username=username, password_hash=password_hash, role=role)
    session.add(user)
    session.flush()
    return user


def set_role(session: Session, *, username: str, role: Role) -> bool:
    """False when there is no such user."""
    user = get_by_username(session, username=username)
    if user is not None:
        user.role = role
    return user is not None
