"""The archive per newsletter: /archive lists the public ones, /archive/SLUG and its feed are
one newsletter's, a hidden newsletter is listed nowhere, and the old URLs keep working."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import timedelta

from mailer.clock import utcnow
from mailer.db import db
from mailer.models import IssueStatus, Newsletter
from mailer.services import digests, newsletters
from tests.helpers.digests import add_article, mark_sent

_hours = iter(range(10_000))
_START = utcnow() - timedelta(days=20)


def _sent(rt, newsletter, title: str) -> int:
    now = _START + timedelta(hours=next(_hours))
    add_article(db.session, title, now - timedelta(minutes=1))
    issue = digests.create_issue(db.session, rt.settings, rt.popularity, now=now,
                                 newsletter=newsletter, popular_m=0,
                                 subject="{{ list_name }}: {{ top_story }}")
    mark_sent(db.session, issue, now + timedelta(minutes=5))
    db.session.commit()
    return issue.id


def _letter(slug: str, name: str, **fields) -> Newsletter:
    letter = Newsletter(slug=slug, name=name, **fields)
    db.session.add(letter)
    db.session.commit()
    return letter


def _feed_titles(resp) -> list[str]:
    assert resp.status_code == 200 and resp.mimetype == "application/rss+xml"
    channel = ET.fromstring(resp.data).find("channel")
    return [i.findtext("title") for i in channel.findall("item")]


def test_one_public_newsletter_looks_as_before(app):
    rt = app.extensions["mailer"]
    client = app.test_client()
    first = newsletters.first(db.session)
    issue_id = _sent(rt, None, "Town hall reopens")
    page = client.get("/archive").get_data(as_text=True)
    assert "Past issues" in page and f"/archive/{issue_id}" in page
    assert f"{first.name}: Town hall reopens" in page
    # The first newsletter's own page and feed are the same issues.
    assert f"/archive/{issue_id}" in client.get(f"/archive/{first.slug}").get_data(as_text=True)
    assert _feed_titles(client.get(f"/archive/{first.slug}/feed.xml")) == [
        f"{first.name}: Town hall reopens"]
    assert _feed_titles(client.get("/archive/feed.xml")) == [f"{first.name}: Town hall reopens"]


def test_each_public_newsletter_has_its_archive_and_feed_and_a_hidden_one_none(app):
    rt = app.extensions["mailer"]
    client = app.test_client()
    first = newsletters.first(db.session)
    sport = _letter("sport", "The Sport Letter", description="Every match, every Monday.")
    staff = _letter("staff", "Staff Notes", public=False)
    old = _letter("elections", "Election Night", archived_at=utcnow())
    news = _sent(rt, None, "Budget passes")
    match = _sent(rt, sport, "Cup final tonight")
    memo = _sent(rt, staff, "Parking changes")
    # An archived newsletter takes no new issue; what it sent before stays in the archive.
    old.archived_at = None
    db.session.commit()
    night = _sent(rt, old, "Results by district")
    old.archived_at = utcnow()
    db.session.commit()

    index = client.get("/archive").get_data(as_text=True)
    assert first.name in index and "The Sport Letter" in index and "Election Night" in index
    assert "Every match, every Monday." in index
    assert "/archive/sport" in index and "/archive/sport/feed.xml" in index
    for issue_id in (news, match, night):
        assert f"/archive/{issue_id}" in index
    assert "Staff Notes" not in index and f"/archive/{memo}" not in index

    sport_page = client.get("/archive/sport").get_data(as_text=True)
    assert f"/archive/{match}" in sport_page and f"/archive/{news}" not in sport_page
    assert _feed_titles(client.get("/archive/sport/feed.xml")) == [
        "The Sport Letter: Cup final tonight"]
    # The old feed: every public newsletter's issues, newest first, never a hidden one's.
    assert _feed_titles(client.get("/archive/feed.xml")) == [
        "Election Night: Results by district", "The Sport Letter: Cup final tonight",
        f"{first.name}: Budget passes"]

    # A hidden newsletter has no list and no feed; its issue pages open by their link (the
    # mail's "view in browser"), not to be indexed.
    assert client.get("/archive/staff").status_code == 404
    assert client.get("/archive/staff/feed.xml").status_code == 404
    memo_page = client.get(f"/archive/{memo}")
    assert memo_page.status_code == 200
    assert '<meta name="robots" content="noindex">' in memo_page.get_data(as_text=True)
    match_page = client.get(f"/archive/{match}").get_data(as_text=True)
    assert "noindex" not in match_page and 'href="/archive/sport"' in match_page
    assert client.get("/archive/no-such-letter").status_code == 404
    assert client.get("/archive/no-such-letter/feed.xml").status_code == 404


def test_an_unsent_issue_of_a_newsletter_is_not_public(app):
    rt = app.extensions["mailer"]
    client = app.test_client()
    sport = _letter("sport", "The Sport Letter")
    add_article(db.session, "Draft story", utcnow() - timedelta(hours=1))
    draft = digests.create_issue(db.session, rt.settings, rt.popularity, now=utcnow(),
                                 newsletter=sport, min_items=0)
    db.session.commit()
    assert draft.status == IssueStatus.DRAFT
    assert client.get(f"/archive/{draft.id}").status_code == 404
    assert f"/archive/{draft.id}" not in client.get("/archive/sport").get_data(as_text=True)
