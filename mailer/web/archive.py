"""The public archive: sent issues as web pages and an RSS feed, with no reader data.

Pages are built from the issue's items with the web templates (not the email HTML), so they
carry no personal token at all and work under the site's strict Content-Security-Policy.
"""

from __future__ import annotations

from email.utils import format_datetime

from flask import Blueprint, abort, render_template, request
from markupsafe import escape
from sqlalchemy import func, select

from mailer.db import db
from mailer.models import Issue
from mailer.runtime import runtime
from mailer.services.digests import SENT
from mailer.services.render import public_view

bp = Blueprint("archive", __name__)

PAGE_SIZE = 20
FEED_SIZE = 20


def _published(offset: int, limit: int) -> list[Issue]:
    return list(
        db.session.scalars(
            select(Issue)
            .where(Issue.status.in_(SENT))
            .order_by(Issue.started_at.desc().nulls_last(), Issue.id.desc())
            .offset(offset)
            .limit(limit)
        )
    )


@bp.get("/archive")
def index():
    page = max(1, request.args.get("page", 1, type=int))
    total = db.session.scalar(select(func.count()).select_from(Issue).where(Issue.status.in_(SENT)))
    pages = max(1, -(-total // PAGE_SIZE))
    settings = runtime().settings
    entries = [
        public_view(db.session, i, settings) for i in _published((page - 1) * PAGE_SIZE, PAGE_SIZE)
    ]
    return render_template("archive.html", entries=entries, page=page, pages=pages)


@bp.get("/archive/<int:issue_id>")
def issue(issue_id: int):
    found = db.session.get(Issue, issue_id)
    # Drafts, skipped and cancelled issues were never read by anyone: they are not public.
    if found is None or found.status not in SENT:
        abort(404)
    view = public_view(db.session, found, runtime().settings)
    return render_template("archive_issue.html", view=view)


def _description(view: dict) -> str:
    parts = [str(view["intro_html"])]
    for section in view["sections"]:
        parts.append(f"<h2>{escape(section['label'])}</h2><ul>")
        for item in section["items"]:
            parts.append(f'<li><a href="{escape(item.url)}">{escape(item.title)}</a></li>')
        parts.append("</ul>")
    return "".join(parts)


@bp.get("/archive/feed.xml")
def feed():
    rt = runtime()
    entries = []
    for found in _published(0, FEED_SIZE):
        view = public_view(db.session, found, rt.settings)
        entries.append(
            {
                "subject": view["subject"],
                "url": rt.links.archive(found.id),
                "pub_date": format_datetime(view["sent_at"], usegmt=True),
                # RSS carries HTML in an escaped description; the template escapes it once.
                "description": _description(view),
            }
        )
    body = render_template(
        "archive_feed.xml",
        entries=entries,
        archive_url=rt.links.archive(),
        feed_url=f"{rt.settings.base_url}/archive/feed.xml",
    )
    return body, 200, {"Content-Type": "application/rss+xml; charset=utf-8"}
