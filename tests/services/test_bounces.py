"""services.bounces.record: who a report is about, the policy, each report recorded once."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from mailer.bounces import Kind, Report, Source
from mailer.clock import utcnow
from mailer.db import db
from mailer.errors import Conflict
from mailer.models import (
    BounceEvent,
    Delivery,
    DeliveryStatus,
    Subscriber,
    SubscriberEvent,
    SubscriberStatus,
    Suppression,
)
from mailer.services import bounces
from mailer.services import subscriptions as subs
from mailer.tokens import BOUNCE, MESSAGE_ID
from tests.helpers.delivery import add_readers, new_issue

DAY = timedelta(days=1)


def reader(email: str) -> Subscriber:
    with db.transaction() as s:
        sub = s.scalar(select(Subscriber).where(Subscriber.email == email))
        s.expunge(sub)
        return sub


def mailed(email: str, issue_id: int, sent_at=None) -> int:
    """A sent delivery of the issue to the reader; its id."""
    with db.transaction() as s:
        sub_id = s.scalar(select(Subscriber.id).where(Subscriber.email == email))
        return s.execute(
            insert(Delivery)
            .values(issue_id=issue_id, subscriber_id=sub_id, status=DeliveryStatus.SENT,
                    attempts=1, sent_at=sent_at or utcnow())
            .returning(Delivery.id)
        ).scalar()


def record(settings, report: Report, now=None) -> bounces.Outcome:
    with db.transaction() as s:
        return bounces.record(s, settings, report, now=now)


def events(email: str | None = None) -> list[BounceEvent]:
    with db.transaction() as s:
        query = select(BounceEvent).order_by(BounceEvent.id)
        if email:
            query = query.join(Subscriber, Subscriber.id == BounceEvent.subscriber_id).where(
                Subscriber.email == email
            )
        rows = list(s.scalars(query))
        s.expunge_all()
        return rows


def history(email: str) -> list[tuple[str, str | None]]:
    with db.transaction() as s:
        return [
            (e.kind, e.detail)
            for e in s.scalars(
                select(SubscriberEvent)
                .join(Subscriber)
                .where(Subscriber.email == email)
                .order_by(SubscriberEvent.id)
            )
        ]


def hard(key: str, **kw) -> Report:
    return Report(source=Source.PIPE, kind=Kind.HARD, key=key, **kw)


def soft(key: str, **kw) -> Report:
    return Report(source=Source.IMAP, kind=Kind.SOFT, key=key, **kw)


def test_a_hard_bounce_sets_the_reader_bounced_and_keeps_its_story(rt):
    a, b = add_readers(2)
    issue_id = new_issue()
    delivery_id = mailed(a, issue_id)
    mailed(b, issue_id)
    when = utcnow() - timedelta(hours=2)
    out = record(rt.settings, hard(
        "dsn-1", delivery_id=delivery_id, status="5.1.1", at=when,
        diagnostic="smtp; 550 5.1.1 <x@example.com>: Recipient address rejected " + "x" * 2000,
    ))
    assert (out.result, out.changed_to, out.issue_id) == ("recorded", "bounced", issue_id)
    sub = reader(a)
    assert sub.status == SubscriberStatus.BOUNCED and sub.last_bounce_at == when
    assert sub.bounce_score == 0
    (event,) = events(a)
    assert (event.kind, event.source, event.status) == ("hard", "pipe", "5.1.1")
    assert (event.delivery_id, event.issue_id, event.at) == (delivery_id, issue_id, when)
    assert event.diagnostic.startswith("smtp; 550 5.1.1") and len(event.diagnostic) == 1000
    ((kind, detail),) = [h for h in history(a) if h[0] == "bounced"]
    assert detail.startswith("pipe: smtp; 550 5.1.1")
    assert reader(b).status == SubscriberStatus.ACTIVE and events(b) == []


def test_the_same_report_twice_is_recorded_once(rt):
    (a,) = add_readers(1)
    delivery_id = mailed(a, new_issue())
    report = soft("dsn-twice", delivery_id=delivery_id, status="4.2.2")
    assert record(rt.settings, report).result == "recorded"
    again = record(rt.settings, report, now=utcnow() + 3 * DAY)
    assert again.result == "duplicate"
    assert len(events(a)) == 1 and reader(a).bounce_score == 1
    # The key is per way in: a provider's event id may equal another provider's.
    assert record(rt.settings, replace(report, source=Source.SES)).result == "recorded"


def test_the_same_report_from_two_processes_at_once_counts_once(rt):
    (a,) = add_readers(1)
    delivery_id = mailed(a, new_issue())
    report = soft("dsn-race", delivery_id=delivery_id, diagnostic="452 4.2.2 mailbox full")
    start = threading.Barrier(4)
    results: list[str] = []

    def deliver():
        with Session(db.engine) as session:
            start.wait()
            out = bounces.record(session, rt.settings, report)
            session.commit()
            results.append(out.result)

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["duplicate"] * 3 + ["recorded"]
    assert len(events(a)) == 1 and reader(a).bounce_score == 1


def test_soft_bounces_count_once_a_day_start_again_when_stale_and_bounce_at_the_limit(rt):
    (a,) = add_readers(1)
    settings = replace(rt.settings, bounce_soft_limit=3, bounce_stale_days=7)
    day0 = utcnow() - 20 * DAY
    delivery_id = mailed(a, new_issue(), sent_at=day0)
    n = iter(range(100))

    def bounce(at):
        report = soft(f"soft-{next(n)}", delivery_id=delivery_id, status="4.2.2", at=at)
        return record(settings, report, now=at)

    assert bounce(day0).changed_to is None and reader(a).bounce_score == 1
    assert bounce(day0 + timedelta(hours=5)).result == "recorded"  # in the history ...
    assert reader(a).bounce_score == 1  # ... but counted once that day
    assert bounce(day0 + DAY).result == "recorded"
    assert reader(a).bounce_score == 2
    # Eight quiet days: the score starts again.
    later = day0 + 9 * DAY
    assert bounce(later).changed_to is None
    sub = reader(a)
    assert (sub.bounce_score, sub.last_bounce_at, sub.status) == (1, later, "active")
    assert bounce(later + DAY).changed_to is None
    assert bounce(later + 2 * DAY).changed_to == SubscriberStatus.BOUNCED
    sub = reader(a)
    assert (sub.bounce_score, sub.status) == (3, "bounced")
    assert len(events(a)) == 6
    ((_, detail),) = [h for h in history(a) if h[0] == "bounced"]
    assert detail.startswith("3 temporary bounces; the last: imap: 4.2.2")


def test_a_complaint_suppresses_the_address_until_the_reader_signs_up_and_confirms(rt):
    (a,) = add_readers(1)
    delivery_id = mailed(a, new_issue())
    report = Report(source=Source.MAILGUN, kind=Kind.COMPLAINT, key="fbl-1",
                    delivery_id=delivery_id)
    out = record(rt.settings, report)
    assert (out.result, out.changed_to) == ("recorded", SubscriberStatus.COMPLAINED)
    sub = reader(a)
    assert sub.status == "complained" and sub.complained_at is not None
    with db.transaction() as s:
        held = s.get(Suppression, rt.email_hash(a))
        assert held is not None and held.reason == "complained"
        # A confirmation link mailed before the complaint opens nothing.
        with pytest.raises(Conflict):
            subs.confirm(s, sub.uid, sub.complained_at - timedelta(seconds=1),
                         hasher=rt.email_hash)
        assert subs.confirmations_owed(s, utcnow() + DAY, utcnow() - 30 * DAY) == []
    # Signing up again asks for a confirmation; confirming makes them active again.
    consent = subs.ConsentInfo(source="form", wording="Yes, send me the digest.")
    with db.transaction() as s:
        asked = subs.subscribe(s, email=a, name=None, frequency=sub.frequency, sections="",
                               consent=consent, cooldown=timedelta(0),
                               now=utcnow() + timedelta(seconds=1))
    assert asked.send_confirmation and reader(a).status == "complained"
    with db.transaction() as s:
        confirmed = subs.confirm(s, sub.uid, reader(a).confirm_requested_at,
                                 hasher=rt.email_hash, now=utcnow() + timedelta(seconds=2))
        assert confirmed.status == SubscriberStatus.ACTIVE
        assert s.get(Suppression, rt.email_hash(a)) is None
    assert [k for k, _ in history(a)][-3:] == ["complained", "signup-repeated", "confirmed"]


def test_an_import_never_brings_a_complained_address_back(rt):
    (a,) = add_readers(1)
    record(rt.settings, Report(source=Source.PIPE, kind=Kind.COMPLAINT, key="fbl-2",
                               delivery_id=mailed(a, new_issue())))
    with db.transaction() as s:
        subs.erase(s, s.scalar(select(Subscriber).where(Subscriber.email == a)), rt.email_hash)
    (event,) = events()
    # The issue keeps its count; the reader and the server's words are gone.
    assert (event.kind, event.subscriber_id, event.diagnostic) == ("complaint", None, None)
    with db.transaction() as s:
        report = subs.import_rows(s, [subs.ImportRow(1, a)], source="old list",
                                  known_sections=(), hasher=rt.email_hash,
                                  report=subs.ImportReport())
        assert (report.added, report.suppressed) == (0, 1)


def test_a_new_signup_on_either_database_starts_with_no_bounce_score(rt, make_email):
    email = make_email()
    consent = subs.ConsentInfo(source="form", wording="Yes.")
    with db.transaction() as s:
        out = subs.subscribe(s, email=email, name="Ann", frequency=subs.Frequency.WEEKLY,
                             sections="", consent=consent, cooldown=timedelta(minutes=10))
    assert out.send_confirmation
    sub = reader(email)
    assert (sub.status, sub.bounce_score, sub.last_bounce_at) == ("pending", 0, None)


def test_reports_are_matched_by_token_message_id_or_a_recently_mailed_address(rt):
    a, b, c, old = add_readers(4)
    issue_id = new_issue()
    da, db_, dc = (mailed(x, issue_id) for x in (a, b, c))
    mailed(old, issue_id, sent_at=utcnow() - 40 * DAY)
    with db.transaction() as s:  # (and welcomed long ago)
        s.execute(update(Subscriber).where(Subscriber.email == old)
                  .values(confirmed_at=utcnow() - 60 * DAY))
    token = rt.tokens.sign(BOUNCE, str(da))
    out = record(rt.settings, hard("verp", token=token, addresses=(b,)))
    assert (out.result, out.subscriber_id) == ("recorded", reader(a).id)

    forged = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    out = record(rt.settings, hard("forged", token=forged, addresses=(b,)))
    assert (out.result, out.reason) == ("ignored", "forged or unknown bounce token")

    tag = rt.tokens.keyed_hash(MESSAGE_ID, str(db_))[:10]
    out = record(rt.settings, soft("mid", message_id=f"<{db_}.{tag}@daily.example>"))
    assert (out.result, out.subscriber_id, out.issue_id) == ("recorded", reader(b).id, issue_id)
    (event,) = events(b)
    assert event.delivery_id == db_

    # Another installation's Message-ID is not ours: the addresses decide.
    out = record(rt.settings, soft("other-mid", message_id=f"<{db_}.0123456789@x.example>",
                                   addresses=("nobody@example.org", f" <{c.upper()}> ")))
    assert (out.result, out.subscriber_id) == ("recorded", reader(c).id)
    assert events(c)[0].delivery_id == dc

    out = record(rt.settings, hard("old", addresses=(old,)))
    assert (out.result, out.reason) == ("ignored", "about nobody we mailed recently")
    assert reader(old).status == "active"
    out = record(rt.settings, hard("none", addresses=("a stranger",)))
    assert (out.result, out.reason) == ("ignored", "names no recipient")


def test_a_bounced_confirmation_mail_is_about_the_pending_reader(rt, make_email):
    email = make_email()
    consent = subs.ConsentInfo(source="form", wording="Yes.")
    with db.transaction() as s:
        subs.subscribe(s, email=email, name=None, frequency=subs.Frequency.WEEKLY,
                       sections="", consent=consent, cooldown=timedelta(minutes=10))
    out = record(rt.settings, hard("confirm-dsn", addresses=(email,)))
    assert (out.result, out.changed_to, out.issue_id) == ("recorded", "bounced", None)


def test_reports_about_erased_readers_and_ignored_kinds_change_nothing(rt):
    a, b = add_readers(2)
    issue_id = new_issue()
    da, _ = mailed(a, issue_id), mailed(b, issue_id)
    with db.transaction() as s:
        subs.erase(s, s.scalar(select(Subscriber).where(Subscriber.email == a)), rt.email_hash)
    out = record(rt.settings, hard("erased", delivery_id=da, addresses=(a,)))
    assert (out.result, out.reason) == ("ignored", "the reader erased their data")
    out = record(rt.settings, hard("no-such-delivery", delivery_id=da + 1000))
    assert out.result == "ignored"
    out = record(rt.settings, Report(source=Source.PIPE, kind=Kind.IGNORED, key="vacation",
                                     addresses=(b,), reason="an auto-reply"))
    assert (out.result, out.reason) == ("ignored", "an auto-reply")
    assert events() == [] and reader(b).status == "active"


def test_leaving_readers_keep_their_status_but_get_the_history(rt):
    a, b = add_readers(2)
    issue_id = new_issue()
    da, dbb = mailed(a, issue_id), mailed(b, issue_id)
    with db.transaction() as s:
        s.execute(update(Subscriber).where(Subscriber.email == a)
                  .values(status=SubscriberStatus.UNSUBSCRIBED))
    out = record(rt.settings, hard("late", delivery_id=da))
    assert (out.result, out.changed_to) == ("recorded", None)
    assert reader(a).status == "unsubscribed" and len(events(a)) == 1
    # A complaint is stronger than a bounce, and a bounce never undoes a complaint.
    record(rt.settings, hard("first", delivery_id=dbb))
    assert record(rt.settings, Report(source=Source.SES, kind=Kind.COMPLAINT, key="fbl",
                                      delivery_id=dbb)).changed_to == "complained"
    assert record(rt.settings, hard("after", delivery_id=dbb)).changed_to is None
    assert reader(b).status == "complained"
    with db.transaction() as s:
        counts = dict(s.execute(select(BounceEvent.kind, func.count())
                                .where(BounceEvent.issue_id == issue_id)
                                .group_by(BounceEvent.kind)).all())
    assert counts == {"hard": 3, "complaint": 1}


def test_metrics_count_every_report_by_way_in_and_result(rt, client):
    (a,) = add_readers(1)
    delivery_id = mailed(a, new_issue())
    record(rt.settings, soft("m1", delivery_id=delivery_id))
    record(rt.settings, soft("m1", delivery_id=delivery_id))  # duplicate
    record(rt.settings, hard("m2", addresses=("stranger@example.org",)))  # ignored
    record(rt.settings, Report(source=Source.SENDGRID, kind=Kind.COMPLAINT, key="e1",
                               delivery_id=delivery_id))
    with db.transaction() as s:
        bounces.count(s, Source.SENDGRID, "refused")
    body = client.get("/metrics").get_data(as_text=True)
    assert 'mailer_bounces_total{kind="soft"} 1' in body
    assert 'mailer_bounces_total{kind="hard"} 0' in body
    assert "mailer_complaints_total 1" in body
    for line in ('{source="imap",result="recorded"} 1', '{source="imap",result="duplicate"} 1',
                 '{source="pipe",result="ignored"} 1', '{source="sendgrid",result="recorded"} 1',
                 '{source="sendgrid",result="refused"} 1'):
        assert f"mailer_bounce_reports_total{line}\n" in body
