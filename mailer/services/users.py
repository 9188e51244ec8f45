"""Console users: argon2 passwords, login throttling, API tokens, and the rules an admin
manages users under: nobody locks themselves out, and the last active admin stays an admin.

Failed logins are counted per account AND client address together (`LoginThrottle`): after
FREE_FAILURES, that pair waits a delay that doubles with each further failure, up to
MAX_HOLD. Nobody can lock an editor out by knowing their address: the owner's right
password from any other address still works. A flood from many addresses against one
account (UNDER_ATTACK failures within FORGET) is slowed: every address then waits after its
first failure, and the delays still end."""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import secrets
from datetime import timedelta
from typing import NoReturn

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailer.clock import utcnow
from mailer.errors import Conflict, NotFound, ValidationError
from mailer.models import ApiToken, LoginThrottle, Role, User
from mailer.services.subscriptions import normalize_email

FREE_FAILURES = 3
FIRST_HOLD = timedelta(seconds=5)
MAX_HOLD = timedelta(minutes=15)
UNDER_ATTACK = 20
FORGET = timedelta(hours=24)
MIN_PASSWORD = 10

log = logging.getLogger(__name__)

_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verifying against this when the user does not exist keeps the timing of "no such
    user" and "wrong password" alike. Made at the first failed login of a process, not at
    import: a hash costs about 0.3 s of CPU, which every `mailer` command and every process
    that imports this module paid at its start."""
    return _hasher.hash(secrets.token_hex(8))


class LoginFailed(Exception):
    def __init__(self, message: str, locked: bool = False, retry_after: int = 0):
        super().__init__(message)
        self.locked = locked
        self.retry_after = retry_after


def _held_message(seconds: int) -> str:
    wait = f"{seconds} seconds" if seconds < 120 else f"{(seconds + 59) // 60} minutes"
    return f"Too many failed attempts from this address. Try again in {wait}."


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


def authenticate(session: Session, email: str, password: str, ip: str = "", now=None) -> User:
    """The user with this address and password; LoginFailed otherwise, or while this
    account and client address (`ip`) must wait after failed attempts."""
    now = now or utcnow()
    try:
        email = normalize_email(email)
    except ValidationError:
        raise LoginFailed("Wrong address or password.") from None
    throttle = session.get(LoginThrottle, (email, ip))
    if throttle is not None and throttle.held_until and throttle.held_until > now:
        wait = max(1, math.ceil((throttle.held_until - now).total_seconds()))
        raise LoginFailed(_held_message(wait), locked=True, retry_after=wait)
    user = session.scalar(select(User).where(User.email == email))
    if user is None or not user.active:
        try:
            _hasher.verify(_dummy_hash(), password)
        except VerificationError:
            pass
        _failed(session, email, ip, now)
    try:
        _hasher.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        _failed(session, email, ip, now)
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    if throttle is not None:
        session.delete(throttle)
    user.last_login_at = now
    return user


def _failed(session: Session, email: str, ip: str, now) -> NoReturn:
    """Count a failed attempt of this account from this address; hold the pair once it has
    failed too often, and say so in the log."""
    recent = now - FORGET
    session.execute(delete(LoginThrottle).where(LoginThrottle.last_failed_at < recent))
    row = session.get(LoginThrottle, (email, ip))
    if row is None:
        row = LoginThrottle(email=email, ip=ip, failures=0, last_failed_at=now)
        try:
            with session.begin_nested():
                session.add(row)
                session.flush()
        except IntegrityError:  # the same pair failed at the same moment elsewhere
            row = session.get(LoginThrottle, (email, ip))
    session.execute(
        update(LoginThrottle)
        .where(LoginThrottle.email == email, LoginThrottle.ip == ip)
        .values(failures=LoginThrottle.failures + 1, last_failed_at=now)
        .execution_options(synchronize_session=False)
    )
    session.refresh(row)
    account_failures = session.scalar(
        select(func.coalesce(func.sum(LoginThrottle.failures), 0))
        .where(LoginThrottle.email == email, LoginThrottle.last_failed_at >= now - MAX_HOLD)
    )
    free = 1 if account_failures >= UNDER_ATTACK else FREE_FAILURES
    if row.failures < free:
        raise LoginFailed("Wrong address or password.")
    hold = min(FIRST_HOLD * 2 ** min(row.failures - free, 20), MAX_HOLD)
    row.held_until = now + hold
    seconds = int(hold.total_seconds())
    log.warning(
        "console login for %s from %s held for %d s after %d failed attempts%s",
        email, ip or "-", seconds, row.failures,
        f" ({account_failures} for this account from all addresses)" if free == 1 else "",
    )
    raise LoginFailed(_held_message(seconds), locked=True, retry_after=seconds)


def unlock(session: Session, email: str) -> int:
    """Forget every failed login of this account (`mailer user unlock`); how many addresses
    were counted or held."""
    email = normalize_email(email)
    if session.scalar(select(User.id).where(User.email == email)) is None:
        raise NotFound(f"There is no user with the address {email}.")
    done = session.execute(delete(LoginThrottle).where(LoginThrottle.email == email)).rowcount
    session.execute(
        update(User).where(User.email == email).values(failed_logins=0, locked_until=None)
        .execution_options(synchronize_session=False)
    )
    return done


def user_by_email(session: Session, email: str) -> User:
    user = session.scalar(select(User).where(User.email == normalize_email(email)))
    if user is None:
        raise NotFound(f"There is no user with the address {email}.")
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
    session.execute(delete(LoginThrottle).where(LoginThrottle.email == user.email))
    session.flush()
    return user


def change_own_password(
    session: Session, user: User, current: str, new: str, repeat: str, ip: str = ""
) -> None:
    """Change your own password after proving the current one; your other sessions end."""
    try:
        authenticate(session, user.email, current, ip)
    except LoginFailed as e:
        raise ValidationError("current", f"The current password is not right. {e}"
                              if e.locked else
                              "The current password is not right.") from None
    if new != repeat:
        raise ValidationError("password2", "The two new passwords differ.")
    set_password(session, user, new)
    session.flush()
