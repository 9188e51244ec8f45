"""The console under /admin: first-run setup, login, and the outbox of the embedded mode."""

from __future__ import annotations

import re

from flask import Blueprint, Response, abort, redirect, render_template, request, url_for

from mailer.db import db
from mailer.errors import Conflict, ValidationError
from mailer.mail.outbox import list_outbox, read_outbox
from mailer.models import Role
from mailer.runtime import runtime
from mailer.services import newsletters, reports, users
from mailer.tasks.queues import broker_backlog
from mailer.web import auth
from mailer.web.admin import charts
from mailer.web.extensions import client_ip, limiter

bp = Blueprint("admin", __name__, url_prefix="/admin")

PAGE_SIZE = 50

# The console's menu: (endpoint, label, roles allowed). Pages add themselves here.
NAV: list[tuple[str, str, tuple[Role, ...]]] = [
    ("admin.index", "Dashboard", ()),
    ("admin_newsletters.index", "Newsletters", (Role.EDITOR, Role.OPS)),
    ("admin_issues.index", "Issues", (Role.EDITOR, Role.OPS)),
    ("admin_feeds.index", "Feeds", (Role.EDITOR, Role.OPS)),
    ("admin_subscribers.index", "Subscribers", (Role.OPS,)),
    ("admin_schedules.index", "Schedules", (Role.OPS,)),
    ("admin_webhooks.index", "Webhooks", (Role.OPS,)),
    ("admin.outbox", "Outbox", (Role.OPS, Role.EDITOR)),
    ("admin_users.index", "Users", (Role.ADMIN,)),
    ("admin_settings.index", "Settings", (Role.OPS,)),
]


def admin_nav() -> list[tuple[str, str]]:
    user = auth.current_user()
    if user is None:
        return []
    return [(ep, label) for ep, label, roles in NAV if not roles or auth.allowed(user, roles)]


def nav_current(endpoint: str) -> bool:
    """Whether a menu entry is the section the current page belongs to."""
    here = request.endpoint or ""
    if endpoint.startswith("admin.") or here.startswith("admin."):
        # The base blueprint holds several entries: match the page itself (and its children).
        return here == endpoint or here.startswith(endpoint + "_")
    return here.split(".")[0] == endpoint.split(".")[0]


def may(*roles: str) -> bool:
    """For templates: whether the current user has one of these roles (admins have all)."""
    user = auth.current_user()
    return user is not None and auth.allowed(user, tuple(Role(r) for r in roles))


@bp.app_context_processor
def _console_globals():
    return {"nav_current": nav_current, "may": may}


def sandboxed_preview(html: str) -> Response:
    """An email's HTML for a preview iframe: links open in a new tab (the sandbox allows that,
    never inside the frame), no scripts, nothing on our origin; images from anywhere (the
    logo, as mail clients show it)."""
    html = re.sub(r"<head(\s[^>]*)?>", lambda m: m.group(0) + '<base target="_blank">', html,
                  count=1, flags=re.IGNORECASE)
    resp = Response(html, mimetype="text/html")
    resp.headers["Content-Security-Policy"] = (
        "sandbox allow-popups allow-popups-to-escape-sandbox; default-src 'none'; "
        "img-src http: https: data:; style-src 'unsafe-inline'"
    )
    return resp


def paging(per_page: int = PAGE_SIZE) -> tuple[int, int]:
    """(page, offset) from ?page=, never below the first page."""
    page = max(1, request.args.get("page", 1, type=int))
    return page, (page - 1) * per_page


def page_count(total: int, per_page: int = PAGE_SIZE) -> int:
    return max(1, -(-total // per_page))


@bp.route("/setup", methods=["GET", "POST"])
def setup():
    """Create the first admin account; gone as soon as one user exists."""
    if users.count(db.session) > 0:
        return redirect(url_for("admin.login"))
    error = None
    email = ""
    if request.method == "POST":
        email = request.form.get("email", "")
        password = request.form.get("password", "")
        try:
            if password != request.form.get("password2", ""):
                raise ValidationError("password2", "The two passwords differ.")
            user = users.create_user(db.session, email, password, Role.ADMIN)
            db.session.commit()
            auth.login(user)
            return redirect(url_for("admin.index"))
        except (ValidationError, Conflict) as e:
            db.session.rollback()
            error = getattr(e, "message", str(e))
    return render_template("admin/setup.html", error=error, email=email), 400 if error else 200


def _login_key() -> str:
    return "login:" + client_ip()


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit("10 per minute", key_func=_login_key, methods=["POST"])
def login():
    if users.count(db.session) == 0:
        return redirect(url_for("admin.setup"))
    error = None
    retry_after = 0
    email = request.form.get("email", "")
    if request.method == "POST":
        try:
            user = users.authenticate(
                db.session, email, request.form.get("password", ""), client_ip()
            )
        except users.LoginFailed as e:
            db.session.commit()  # keep the failure count
            error, retry_after = str(e), e.retry_after
        else:
            db.session.commit()
            auth.login(user)
            target = request.args.get("next", "")
            # Only local paths: the login page must not become an open redirect.
            if not target.startswith("/admin") or target.startswith("//"):
                target = url_for("admin.index")
            return redirect(target)
    page = render_template("admin/login.html", error=error, email=email)
    if retry_after:
        return page, 429
    return page, 401 if error else 200


@bp.post("/logout")
def logout():
    auth.logout()
    return redirect(url_for("admin.login"))


@bp.get("/")
@auth.login_required()
def index():
    settings = runtime().settings
    recent = reports.last_issues(db.session)
    history = reports.readers_over_time(db.session, days=30)
    chart = charts.line_chart(
        "Readers by status, last 30 days",
        "Active, pending (not yet confirmed) and gone (unsubscribed, bounced, complained) "
        "readers at the end of each day.",
        [f"{d.day} {d:%b}" for d in history["days"]],
        [("Active", "s-active", history["active"]), ("Pending", "s-pending", history["pending"]),
         ("Gone", "s-gone", history["gone"])],
    )
    return render_template(
        "admin/index.html",
        chart=chart,
        counts=history["counts"],
        per_newsletter=newsletters.with_counts(db.session),
        embedded=settings.smtp is None,
        history=history,
        recent=recent,
        queue=reports.queue_state(db.session),
        backlog=broker_backlog(settings),
        upcoming=reports.next_runs(db.session),
        warnings=reports.warnings(db.session, settings),
    )


@bp.get("/outbox")
@auth.login_required(Role.OPS, Role.EDITOR)
def outbox():
    page = max(1, request.args.get("page", 1, type=int))
    folder = runtime().settings.outbox_path
    entries, total = list_outbox(folder, (page - 1) * PAGE_SIZE, PAGE_SIZE)
    pages = max(1, -(-total // PAGE_SIZE))
    return render_template(
        "admin/outbox.html",
        entries=entries,
        total=total,
        page=page,
        pages=pages,
        smtp=runtime().settings.smtp,
    )


def _outbox_message(entry_id: str):
    found = read_outbox(runtime().settings.outbox_path, entry_id)
    if found is None:
        abort(404)
    return found


@bp.get("/outbox/<entry_id>")
@auth.login_required(Role.OPS, Role.EDITOR)
def outbox_message(entry_id: str):
    msg, raw = _outbox_message(entry_id)
    text_part = msg.get_body(("plain",))
    html_part = msg.get_body(("html",))
    return render_template(
        "admin/outbox_message.html",
        entry_id=entry_id,
        headers=list(msg.items()),
        text=text_part.get_content() if text_part else "",
        has_html=html_part is not None,
    )


@bp.get("/outbox/<entry_id>/html")
@auth.login_required(Role.OPS, Role.EDITOR)
def outbox_html(entry_id: str):
    msg, _ = _outbox_message(entry_id)
    part = msg.get_body(("html",))
    if part is None:
        abort(404)
    resp = Response(part.get_content(), mimetype="text/html")
    # Shown inside a sandboxed iframe: no scripts, no forms, and links open outside.
    resp.headers["Content-Security-Policy"] = (
        "sandbox allow-popups allow-popups-to-escape-sandbox; default-src 'none'; "
        "img-src * data:; style-src 'unsafe-inline'"
    )
    return resp


@bp.get("/outbox/<entry_id>.eml")
@auth.login_required(Role.OPS, Role.EDITOR)
def outbox_raw(entry_id: str):
    _, raw = _outbox_message(entry_id)
    return Response(
        raw,
        mimetype="message/rfc822",
        headers={"Content-Disposition": f"attachment; filename={entry_id}.eml"},
    )
