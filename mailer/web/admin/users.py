"""Console users (admins only): add, change role, deactivate, reset a password; and your own
password, for everyone."""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for

from mailer.db import db
from mailer.errors import Conflict, MailerError, ValidationError
from mailer.models import Role
from mailer.services import users
from mailer.web import auth
from mailer.web.admin.console import page_count, paging
from mailer.web.extensions import client_ip

bp = Blueprint("admin_users", __name__, url_prefix="/admin")

PER_PAGE = 50
ROLES = [
    (Role.EDITOR, "Editor: composes and sends issues"),
    (Role.OPS, "Ops: schedules, subscribers, settings"),
    (Role.ADMIN, "Admin: everything, including users"),
]


def _list_page(form=None, error=None, status=200):
    page, offset = paging(PER_PAGE)
    rows, total = users.list_users(db.session, offset, PER_PAGE)
    return render_template(
        "admin/users.html", rows=rows, total=total, page=page,
        pages=page_count(total, PER_PAGE), roles=ROLES, form=form or {}, error=error,
    ), status


@bp.get("/users")
@auth.login_required(Role.ADMIN)
def index():
    return _list_page()


@bp.post("/users")
@auth.login_required(Role.ADMIN)
def create():
    form = request.form
    try:
        if form.get("password", "") != form.get("password2", ""):
            raise ValidationError("password2", "The two passwords differ.")
        user = users.create_user(db.session, form.get("email", ""), form.get("password", ""),
                                 users.parse_role(form.get("role", "")))
        db.session.commit()
    except (ValidationError, Conflict) as e:
        db.session.rollback()
        return _list_page(form, getattr(e, "message", str(e)), e.status)
    flash(f"{user.email} can now log in as {user.role.value}.")
    return redirect(url_for("admin_users.index"))


def _user_page(user_id: int, error=None, status=200):
    user = users.get_user(db.session, user_id)
    return render_template("admin/user.html", user=user, roles=ROLES, error=error,
                           me=auth.current_user()), status


@bp.get("/users/<int:user_id>")
@auth.login_required(Role.ADMIN)
def show(user_id: int):
    return _user_page(user_id)


def _act(user_id: int, action, done: str):
    """Run one change to a user; on a refusal, show the page again with the reason."""
    try:
        action()
        db.session.commit()
    except MailerError as e:
        db.session.rollback()
        return _user_page(user_id, getattr(e, "message", str(e)), e.status)
    flash(done)
    return redirect(url_for("admin_users.show", user_id=user_id))


@bp.post("/users/<int:user_id>/role")
@auth.login_required(Role.ADMIN)
def set_role(user_id: int):
    user = users.get_user(db.session, user_id)
    raw = request.form.get("role", "")
    return _act(user_id, lambda: users.set_role(db.session, user_id, users.parse_role(raw)),
                f"{user.email} is now {raw}.")


@bp.post("/users/<int:user_id>/<any(deactivate, activate):action>")
@auth.login_required(Role.ADMIN)
def set_active(user_id: int, action: str):
    user = users.get_user(db.session, user_id)
    active = action == "activate"
    done = (f"{user.email} can log in again." if active else
            f"{user.email} is deactivated: their sessions and API tokens no longer work.")
    return _act(user_id, lambda: users.set_active(db.session, auth.current_user(), user_id,
                                                  active), done)


@bp.post("/users/<int:user_id>/password")
@auth.login_required(Role.ADMIN)
def reset_password(user_id: int):
    form = request.form
    user = users.get_user(db.session, user_id)
    try:
        users.reset_password(db.session, user_id, form.get("password", ""),
                             form.get("password2", ""))
        db.session.commit()
    except ValidationError as e:
        db.session.rollback()
        return _user_page(user_id, e.message, 400)
    if user.id == auth.current_user().id:
        auth.login(user)  # your own reset: stay logged in here, everywhere else ends
    flash(f"New password set for {user.email}; they were logged out everywhere.")
    return redirect(url_for("admin_users.show", user_id=user_id))


@bp.route("/account", methods=["GET", "POST"])
@auth.login_required()
def account():
    """Change your own password; every other session of yours ends, this one stays."""
    me = auth.current_user()
    error = None
    if request.method == "POST":
        form = request.form
        try:
            users.change_own_password(db.session, me, form.get("current", ""),
                                      form.get("password", ""), form.get("password2", ""),
                                      client_ip())
            db.session.commit()
        except ValidationError as e:
            db.session.rollback()
            error = e.message
        else:
            auth.login(me)  # this session carries the new session version
            flash("Your password is changed; your other sessions were logged out.")
            return redirect(url_for("admin_users.account"))
    return render_template("admin/account.html", me=me, error=error), 400 if error else 200
