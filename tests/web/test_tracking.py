"""The click redirect: only to the issue's own URLs, counted for readers, not for machines."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from mailer import redis_client, tokens
from mailer.clock import utcnow
from mailer.db import db
from mailer.models import (
    Click,
    Delivery,
    DeliveryStatus,
    Frequency,
    IssueItem,
    Subscriber,
    SubscriberStatus,
)
from mailer.services import digests
from mailer.tokens import Tokens
from tests.helpers.app import make_app
from tests.helpers.digests import BROWSER_UA, add_article, digest_app, mark_sent
from tests.helpers.servers import redis_warnings

CURL_UA = "curl/8.5.0"


def _sent_issue(
    rt,
    make_email,
    titles=("First", "Second"),
    sent_ago=timedelta(hours=1),
    frequency=Frequency.WEEKLY,
):
    """An issue delivered to one reader, as the delivery engine leaves it."""
    now = utcnow()
    for n, title in enumerate(titles):
        add_article(db.session, title, now - timedelta(hours=n + 1))
    issue = digests.create_issue(db.session, rt.settings, rt.popularity, now=now, popular_m=0, audience_frequency=frequency)
    mark_sent(db.session, issue, now - sent_ago)
    reader = Subscriber(email=make_email(), status=SubscriberStatus.ACTIVE)
    db.session.add(reader)
    db.session.flush()
    delivery = Delivery(
        issue_id=issue.id,
        subscriber_id=reader.id,
        status=DeliveryStatus.SENT,
        sent_at=now - sent_ago,
        attempts=1,
    )
    db.session.add(delivery)
    db.session.commit()
    items = {
        i.article.title: (i.id, i.url, i.article_id)
        for i in db.session.scalars(select(IssueItem).where(IssueItem.issue_id == issue.id))
    }
    return issue.id, delivery.id, items


def _path(rt, delivery_id: int, item_id) -> str:
    """The tracked link of an item, as the delivery engine expands it, minus the host."""
    return "/" + rt.links.click_base(delivery_id).split("/", 3)[3] + f"/{item_id}"


def _clicks() -> list[tuple[int, bool]]:
    db.session.expire_all()
    return [(c.item_id, c.counted) for c in db.session.scalars(select(Click).order_by(Click.id))]


def test_a_reader_is_sent_to_the_article_and_the_click_counts_once(app, make_email):
    rt = app.extensions["mailer"]
    client = app.test_client()
    issue_id, delivery_id, items = _sent_issue(rt, make_email)
    item_id, url, article_id = items["First"]
    resp = client.get(_path(rt, delivery_id, item_id), headers={"User-Agent": BROWSER_UA})
    assert resp.status_code == 302 and resp.headers["Location"] == url
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    again = client.get(_path(rt, delivery_id, item_id), headers={"User-Agent": BROWSER_UA})
    assert again.status_code == 302 and again.headers["Location"] == url
    # Both clicks are in the issue's record; the reader counts once for popularity.
    assert _clicks() == [(item_id, True), (item_id, False)]
    ranking = rt.popularity.ranking(db.session, days=7, now=utcnow(), limit=10)
    assert [a for a, _score in ranking] == [article_id]


def test_the_redirect_refuses_any_url_not_in_the_issue(app, make_email):
    rt = app.extensions["mailer"]
    client = app.test_client()
    _issue, delivery_id, items = _sent_issue(rt, make_email)
    _other, _delivery, other_items = _sent_issue(
        rt, make_email, titles=("Elsewhere",), frequency=Frequency.DAILY
    )
    item_id, url, _ = items["First"]
    foreign_item = other_items["Elsewhere"][0]
    token = rt.tokens.sign(tokens.CLICK, str(delivery_id))
    refused = [
        f"/t/{token}/{foreign_item}",  # another issue's item
        f"/t/{token}/999999",  # no such item
        f"/t/{token[:-2]}xx/{item_id}",  # tampered signature
        f"/t/{Tokens('another-secret-key').sign(tokens.CLICK, str(delivery_id))}/{item_id}",
        f"/t/{rt.tokens.sign(tokens.UNSUBSCRIBE, str(delivery_id))}/{item_id}",  # other purpose
        f"/t/{rt.tokens.sign(tokens.CLICK, 'abc')}/{item_id}",
        f"/t/{rt.tokens.sign(tokens.CLICK, '424242')}/{item_id}",  # no such delivery
        f"/t/{token}/{item_id}/https://evil.example",
        f"/t/{token}/https%3A%2F%2Fevil.example",
    ]
    for path in refused:
        resp = client.get(path, headers={"User-Agent": BROWSER_UA})
        assert resp.status_code == 404, path
        assert "Location" not in resp.headers
    # Whatever the query says, the target is the stored URL.
    resp = client.get(
        f"/t/{token}/{item_id}?url=https://evil.example&next=//evil.example",
        headers={"User-Agent": BROWSER_UA},
    )
    assert resp.headers["Location"] == url
    # Even a stored URL that is no web address is refused rather than followed.
    db.session.get(IssueItem, item_id).url = "javascript:alert(1)"
    db.session.commit()
    assert (
        client.get(f"/t/{token}/{item_id}", headers={"User-Agent": BROWSER_UA}).status_code == 404
    )
    assert _clicks() == [(item_id, True)]


def test_head_requests_bots_and_scanners_are_not_counted(app, make_email):
    rt = app.extensions["mailer"]
    client = app.test_client()
    _issue, delivery_id, items = _sent_issue(rt, make_email)
    item_id, url, _ = items["First"]
    head = client.head(_path(rt, delivery_id, item_id), headers={"User-Agent": BROWSER_UA})
    assert head.status_code == 302 and head.headers["Location"] == url
    assert _clicks() == []
    bot = client.get(_path(rt, delivery_id, item_id), headers={"User-Agent": CURL_UA})
    assert bot.status_code == 302
    assert _clicks() == [(item_id, False)]
    # A security scanner follows the links seconds after delivery.
    _issue, fresh_delivery, fresh_items = _sent_issue(
        rt, make_email, titles=("Fresh",), sent_ago=timedelta(seconds=2), frequency=Frequency.DAILY
    )
    fresh_item = fresh_items["Fresh"][0]
    client.get(_path(rt, fresh_delivery, fresh_item), headers={"User-Agent": BROWSER_UA})
    assert _clicks()[-1] == (fresh_item, False)
    assert rt.popularity.ranking(db.session, days=7, now=utcnow(), limit=10) == []


def test_the_open_pixel_is_off_unless_enabled(app, env, make_email):
    rt = app.extensions["mailer"]
    _issue, delivery_id, _items = _sent_issue(rt, make_email)
    path = _path(rt, delivery_id, "open.gif")
    assert app.test_client().get(path, headers={"User-Agent": BROWSER_UA}).status_code == 404

    watching = digest_app(env, MAILER_OPEN_PIXEL="on").test_client()
    assert watching.get(path, headers={"User-Agent": CURL_UA}).status_code == 200
    assert db.session.scalar(select(Delivery.opened_at).where(Delivery.id == delivery_id)) is None
    resp = watching.get(path, headers={"User-Agent": BROWSER_UA})
    assert resp.status_code == 200 and resp.mimetype == "image/gif" and resp.data[:6] == b"GIF89a"
    db.session.expire_all()
    opened = db.session.scalar(select(Delivery.opened_at).where(Delivery.id == delivery_id))
    assert opened is not None
    watching.get(path, headers={"User-Agent": BROWSER_UA})  # the first open is the one kept
    db.session.expire_all()
    assert db.session.scalar(select(Delivery.opened_at).where(Delivery.id == delivery_id)) == opened
    assert db.session.scalar(select(func.count()).select_from(Click)) == 0


@pytest.mark.redis
def test_with_redis_stuck_a_click_still_reaches_the_article_without_waiting_twice(
    app, env, own_redis, make_email, caplog
):
    own = make_app(env, MAILER_REDIS_URL=own_redis.url)
    rt = own.extensions["mailer"]
    client = own.test_client()
    titles = ("First", "Second", "Third", "Fourth")
    _issue, delivery_id, items = _sent_issue(rt, make_email, titles=titles)

    def click(title: str) -> float:
        item_id, url, _ = items[title]
        started = time.monotonic()
        resp = client.get(_path(rt, delivery_id, item_id), headers={"User-Agent": BROWSER_UA})
        took = time.monotonic() - started
        assert resp.status_code == 302 and resp.headers["Location"] == url
        return took

    click("First")  # Redis answers: counted
    with own_redis.paused():  # accepts connections, answers nothing
        first = click("Second")
        second = click("Third")
    # The first click waits out the store's short timeout, once; the next one does not
    # try Redis during the back-off.
    assert first < 1.5
    assert second < 0.25
    assert len(redis_warnings(caplog)) == 1
    # Both stored for the issue's report; neither known to count for popularity.
    by_item = {items[t][0]: t for t in titles}
    assert [(by_item[i], counted) for i, counted in _clicks()] == [
        ("First", True), ("Second", False), ("Third", False)]

    time.sleep(redis_client.BACKOFF)  # the back-off is over: Redis is tried again
    click("Fourth")
    assert _clicks()[-1] == (items["Fourth"][0], True)
    assert len(redis_warnings(caplog)) == 1
