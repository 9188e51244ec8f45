"""Helpers shared by the digest tests: articles, sent issues, built messages."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta

from markupsafe import escape

from mailer.mail import placeholders as ph
from mailer.mail.notices import list_id
from mailer.models import Article, Issue, IssueStatus
from tests.helpers.app import make_app

# dcrainmaker.xml's categories mapped onto the test sections (news, business, sport, culture).
SECTION_MAP = "Blog=news,Sales=business,Product Reviews=sport,Power Meters=sport,Garmin=sport"
BROWSER_UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0 Safari/537.36"
)

_n = itertools.count(1)


def digest_app(env: dict, **overrides):
    """An app whose feed categories map onto sections (on the `app` fixture's clean DB)."""
    return make_app(env, MAILER_SECTION_MAP=SECTION_MAP, **overrides)


def add_article(session, title: str, published_at: datetime, **fields) -> Article:
    n = next(_n)
    fields.setdefault("url", f"https://daily.example/{n}-story")
    fields.setdefault("summary", f"What happened in story {n}, in a few words.")
    fields.setdefault("categories", [])
    article = Article(title=title, published_at=published_at, **fields)
    session.add(article)
    session.flush()
    return article


def mark_sent(session, issue: Issue, at: datetime) -> None:
    """Leave the issue as the delivery engine does when a send is over."""
    issue.status = IssueStatus.FINISHED
    issue.started_at = at
    issue.finished_at = at + timedelta(minutes=3)
    session.flush()


def personalize(
    subject: str,
    html: str,
    text: str,
    rt,
    *,
    delivery_id: int = 1,
    uid: str = "uid123",
    name: str = "Ada",
    email: str = "ada@example.com",
):
    """Fill the placeholders the way the delivery engine does (escaped in the HTML part)."""
    values = {
        ph.NAME: name,
        ph.EMAIL: email,
        ph.UNSUBSCRIBE_URL: rt.links.unsubscribe(uid),
        ph.PREFERENCES_URL: rt.links.preferences(uid),
        ph.CLICK_BASE: rt.links.click_base(delivery_id),
        ph.OPEN_PIXEL_URL: rt.links.click_base(delivery_id) + "/open.gif",
    }
    for marker, value in values.items():
        html = html.replace(marker, str(escape(value)))
        text = text.replace(marker, value)
    return subject, html, text


def build(
    rt, subject: str, html: str, text: str, to: str = "ada@example.com", uid: str = "uid123"
) -> bytes:
    """The message as a reader gets it: list headers, both parts."""
    settings = rt.settings
    headers = {"List-Id": list_id(settings), **rt.links.list_unsubscribe_headers(uid)}
    return rt.composer.message(to=to, subject=subject, text=text, html=html, headers=headers).data
