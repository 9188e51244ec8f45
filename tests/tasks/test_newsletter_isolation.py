"""Isolation between newsletters, with the real worker: composing, sending and scheduling
newsletter A never touches B's readers, B's "already sent" memory or B's archive, and two
schedules of two newsletters firing in the same minute each send once, each from its own
newsletter, to its own readers."""

from __future__ import annotations

import email
import email.policy
import time
from datetime import timedelta

import time_machine
from sqlalchemy import select

from mailer.clock import utcnow
from mailer.db import db
from mailer.models import (
    Article,
    Delivery,
    Issue,
    IssueStatus,
    Newsletter,
    ScheduleRun,
    Subscriber,
    SubscriberStatus,
    Subscription,
    SubscriptionStatus,
)
from mailer.services import deliveries, digests, newsletters
from mailer.tasks.schedules import fire_schedules
from tests.helpers.app import MailerRunner
from tests.helpers.delivery import wait_finished
from tests.tasks.test_schedules import a_minute_ago


def _reader(s, email_address: str, *letters: Newsletter) -> None:
    now = utcnow()
    person = Subscriber(email=email_address, status=SubscriberStatus.ACTIVE, confirmed_at=now,
                        source="test")
    s.add(person)
    s.flush()
    for letter in letters:
        s.add(Subscription(subscriber_id=person.id, newsletter_id=letter.id,
                           status=SubscriptionStatus.ACTIVE, confirmed_at=now))


def _setup(make_email) -> dict:
    """Newsletter A (the first) and B (sport, its own sender); a reader of each, one of both."""
    with db.transaction() as s:
        a = newsletters.first(s)
        b = Newsletter(slug="sport", name="The Sport Letter", from_name="Sport Desk",
                       from_address="sport@daily.example", list_id="sport.daily.example")
        s.add(b)
        s.flush()
        emails = {"a": make_email("a-only"), "b": make_email("b-only"), "ab": make_email("both")}
        _reader(s, emails["a"], a)
        _reader(s, emails["b"], b)
        _reader(s, emails["ab"], a, b)
        now = utcnow()
        for n in range(3):
            s.add(Article(title=f"Story {n} of the day", url=f"https://daily.example/iso-{n}",
                          summary="What happened.", published_at=now - timedelta(hours=n + 1)))
        return {"a": a.id, "b": b.id, "a_name": a.name, "emails": emails}


def _parsed(received):
    return email.message_from_bytes(received.data, policy=email.policy.default)


def test_sending_newsletter_a_never_touches_b(app, worker, smtp, make_email):
    rt = app.extensions["mailer"]
    world = _setup(make_email)
    emails = world["emails"]
    with db.transaction() as s:
        issue = digests.create_issue(s, rt.settings, rt.popularity, now=utcnow(), popular_m=0)
        a_issue = issue.id
        deliveries.start_send(s, a_issue, settings=rt.settings)
    assert wait_finished(a_issue) == "finished"

    # A's readers got it, from A; B's reader got nothing and has no delivery row.
    got = _parsed(smtp.wait_for(emails["a"])[0])
    assert got["List-Id"].startswith(f'"{world["a_name"]}" <') and "sport" not in got["List-Id"]
    assert "sport" not in got["From"]
    assert len(smtp.to(emails["ab"])) == 1
    time.sleep(1)  # any stray batch would be on its way by now
    assert smtp.to(emails["b"]) == []
    with db.transaction() as s:
        addressed = set(s.scalars(
            select(Subscriber.email).join(Delivery, Delivery.subscriber_id == Subscriber.id)
            .where(Delivery.issue_id == a_issue)))
    assert addressed == {emails["a"], emails["ab"]}

    # B's memory is untouched: its first issue proposes the same stories A just sent, and it
    # goes to B's readers only, from B.
    with db.transaction() as s:
        b_issue = digests.create_issue(s, rt.settings, rt.popularity, now=utcnow(),
                                       newsletter="sport", popular_m=0)
        assert b_issue.status == IssueStatus.DRAFT
        # Its window is its own first week, not "since A's issue".
        assert b_issue.window_start < s.get(Issue, a_issue).window_end - timedelta(days=6)
        titles = sorted(i.article.title for i in b_issue.items)
        assert titles == [f"Story {n} of the day" for n in range(3)]
        b_id = b_issue.id
        deliveries.start_send(s, b_id, settings=rt.settings)
    assert wait_finished(b_id) == "finished"
    sport = _parsed(smtp.wait_for(emails["b"])[0])
    assert sport["From"] == "Sport Desk <sport@daily.example>"
    assert sport["List-Id"] == '"The Sport Letter" <sport.daily.example>'
    assert len(smtp.wait_for(emails["ab"], count=2)) == 2
    assert len(smtp.to(emails["a"])) == 1

    # Each archive lists its own issue only.
    client = app.test_client()
    with app.app_context():
        a_slug = newsletters.first(db.session).slug
    sport_page = client.get("/archive/sport").get_data(as_text=True)
    a_page = client.get(f"/archive/{a_slug}").get_data(as_text=True)
    assert f"/archive/{b_id}" in sport_page and f"/archive/{a_issue}" not in sport_page
    assert f"/archive/{a_issue}" in a_page and f"/archive/{b_id}" not in a_page


def test_two_newsletters_schedules_firing_in_the_same_minute_send_each_once(
    app, worker, smtp, make_email
):
    world = _setup(make_email)
    emails = world["emails"]
    runner = MailerRunner(app)
    day, at = a_minute_ago("Europe/Berlin")
    with time_machine.travel(utcnow() - timedelta(hours=1)):
        for name, letter in (("Morning", None), ("Sport", "sport")):
            extra = ["--newsletter", letter] if letter else []
            made = runner.invoke(["schedule", "add", "--name", name, *extra, "--cron",
                                  f"{day} {at}", "--tz", "Europe/Berlin", "--popular", "0"])
            assert made.exit_code == 0, made.output
    # Several sweeps, as several scheduler hosts make them, then once more later.
    with app.app_context():
        for _ in range(3):
            fire_schedules()
    with db.transaction() as s:
        issues = {i.newsletter_id: i.id for i in s.scalars(select(Issue))}
        assert set(issues) == {world["a"], world["b"]}
        assert s.query(ScheduleRun).count() == 2
    for issue_id in issues.values():
        assert wait_finished(issue_id) == "finished"
    with app.app_context():
        assert fire_schedules() == {}
    time.sleep(1)

    # Each reader got each of their newsletters once, from that newsletter.
    assert len(smtp.to(emails["a"])) == 1 and len(smtp.to(emails["b"])) == 1
    both = sorted(_parsed(m)["List-Id"] for m in smtp.to(emails["ab"]))
    assert len(both) == 2 and both[1] == '"The Sport Letter" <sport.daily.example>'
    assert "sport" not in both[0]
    assert _parsed(smtp.to(emails["b"])[0])["From"] == "Sport Desk <sport@daily.example>"
    with db.transaction() as s:
        assert s.query(Issue).count() == 2
        assert {i.status for i in s.scalars(select(Issue))} == {IssueStatus.FINISHED}
