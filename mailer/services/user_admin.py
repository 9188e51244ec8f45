"""Managing console users: roles, deactivation, password resets and changes.

Passwords, hashing and lockout are services.users'; this module adds the rules an admin
works under: nobody locks themselves out, and the last active admin stays an admin.
"""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from mailer.errors import Conflict, NotFound, ValidationError
from mailer.models import Role, User
from mailer.services import users


def list_users(session: Session, offset: int = 0, limit: int = 50) -> tuple[list[User], int]:
    """(users, total): admins first, then by address."""
    total = users.count(session)
    order = (User.active.desc(), (User.role == Role.ADMIN).desc(), User.email)
    rows = session.scalars(select(User).order_by(*order).offset(offset).limit(limit))
    return list(rows), total


def get_user(session: Session, user_id: int) -> User:
    """The user with this id, or NotFound."""
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"There is no user {user_id}.")
    return user


def _other_active_admins(user_id: int):
    return (
        select(func.count()).select_from(User)
        .where(User.role == Role.ADMIN, User.active.is_(True), User.id != user_id)
        .scalar_subquery()
    )


def set_role(session: Session, user_id: int, role: Role) -> User:
    """Change a user's role; the last active admin cannot stop being one."""
    user = get_user(session, user_id)
    if role != Role.ADMIN:
        # One conditional UPDATE: the check and the change cannot be separated by another's.
        done = session.execute(
            update(User)
            .where(User.id == user_id,
                   (User.role != Role.ADMIN) | (User.active.is_(False))
                   | (_other_active_admins(user_id) > 0))
            .values(role=role)
            .execution_options(synchronize_session=False)
        ).rowcount
        if not done:
            raise Conflict("This is the last active admin: make someone else an admin first.")
    else:
        user.role = role
    session.flush()
    session.refresh(user)
    return user


def set_active(session: Session, actor: User, user_id: int, active: bool) -> User:
    """Deactivate (their sessions and API tokens stop working at once) or reactivate a user."""
    user = get_user(session, user_id)
    if not active:
        if user.id == actor.id:
            raise Conflict("You cannot deactivate your own account.")
        done = session.execute(
            update(User)
            .where(User.id == user_id,
                   (User.role != Role.ADMIN) | (_other_active_admins(user_id) > 0))
            .values(active=False)
            .execution_options(synchronize_session=False)
        ).rowcount
        if not done:
            raise Conflict("This is the last active admin: make someone else an admin first.")
    else:
        user.active = True
        user.failed_logins, user.locked_until = 0, None
    session.flush()
    session.refresh(user)
    return user


def reset_password(session: Session, user_id: int, password: str, repeat: str) -> User:
    """An admin sets a new password for someone; every session of theirs ends."""
    if password != repeat:
        raise ValidationError("password2", "The two passwords differ.")
    user = get_user(session, user_id)
    users.set_password(session, user, password)
    user.failed_logins, user.locked_until = 0, None
    session.flush()
    return user


def change_own_password(session: Session, user: User, current: str, new: str, repeat: str) -> None:
    """Change your own password after proving the current one; your other sessions end."""
    try:
        users.authenticate(session, user.email, current)
    except users.LoginFailed as e:
        raise ValidationError("current", f"The current password is not right. {e}"
                              if getattr(e, "locked", False) else
                              "The current password is not right.") from None
    if new != repeat:
        raise ValidationError("password2", "The two new passwords differ.")
    users.set_password(session, user, new)
    session.flush()
