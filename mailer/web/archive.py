"""The public archive: sent issues as web pages and RSS feeds, with no reader data.

Pages are built from the issue's items with the web templates (not the email HTML), so they
carry no personal token at all and work under the site's strict Content-Security-Policy.

`/archive` lists the public newsletters (with one public newsletter it is that newsletter's
list, as before there were several), `/archive/SLUG` and `/archive/SLUG/feed.xml` are one
newsletter's, `/archive/feed.xml` is every public newsletter's. A hidden newsletter's issues
are listed nowhere, but each issue's own page (`/archive/ID`, the mail's "view in browser"
link) opens for whoever has its link, marked not to be indexed.
"""

from __future__ import annotations

from email.utils import format_datetime

from flask import Blueprint, abort, render_template, request
from markupsafe import escape
from sqlalchemy import func, select

from mailer.db import db
from mailer.links import feed_url, newsletter_archive_url
from mailer.models import Issue, Newsletter
from mailer.runtime import runtime
from mailer.services import looks
from mailer.services.digests import SENT
from mailer.services.render import public_view

bp = Blueprint("archive", __name__)

PAGE_SIZE = 20
FEED_SIZE = 20
# Issues shown under each newsletter on /archive when there are several.
LATEST_PER_NEWSLETTER = 5


def _public_newsletters() -> list[Newsletter]:
    """The newsletters whose issues the archive lists: public ones, archived or not (an
    archived newsletter takes no new issues but its sent ones stay)."""
    return list(db.session.scalars(
        select(Newsletter).where(Newsletter.public.is_(True)).order_by(Newsletter.id)
    ))


def _sent(newsletter_ids: list[int]):
    return (Issue.status.in_(SENT)) & (Issue.newsletter_id.in_(newsletter_ids))


def _published(newsletter_ids: list[int], offset: int, limit: int) -> list[Issue]:
    return list(
        db.session.scalars(
            select(Issue)
            .where(_sent(newsletter_ids))
            .order_by(Issue.started_at.desc().nulls_last(), Issue.id.desc())
            .offset(offset)
            .limit(limit)
        )
    )


def _page_of(newsletter_ids: list[int]) -> tuple[list[dict], int, int]:
    """One page of the issues of these newsletters, newest first: (entries, page, pages)."""
    page = max(1, request.args.get("page", 1, type=int))
    total = db.session.scalar(select(func.count()).select_from(Issue).where(_sent(newsletter_ids)))
    pages = max(1, -(-total // PAGE_SIZE))
    page = min(page, pages)
    settings = runtime().settings
    entries = [
        public_view(db.session, i, settings)
        for i in _published(newsletter_ids, (page - 1) * PAGE_SIZE, PAGE_SIZE)
    ]
    return entries, page, pages


@bp.get("/archive")
def index():
    letters = _public_newsletters()
    if len(letters) == 1:
        return _newsletter_page(letters[0], single=True)
    settings = runtime().settings
    groups = []
    for letter in letters:
        latest = _published([letter.id], 0, LATEST_PER_NEWSLETTER)
        if not latest and letter.archived_at is not None:
            continue  # archived before it sent anything: nothing to show
        groups.append({
            "newsletter": letter,
            "entries": [public_view(db.session, i, settings) for i in latest],
        })
    return render_template("archive_newsletters.html", groups=groups)


def _newsletter_page(letter: Newsletter, single: bool = False):
    entries, page, pages = _page_of([letter.id])
    settings = runtime().settings
    return render_template(
        "archive.html", entries=entries, page=page, pages=pages, newsletter=letter,
        single=single, feed=feed_url(settings, None if single else letter.slug),
        look=looks.look_of(letter, settings),  # the newsletter's own page wears its look
    )


def _public_by_slug(slug: str) -> Newsletter:
    letter = db.session.scalar(
        select(Newsletter).where(Newsletter.slug == slug, Newsletter.public.is_(True))
    )
    if letter is None:  # unknown, or hidden: a hidden newsletter has no public list
        abort(404)
    return letter


@bp.get("/archive/<slug>")
def newsletter(slug: str):
    return _newsletter_page(_public_by_slug(slug))


@bp.get("/archive/<int:issue_id>")
def issue(issue_id: int):
    found = db.session.get(Issue, issue_id)
    # Drafts, skipped and cancelled issues were never read by anyone: they are not public.
    if found is None or found.status not in SENT:
        # A newsletter whose slug is all digits is reached here too.
        return newsletter(str(issue_id))
    view = public_view(db.session, found, runtime().settings)
    letter = found.newsletter
    return render_template(
        "archive_issue.html", view=view, newsletter=letter,
        listed=letter is None or letter.public,
    )


def _description(view: dict) -> str:
    parts = [str(view["intro_html"])]
    for section in view["sections"]:
        parts.append(f"<h2>{escape(section['label'])}</h2><ul>")
        for item in section["items"]:
            parts.append(f'<li><a href="{escape(item.url)}">{escape(item.title)}</a></li>')
        parts.append("</ul>")
    return "".join(parts)


def _feed(letters: list[Newsletter], title: str, link: str, self_url: str):
    rt = runtime()
    entries = []
    for found in _published([n.id for n in letters], 0, FEED_SIZE):
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
        "archive_feed.xml", entries=entries, title=title, archive_url=link, feed_url=self_url,
    )
    return body, 200, {"Content-Type": "application/rss+xml; charset=utf-8"}


@bp.get("/archive/feed.xml")
def feed():
    """Every public newsletter's issues: what feed readers subscribed to before there were
    several newsletters keeps coming, and a new newsletter's issues join it."""
    settings = runtime().settings
    letters = _public_newsletters()
    title = letters[0].name if len(letters) == 1 else settings.list_name
    return _feed(letters, title, runtime().links.archive(), feed_url(settings))


@bp.get("/archive/<slug>/feed.xml")
def newsletter_feed(slug: str):
    letter = _public_by_slug(slug)
    settings = runtime().settings
    return _feed([letter], letter.name, newsletter_archive_url(settings, letter.slug),
                 feed_url(settings, letter.slug))
