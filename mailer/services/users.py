"""Console users: argon2 passwords, lockout after repeated failures, API tokens, and the
rules an admin manages users under: nobody locks themselves out, and the last active admin
stays an admin."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from mailer.clock import utcnow
from mailer.errors import Conflict, NotFound, ValidationError
from mailer.models import ApiToken, Role, User
from mailer.services.subscriptions import normalize_email

MAX_FAILURES = 5
LOCKOUT = timedelta(minutes=15)
MIN_PASSWORD = 10

_hasher = PasswordHasher()
# Verifying against this when the user does not exist keeps the timing of "no such user"
# and "wrong password" alike.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(8))


class LoginFailed(Exception):
    def __init__(self, message: str, locked: bool = False):
        super().__init__(message)
        self.locked = locked


def parse_role(raw: str) -> Role:
    try:
        return Role(raw)
    except ValueError:
        raise ValidationError("role", "Role must be editor, ops or admin.") from None


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise ValidationError("password", f"The password needs at least {MIN_PASSWORD} characters.")
    return password


def count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(User)) or 0


def create_user(session: Session, email: str, password: str, role: Role) -> User:
    email = normalize_email(email)
    if session.scalar(select(User).where(User.email == email)) is not None:
        raise Conflict(f"A user with the address {email} exists already.")
    user = User(email=email, password_hash=_hasher.hash(check_password(password)), role=role)
    session.add(user)
    session.flush()
    return user


def set_password(session: Session, user: User, password: str) -> None:
    user.password_hash = _hasher.hash(check_password(password))
    # Every session opened with the old password stops working.
    user.session_version += 1


def authenticate(session: Session, email: str, password: str, now=None) -> User:
    now = now or utcnow()
    try:
        email = normalize_email(email)
    except ValidationError:
        raise LoginFailed("Wrong address or password.") from None
    user = session.scalar(select(User).where(User.email == email))
    if user is None or not user.active:
        try:
            _hasher.verify(_DUMMY_HASH, password)
        except VerificationError:
            pass
        raise LoginFailed("Wrong address or password.")
    if user.locked_until and user.locked_until > now:
        raise LoginFailed("Too many failed attempts. Try again in a few minutes.", locked=True)
    try:
        _hasher.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        user.failed_logins += 1
        if user.failed_logins >= MAX_FAILURES:
            user.locked_until = now + LOCKOUT
            user.failed_logins = 0
            raise LoginFailed(
                "Too many failed attempts. Try again in a few minutes.", locked=True
            ) from None
        raise LoginFailed("Wrong address or password.") from None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    user.failed_logins = 0
    user.locked_until = None
    user.last_login_at = now
    return user


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_api_token(session: Session, user: User, name: str) -> str:
    """Returns the token once; only its hash is kept."""
    token = "mlr_" + secrets.token_urlsafe(32)
    session.add(ApiToken(user_id=user.id, name=name[:100], token_hash=_token_hash(token)))
    session.flush()
    return token


def user_for_token(session: Session, token: str) -> User | None:
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == _token_hash(token)))
    if row is None:
        return None
    user = session.get(User, row.user_id)
    if user is None or not user.active:
        return None
    row.last_used_at = utcnow()
    return user


# --- managing users (the console's Users page) ------------------------------------------


def list_users(session: Session, offset: int = 0, limit: int = 50) -> tuple[list[User], int]:
    """(users, total): admins first, then by address."""
    total = count(session)
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
    set_password(session, user, password)
    user.failed_logins, user.locked_until = 0, None
    session.flush()
    return user


def change_own_password(session: Session, user: User, current: str, new: str, repeat: str) -> None:
    """Change your own password after proving the current one; your other sessions end."""
    try:
        authenticate(session, user.email, current)
    except LoginFailed as e:
        raise ValidationError("current", f"The current password is not right. {e}"
                              if e.locked else
                              "The current password is not right.") from None
    if new != repeat:
        raise ValidationError("password2", "The two new passwords differ.")
    set_password(session, user, new)
    session.flush()
