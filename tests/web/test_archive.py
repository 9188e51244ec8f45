"""The public archive: sent issues only, readable under the strict CSP, no reader data at all."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import timedelta

import pytest

from mailer import tokens
from mailer.clock import utcnow
from mailer.db import db
from mailer.mail import placeholders as ph
from mailer.models import (
    Delivery,
    DeliveryStatus,
    Issue,
    IssueStatus,
    Subscriber,
    SubscriberStatus,
)
from mailer.services import deliveries, digests
from mailer.tokens import BadToken
from mailer.web import CSP
from mailer.web import archive as archive_view
from tests.helpers.digests import BROWSER_UA, add_article, mark_sent
from tests.helpers.readers import subscribe_readers
from tests.helpers.servers import wait_until

_hours = iter(range(10_000))
_START = utcnow() - timedelta(days=30)


def _issue(rt, titles, *, status=IssueStatus.FINISHED, intro=""):
    """An issue composed an hour after the previous one (so its articles are new), sent at
    once unless another status is asked for."""
    now = _START + timedelta(hours=next(_hours))
    for n, title in enumerate(titles):
        add_article(db.session, title, now - timedelta(minutes=n + 1))
    issue = digests.create_issue(db.session, rt.settings, rt.popularity, now=now, popular_m=0, intro=intro)
    if status == IssueStatus.FINISHED:
        mark_sent(db.session, issue, now + timedelta(minutes=5))
    elif status == IssueStatus.SENDING:
        issue.status, issue.started_at = IssueStatus.SENDING, now + timedelta(minutes=5)
    else:
        issue.status = status
    db.session.commit()
    return issue.id


def _readers(make_email, issue_id, n=3):
    """Readers who got the issue: names and addresses that must never show up in public."""
    out = []
    for i in range(n):
        sub = Subscriber(
            email=make_email("archived"),
            name=f"Reader Name{i} Zebra",
            status=SubscriberStatus.ACTIVE,
        )
        db.session.add(sub)
        db.session.flush()
        delivery = Delivery(
            issue_id=issue_id, subscriber_id=sub.id, status=DeliveryStatus.SENT, sent_at=utcnow()
        )
        db.session.add(delivery)
        db.session.flush()
        out.append((sub.email, sub.name, sub.uid, delivery.id))
    db.session.commit()
    return out


def test_only_issues_that_went_out_are_public(app):
    rt = app.extensions["mailer"]
    client = app.test_client()
    assert "No issue has been sent yet" in client.get("/archive").get_data(as_text=True)
    sent = _issue(rt, ["Sent story"])
    sending = _issue(rt, ["Going out now"], status=IssueStatus.SENDING)
    hidden = [
        _issue(rt, ["Draft story"], status=IssueStatus.DRAFT),
        _issue(rt, ["Cancelled story"], status=IssueStatus.CANCELLED),
        _issue(rt, ["Scheduled story"], status=IssueStatus.SCHEDULED),
    ]
    index = client.get("/archive").get_data(as_text=True)
    # Newest send first; each entry is the subject a reader saw.
    assert index.index("Going out now") < index.index("Sent story")
    for word in ("Draft story", "Cancelled story", "Scheduled story"):
        assert word not in index
    for issue_id in (sent, sending):
        page = client.get(f"/archive/{issue_id}")
        assert page.status_code == 200
    for issue_id in hidden + [999_999]:
        assert client.get(f"/archive/{issue_id}").status_code == 404
    assert client.get("/archive/not-a-number").status_code == 404


def test_archive_pages_and_feed_carry_no_reader_data(app, make_email):
    rt = app.extensions["mailer"]
    client = app.test_client()
    issue_id = _issue(
        rt,
        ["Council votes on the budget", "Storm warning"],
        intro="Dear {{ name }}, here is **{{ list_name }}**.",
    )
    readers = _readers(make_email, issue_id)
    pages = [client.get(p) for p in ("/archive", f"/archive/{issue_id}", "/archive/feed.xml")]
    assert all(p.status_code == 200 for p in pages)
    body = "\n".join(p.get_data(as_text=True) for p in pages)
    assert "Council votes on the budget" in body and "Storm warning" in body
    assert "Dear Reader, here is <strong>The Daily Test</strong>" in body
    for email, name, uid, _delivery_id in readers:
        assert email not in body and name not in body and "Zebra" not in body and uid not in body
    assert ph.PREFIX not in body and "@example.com" not in body
    # No working personal token of any kind: every path segment fails to unsign.
    for segment in set(re.findall(r"[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]{16}", body)):
        for purpose in (tokens.UNSUBSCRIBE, tokens.PREFERENCES, tokens.CLICK):
            with pytest.raises(BadToken):
                rt.tokens.unsign(purpose, segment)
    for path in ("/unsubscribe/", "/preferences/", "/t/", "/confirm/"):
        assert path not in body


def test_archive_pages_work_under_the_strict_csp(app):
    rt = app.extensions["mailer"]
    client = app.test_client()
    issue_id = _issue(rt, ["A story with an image"])
    for path in ("/archive", f"/archive/{issue_id}"):
        resp = client.get(path)
        html = resp.get_data(as_text=True)
        assert resp.headers["Content-Security-Policy"] == CSP
        # The CSP refuses inline styles and scripts, and images from other hosts.
        assert " style=" not in html and "<style" not in html and "<script" not in html
        assert "<img" not in html


def test_the_rss_feed_lists_sent_issues_with_links_to_their_pages(app):
    rt = app.extensions["mailer"]
    client = app.test_client()
    older = _issue(rt, ["Older <b>story</b> & more"])
    newer = _issue(rt, ["Newer story"])
    _issue(rt, ["Unsent story"], status=IssueStatus.DRAFT)
    resp = client.get("/archive/feed.xml")
    assert resp.mimetype == "application/rss+xml"
    channel = ET.fromstring(resp.data).find("channel")
    items = channel.findall("item")
    assert [i.findtext("link") for i in items] == [rt.links.archive(newer), rt.links.archive(older)]
    assert items[1].findtext("title") == "The Daily Test: Older <b>story</b> & more"
    assert "Older &lt;b&gt;story&lt;/b&gt; &amp; more" in items[1].findtext("description")
    assert items[0].findtext("pubDate").endswith("GMT")
    for item in items:
        assert client.get("/" + item.findtext("link").split("/", 3)[3]).status_code == 200


def test_the_archive_is_paginated(app, monkeypatch):
    rt = app.extensions["mailer"]
    client = app.test_client()
    monkeypatch.setattr(archive_view, "PAGE_SIZE", 2)
    for n in range(5):
        _issue(rt, [f"Edition {n}"])
    first = client.get("/archive").get_data(as_text=True)
    assert "Edition 4" in first and "Edition 3" in first and "Edition 2" not in first
    assert "Page 1 of 3" in first
    last = client.get("/archive?page=3").get_data(as_text=True)
    assert "Edition 0" in last and "Edition 1" not in last
    assert client.get("/archive?page=abc").status_code == 200


@pytest.mark.browser
def test_an_archive_page_renders_without_csp_violations(app, live_server, page):
    rt = app.extensions["mailer"]
    issue_id = _issue(rt, ["Readable in a browser"], intro="Welcome to **our archive**.")
    refused = []  # what the browser blocked because of the Content-Security-Policy
    page.on(
        "console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None
    )
    page.goto(f"{live_server}/archive")
    page.get_by_role("link", name="The Daily Test: Readable in a browser").click()
    page.wait_for_url(f"{live_server}/archive/{issue_id}")
    assert (
        page.get_by_role("heading", level=1).inner_text() == "The Daily Test: Readable in a browser"
    )
    assert page.locator("strong", has_text="our archive").count() == 1
    assert (
        page.get_by_role("link", name="Readable in a browser")
        .get_attribute("href")
        .startswith("https://daily.example/")
    )
    assert refused == []


def test_an_issue_sent_by_the_delivery_engine_is_in_the_archive(app, worker, smtp, make_email):
    """The whole path: compose, send through the real worker, read, click, find it archived."""
    rt = app.extensions["mailer"]
    client = app.test_client()
    now = utcnow()
    story = add_article(db.session, "Bridge reopens after repairs", now - timedelta(hours=2))
    story_url = story.url
    readers = [make_email("engine"), make_email("engine")]
    db.session.add_all(
        [
            Subscriber(email=readers[0], name="Grace Hopper", status=SubscriberStatus.ACTIVE),
            Subscriber(email=readers[1], status=SubscriberStatus.ACTIVE),
        ]
    )
    db.session.flush()
    subscribe_readers(db.session)
    issue = digests.create_issue(db.session, rt.settings, rt.popularity, now=now, popular_m=0, intro="Hi {{ name }}!")
    issue_id = issue.id
    db.session.commit()
    started = deliveries.start_send(db.session, issue_id, settings=rt.settings)
    db.session.commit()  # hands the batches to the worker
    assert started.deliveries == 2

    (grace,) = smtp.wait_for(readers[0])
    (other,) = smtp.wait_for(readers[1])
    assert "Hi Grace Hopper!" in grace.text and "Hi Grace Hopper!" in grace.html
    assert "Bridge reopens after repairs" in other.html and "Grace" not in other.text
    # The tracked link leads to the article and counts the click.
    tracked = next(u for u in grace.links() if "/t/" in u)
    resp = client.get("/" + tracked.split("/", 3)[3], headers={"User-Agent": BROWSER_UA})
    assert resp.status_code == 302 and resp.headers["Location"] == story_url

    def finished():
        db.session.expire_all()
        return db.session.get(Issue, issue_id).status == IssueStatus.FINISHED

    wait_until(finished, 30, what="the issue to finish")
    page = client.get(f"/archive/{issue_id}").get_data(as_text=True)
    assert "Bridge reopens after repairs" in page and "Hi Reader!" in page
    for address in readers:
        assert address not in page
    assert "Grace" not in page and "/t/" not in page and "/unsubscribe/" not in page


LOOK = """([headline, section, summary]) => {
  const style = el => { const s = getComputedStyle(el);
    return [s.fontFamily, s.fontSize, s.fontWeight, s.color, s.textTransform]; };
  return {
    headlines: [...document.querySelectorAll(headline)].map(el => el.innerText.trim()),
    headline: style(document.querySelector(headline)),
    section: style(document.querySelector(section)),
    summary: style(document.querySelector(summary)),
    sections: [...document.querySelectorAll(section)].map(el => el.innerText.trim()),
  };
}"""


@pytest.mark.browser
def test_the_web_version_looks_like_the_mail(app, live_server, browser):
    from mailer.services import render

    rt = app.extensions["mailer"]
    issue_id = _issue(rt, ["Council votes on the budget", "Storm warning", "Tram line opens"],
                      intro="Good morning.")
    issue = db.session.get(Issue, issue_id)
    _subject, mail_html, _text = render.render_preview(db.session, issue, "", rt.settings)
    for width in (1280, 375):
        context = browser.new_context(viewport={"width": width, "height": 900})
        try:
            mail = context.new_page()
            mail.route("**/*", lambda route: route.abort())  # images blocked, as in many inboxes
            mail.set_content(mail_html)
            in_mail = mail.evaluate(LOOK, [".headline a", ".section-title", ".summary"])
            web = context.new_page()
            web.goto(f"{live_server}/archive/{issue_id}")
            on_web = web.evaluate(LOOK, [".mail-headline a", ".mail-section", ".mail-summary"])
            assert on_web["headlines"] == in_mail["headlines"]
            assert on_web["sections"] == in_mail["sections"] == ["LATEST"]
            for part in ("headline", "section", "summary"):
                assert on_web[part] == in_mail[part], (width, part)
            widths = [pg.evaluate("document.documentElement.scrollWidth") for pg in (mail, web)]
            assert max(widths) <= width
        finally:
            context.close()
