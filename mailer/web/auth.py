"""Console sessions and role checks; API bearer tokens."""

from __future__ import annotations

from functools import wraps

from flask import abort, g, redirect, request, session, url_for

from mailer.db import db
from mailer.models import Role, User
from mailer.services import users

# What each role may do; admin includes everything.
ROLE_RANK = {Role.EDITOR: 1, Role.OPS: 1, Role.ADMIN: 2}


def login(user: User) -> None:
    session.clear()
    session["uid"] = user.id
    session["ver"] = user.session_version
    session.permanent = False


def logout() -> None:
    session.clear()


def current_user() -> User | None:
    if "user" in g:
        return g.user
    user = None
    uid = session.get("uid")
    if uid is not None:
        candidate = db.session.get(User, uid)
        # A password change bumps session_version, which voids older session cookies.
        if candidate and candidate.active and candidate.session_version == session.get("ver"):
            user = candidate
    g.user = user
    return user


def allowed(user: User, roles: tuple[Role, ...]) -> bool:
    return user.role == Role.ADMIN or user.role in roles


def login_required(*roles: Role):
    """Only for signed-in users; with roles, only for those roles (admin may do anything)."""

    def decorator(view):
        @wraps(view)
        def wrapped(*args, **kwargs):
            user = current_user()
            if user is None:
                return redirect(url_for("admin.login", next=request.full_path))
            if roles and not allowed(user, roles):
                abort(403)
            return view(*args, **kwargs)

        return wrapped

    return decorator


def bearer_user(*roles: Role) -> User:
    """The user behind an `Authorization: Bearer` token, or a 401/403."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        abort(401)
    user = users.user_for_token(db.session, token.strip())
    if user is None:
        abort(401)
    if roles and not allowed(user, roles):
        abort(403)
    return user
