"""The feeds page: each feed of MAILER_FEEDS with its last sync, outcome and article count,
and a "Sync now" button."""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for

from mailer.db import db
from mailer.models import Role
from mailer.runtime import runtime
from mailer.services import articles
from mailer.tasks import enqueue
from mailer.tasks.articles import sync_feeds
from mailer.web import auth

bp = Blueprint("admin_feeds", __name__, url_prefix="/admin/feeds")

# "Sync now" twice in a row fetches once: a sync started this recently counts as fresh.
SYNC_NOW_SECONDS = 20.0


@bp.get("")
@auth.login_required(Role.EDITOR, Role.OPS)
def index(error: str | None = None):
    settings = runtime().settings
    return render_template(
        "admin/feeds.html", feeds=articles.feed_statuses(db.session, settings.feeds),
        every=settings.feed_sync_minutes, error=error,
    ), 400 if error else 200


@bp.post("/sync")
@auth.login_required(Role.EDITOR, Role.OPS)
def sync():
    """Hand every configured feed (or the one named) to a worker for a sync now."""
    settings = runtime().settings
    url = request.form.get("feed")
    if url is not None and url not in settings.feeds:
        return index(error="That feed is not in MAILER_FEEDS.")
    if not settings.feeds:
        return index(error="No feeds are configured: set MAILER_FEEDS and restart.")
    enqueue(sync_feeds, [url] if url else list(settings.feeds), SYNC_NOW_SECONDS * 2)
    flash("Sync started; reload this page in a few seconds to see the outcome.")
    back = request.form.get("next", "")
    if back.startswith("/admin/") and not back.startswith("//"):
        return redirect(back), 303
    return redirect(url_for(".index")), 303
