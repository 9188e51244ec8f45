"""The console's readers per newsletter: the subscribers list filters by newsletter (with the
status, search and pages) and lists each reader's newsletters; a reader's page shows their
subscriptions."""

from __future__ import annotations

import csv
import html
import io
import re
from datetime import timedelta

from mailer.clock import utcnow
from mailer.db import db
from mailer.models import (
    BounceEvent,
    BounceKind,
    Delivery,
    DeliveryStatus,
    Frequency,
    Issue,
    IssueStatus,
    Newsletter,
    Role,
    SubscriberStatus,
    Subscription,
    SubscriptionStatus,
)
from mailer.services import newsletters
from tests.helpers.app import statements
from tests.helpers.console import add_readers, login, text_of

SPORT = "The Sport Letter"


def _sport() -> Newsletter:
    letter = Newsletter(slug="sport", name=SPORT)
    db.session.add(letter)
    db.session.flush()
    return letter


def _subscribe(ids, letter: Newsletter, status=SubscriptionStatus.ACTIVE, **fields) -> None:
    db.session.add_all(Subscription(subscriber_id=i, newsletter_id=letter.id, status=status,
                                    **fields) for i in ids)


def _readers_of_two_letters() -> str:
    """3 readers of the first newsletter only; 52 of both (daily in sport); 2 who left sport
    and still read the first; 1 bounced reader of both. The first newsletter's name."""
    add_readers(3, prefix="daily.only")
    sport = _sport()
    _subscribe(add_readers(52, prefix="sporty"), sport, frequency=Frequency.DAILY,
               sections="sport")
    _subscribe(add_readers(2, prefix="left.sport"), sport, SubscriptionStatus.UNSUBSCRIBED,
               unsubscribed_at=utcnow())
    _subscribe(add_readers(1, prefix="bounced", status=SubscriberStatus.BOUNCED), sport)
    db.session.commit()
    return newsletters.first(db.session).name


def _statements(client, url: str) -> tuple[int, str]:
    """(SQL statements the page ran, its text)."""
    with statements(db.engine) as seen:
        resp = client.get(url)
    assert resp.status_code == 200
    return len(seen), text_of(resp)


def test_one_newsletter_offers_no_filter_but_names_it(client):
    login(client, Role.OPS, "ops@daily.example")
    add_readers(1, prefix="solo")
    db.session.commit()
    page = client.get("/admin/subscribers").get_data(as_text=True)
    assert 'id="newsletter-filter"' not in page
    first = newsletters.first(db.session).name
    assert f"solo0@example.com Reader 0 active {first} weekly all" in text_of(page)


def test_the_list_filters_by_newsletter_with_status_search_and_pages(client):
    first = _readers_of_two_letters()
    login(client, Role.OPS, "ops@daily.example")

    everyone = client.get("/admin/subscribers")
    assert 'id="newsletter-filter"' in everyone.get_data(as_text=True)
    text = text_of(everyone)
    assert "58 subscribers, newest first." in text
    # Each row lists the reader's newsletters; one they left says so.
    assert f"sporty51@example.com Reader 51 active {first}, {SPORT} weekly" in text
    assert f"left.sport1@example.com Reader 1 active {first}, {SPORT} (unsubscribed)" in text
    # Without a newsletter the status is the person's: nobody is unsubscribed as a person.
    assert "No subscriber matches" in text_of(client.get("/admin/subscribers?status=unsubscribed"))

    sport = client.get("/admin/subscribers?newsletter=sport")
    text = text_of(sport)
    assert "55 subscribers match" in text and "Page 1 of 2" in text
    assert "daily.only" not in text
    # The status, frequency and sections shown are the reader's in that newsletter.
    assert "Status in this newsletter" in text
    assert f"sporty51@example.com Reader 51 active {first}, {SPORT} daily Sport" in text
    assert "0 pending 52 active 2 unsubscribed 1 bounced 0 complained" in text
    # The pager's next page keeps the filter.
    body = sport.get_data(as_text=True)
    older = html.unescape(re.search(r'<a href="([^"]+)" rel="next">Older</a>', body).group(1))
    assert "newsletter=sport" in older and "page=2" in older
    second = text_of(client.get(older))
    assert "Page 2 of 2" in second and second.count("@example.com") == 5
    assert "daily.only" not in second and "sporty0@example.com" in second
    # So do the status tiles and the export.
    tiles = re.findall(r'href="([^"]*status=unsubscribed[^"]*)"', body)
    assert tiles and all("newsletter=sport" in html.unescape(t) for t in tiles)
    assert 'href="/admin/subscribers/export.csv?newsletter=sport"' in body

    left = text_of(client.get("/admin/subscribers?newsletter=sport&status=unsubscribed"))
    assert "2 subscribers match" in left
    assert f"left.sport0@example.com Reader 0 unsubscribed {first}, {SPORT} (unsubscribed)" in left
    active = text_of(client.get("/admin/subscribers?newsletter=sport&status=active"))
    assert "52 subscribers match" in active and "bounced0@" not in active
    bounced = text_of(client.get("/admin/subscribers?newsletter=sport&status=bounced"))
    assert "1 subscriber match" in bounced and "bounced0@example.com" in bounced
    found = text_of(client.get("/admin/subscribers?newsletter=sport&q=LEFT&status=active"))
    assert "No subscriber matches" in found
    found = text_of(client.get("/admin/subscribers?newsletter=sport&q=sporty1&section=sport"))
    assert "11 subscribers match" in found  # sporty1, sporty10..19
    assert "No subscriber matches" in text_of(
        client.get("/admin/subscribers?newsletter=sport&section=news&q=sporty"))

    exported = client.get("/admin/subscribers/export.csv?newsletter=sport&status=unsubscribed")
    rows = list(csv.DictReader(io.StringIO(exported.get_data(as_text=True))))
    assert [r["email"] for r in rows] == ["left.sport0@example.com", "left.sport1@example.com"]

    missing = client.get("/admin/subscribers?newsletter=nope")
    assert missing.status_code == 404 and "No newsletter 'nope'" in text_of(missing)


def test_the_lists_queries_do_not_grow_with_its_rows(client):
    _readers_of_two_letters()
    login(client, Role.OPS, "ops@daily.example")
    client.get("/admin/subscribers")  # the first request's one-off work out of the way
    full, text = _statements(client, "/admin/subscribers?newsletter=sport")
    assert text.count("@example.com") == 50
    short, text = _statements(client, "/admin/subscribers?newsletter=sport&page=2")
    assert text.count("@example.com") == 5
    assert full == short <= 10


def test_a_readers_page_shows_their_subscriptions_and_each_issues_newsletter(client):
    first = _readers_of_two_letters()
    sport = newsletters.by_slug(db.session, "sport")
    [left_id] = add_readers(1, prefix="left.cup")
    asked = utcnow() - timedelta(days=2)
    _subscribe([left_id], sport, SubscriptionStatus.PENDING, created_at=asked)
    issue = Issue(subject="Cup final", status=IssueStatus.FINISHED, newsletter_id=sport.id,
                  started_at=utcnow())
    db.session.add(issue)
    db.session.flush()
    delivery = Delivery(issue_id=issue.id, subscriber_id=left_id, status=DeliveryStatus.SENT,
                        attempts=1, sent_at=utcnow())
    db.session.add(delivery)
    db.session.flush()
    db.session.add(BounceEvent(key="b-1", subscriber_id=left_id, delivery_id=delivery.id,
                               issue_id=issue.id, kind=BounceKind.SOFT, source="smtp",
                               diagnostic="452 mailbox full"))
    db.session.commit()
    login(client, Role.OPS, "ops@daily.example")

    page = client.get(f"/admin/subscribers/{left_id}")
    text = text_of(page)
    held = text.split("Newsletters Newsletter Status Frequency Sections Since Left")[1]
    today = f"{utcnow():%Y-%m-%d}"
    assert held.startswith(f" {first} active weekly all {today}")
    assert (f"{SPORT} pending weekly all {asked:%Y-%m-%d %H:%M} UTC (asked, not confirmed) "
            "Bounces and complaints") in held
    assert 'href="/admin/newsletters/sport"' in page.get_data(as_text=True)
    # The issues sent to them and the bounce reports name each issue's newsletter.
    assert f"Cup final #{issue.id} {SPORT} sent" in text
    assert f"#{issue.id} {SPORT} 452 mailbox full" in text
    # The list shows the subscription waiting for its confirmation.
    listed = text_of(client.get("/admin/subscribers?q=left.cup"))
    assert f"left.cup0@example.com Reader 0 active {first}, {SPORT} (pending)" in listed

    gone = client.get("/admin/subscribers?q=left.sport0").get_data(as_text=True)
    gone_id = re.search(r'href="/admin/subscribers/(\d+)">left.sport0@', gone).group(1)
    row = text_of(client.get(f"/admin/subscribers/{gone_id}")).split(f"{SPORT} ")[1]
    assert row.startswith(f"unsubscribed weekly all {today}")
    assert row.split("Bounces")[0].count(today) == 2  # since, and when they left

    bounced = client.get("/admin/subscribers?q=bounced0").get_data(as_text=True)
    bounced_id = re.search(r'href="/admin/subscribers/(\d+)">bounced0@', bounced).group(1)
    text = text_of(client.get(f"/admin/subscribers/{bounced_id}"))
    assert "The address bounced: no newsletter is sent to it" in text
