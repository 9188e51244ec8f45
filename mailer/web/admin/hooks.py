"""The console's webhooks: endpoints, their last deliveries, and what ops do with them."""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for

from mailer.db import db
from mailer.errors import MailerError, ValidationError
from mailer.models import Role
from mailer.services import digests, hook_endpoints, hooks
from mailer.web import auth
from mailer.web.extensions import settings

bp = Blueprint("admin_webhooks", __name__, url_prefix="/admin/webhooks")


def _index(form=None, error: str | None = None, status: int = 200):
    return render_template(
        "admin/webhooks.html", endpoints=hook_endpoints.all_endpoints(db.session),
        event_types=hooks.EVENT_TYPES, form=form or {}, error=error,
    ), status


@bp.get("")
@auth.login_required(Role.OPS)
def index():
    return _index()


@bp.post("")
@auth.login_required(Role.OPS)
def create():
    cfg = settings()
    form = request.form
    try:
        endpoint = hook_endpoints.create(
            db.session, url=form.get("url", ""), events=form.getlist("events"),
            personal_data=form.get("personal_data") == "on",
            description=form.get("description") or None,
            allow_http=cfg.webhook_allow_http, allow_private=cfg.webhook_allow_private,
        )
    except ValidationError as e:
        db.session.rollback()
        return _index(form, e.message, 400)
    db.session.commit()
    # The secret is shown on this page once, never again (rotating gives a new one).
    return render_template("admin/webhooks_secret.html", endpoint=endpoint, rotated=False)


@bp.get("/<int:endpoint_id>")
@auth.login_required(Role.OPS)
def show(endpoint_id: int):
    endpoint = hook_endpoints.get(db.session, endpoint_id)
    names = {n.slug: n.name for n in digests.newsletter_options(db.session)}
    return render_template("admin/webhooks_show.html", endpoint=endpoint,
                           deliveries=hook_endpoints.recent_deliveries(db.session, endpoint_id),
                           about=lambda event: hook_endpoints.about(event, names),
                           keep_days=settings().webhook_keep_days)


def _act(endpoint_id: int, done: str, action):
    try:
        action()
        db.session.commit()
        flash(done)
    except MailerError as e:
        db.session.rollback()
        flash(str(e), "error")
    return redirect(url_for("admin_webhooks.show", endpoint_id=endpoint_id))


@bp.post("/<int:endpoint_id>/<any(enable, disable):action>")
@auth.login_required(Role.OPS)
def set_enabled(endpoint_id: int, action: str):
    hook_endpoints.get(db.session, endpoint_id)  # 404 for an unknown id
    return _act(endpoint_id, f"Endpoint {action}d.",
                lambda: hook_endpoints.set_enabled(db.session, endpoint_id, action == "enable"))


@bp.post("/<int:endpoint_id>/test")
@auth.login_required(Role.OPS)
def test(endpoint_id: int):
    hook_endpoints.get(db.session, endpoint_id)
    return _act(endpoint_id, "Test event queued; it appears below once tried.",
                lambda: hook_endpoints.send_test(db.session, endpoint_id))


@bp.post("/<int:endpoint_id>/deliveries/<int:delivery_id>/redeliver")
@auth.login_required(Role.OPS)
def redeliver(endpoint_id: int, delivery_id: int):
    return _act(endpoint_id, f"Delivery {delivery_id} queued again, with the same id.",
                lambda: hook_endpoints.redeliver(db.session, delivery_id, endpoint_id))


@bp.post("/<int:endpoint_id>/rotate-secret")
@auth.login_required(Role.OPS)
def rotate_secret(endpoint_id: int):
    hook_endpoints.rotate_secret(db.session, endpoint_id)
    db.session.commit()
    endpoint = hook_endpoints.get(db.session, endpoint_id)
    return render_template("admin/webhooks_secret.html", endpoint=endpoint, rotated=True)


@bp.post("/<int:endpoint_id>/delete")
@auth.login_required(Role.OPS)
def delete(endpoint_id: int):
    endpoint = hook_endpoints.get(db.session, endpoint_id)
    url = endpoint.url
    hook_endpoints.remove(db.session, endpoint_id)
    db.session.commit()
    flash(f"Endpoint {url} removed with its deliveries.")
    return redirect(url_for("admin_webhooks.index"))
