"""Console users: argon2 passwords, lockout after repeated failures, API tokens."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailer.clock import utcnow
from mailer.errors import Conflict, ValidationError
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
