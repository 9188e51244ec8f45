"""Managing newsletters: create and update check every field (nothing written when one is
refused), the list counts readers per newsletter in one grouped query, and a newsletter is
removed only when nothing was ever sent from it."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from mailer.clock import utcnow
from mailer.db import db
from mailer.errors import Conflict, ValidationError
from mailer.models import (
    Issue,
    IssueStatus,
    Newsletter,
    Schedule,
    Subscriber,
    SubscriberEvent,
    SubscriberStatus,
    Subscription,
    SubscriptionStatus,
)
from mailer.services import newsletters
from tests.helpers.app import statements

# These tests make every newsletter they use, the first one too.
pytestmark = pytest.mark.usefixtures("no_newsletters")

SECTIONS = {"news": "News", "business": "Business", "sport": "Sport", "culture": "Culture"}


def _create(data, **kw):
    return newsletters.create(db.session, data, known_sections=SECTIONS, **kw)


def _count() -> int:
    return db.session.scalar(select(func.count()).select_from(Newsletter))


def test_create_takes_every_field_and_defaults_the_rest(app):
    created = _create({
        "slug": "morning-briefing", "name": "  Morning Briefing ",
        "description": "Five stories\nbefore breakfast.", "from": "Morning Desk <Desk@Daily.Example>",
        "reply_to": "letters@daily.example", "list_id": "<Morning.Daily.Example>",
        "public": False, "signup_default": "on", "latest_n": 7, "popular_m": "3",
        "min_items": 2, "sections": "sport,news",
    }, defaults=(10, 5, 1))
    db.session.commit()
    item = newsletters.as_dict(db.session.get(Newsletter, created.id))
    assert {k: item[k] for k in ("slug", "name", "description", "from", "reply_to", "list_id",
                                 "public", "signup_default", "archived", "latest_n",
                                 "popular_m", "min_items", "sections")} == {
        "slug": "morning-briefing", "name": "Morning Briefing",
        "description": "Five stories\nbefore breakfast.",
        "from": "Morning Desk <desk@daily.example>", "reply_to": "letters@daily.example",
        "list_id": "morning.daily.example", "public": False, "signup_default": True,
        "archived": False, "latest_n": 7, "popular_m": 3, "min_items": 2,
        "sections": ["news", "sport"],
    }
    plain = _create({"slug": "sport", "name": "Sport"}, defaults=(8, 4, 2))
    assert (plain.public, plain.signup_default, plain.from_address, plain.list_id,
            plain.latest_n, plain.popular_m, plain.min_items, plain.sections) == (
        True, False, None, None, 8, 4, 2, "")
    # Every section ticked means all of them, like a reader's choice.
    assert _create({"slug": "all", "name": "All", "sections": list(SECTIONS)}).sections == ""


@pytest.mark.parametrize("data, field", [
    ({"name": "No slug"}, "slug"),
    ({"slug": "Morning", "name": "Capitals"}, "slug"),
    ({"slug": "morning briefing", "name": "Space"}, "slug"),
    ({"slug": "-morning", "name": "Leading hyphen"}, "slug"),
    ({"slug": "a" * 61, "name": "Too long"}, "slug"),
    ({"slug": "2027", "name": "Digits only, like an issue id"}, "slug"),
    ({"slug": "morning"}, "name"),
    ({"slug": "morning", "name": "   "}, "name"),
    ({"slug": "morning", "name": "x" * 201}, "name"),
    ({"slug": "morning", "name": "Line\nbreak"}, "name"),
    ({"slug": "morning", "name": "M", "from": "Desk <not an address>"}, "from"),
    ({"slug": "morning", "name": "M", "from": "Desk <desk@daily.example>\r\nBcc: x@y.z"}, "from"),
    ({"slug": "morning", "name": "M", "from": 7}, "from"),
    ({"slug": "morning", "name": "M", "reply_to": "nobody"}, "reply_to"),
    ({"slug": "morning", "name": "M", "list_id": "nodots"}, "list_id"),
    ({"slug": "morning", "name": "M", "list_id": "has space.example"}, "list_id"),
    ({"slug": "morning", "name": "M", "latest_n": 101}, "latest_n"),
    ({"slug": "morning", "name": "M", "popular_m": -1}, "popular_m"),
    ({"slug": "morning", "name": "M", "min_items": "many"}, "min_items"),
    ({"slug": "morning", "name": "M", "latest_n": 0, "popular_m": 0}, "latest_n"),
    ({"slug": "morning", "name": "M", "sections": "news,weather"}, "sections"),
    ({"slug": "morning", "name": "M", "public": "maybe"}, "public"),
    ({"slug": "morning", "name": "M", "accent_color": "#000000"}, "accent_color"),
])
def test_create_refuses_bad_fields_and_writes_nothing(app, data, field):
    before = _count()
    with pytest.raises(ValidationError) as refused:
        _create(data)
    assert refused.value.field == field and refused.value.message
    db.session.rollback()
    assert _count() == before


def test_a_slug_or_list_id_taken_is_a_conflict(app):
    _create({"slug": "morning", "name": "Morning", "list_id": "morning.daily.example"})
    db.session.commit()
    with pytest.raises(Conflict, match="already a newsletter 'morning'"):
        _create({"slug": "morning", "name": "Another"})
    db.session.rollback()
    with pytest.raises(Conflict, match="List-Id"):
        _create({"slug": "evening", "name": "Evening", "list_id": "MORNING.daily.example"})
    db.session.rollback()
    assert _count() == 1


def test_a_list_id_derived_from_a_slug_is_taken_too(app):
    # The first newsletter of an upgraded site keeps newsletter.<domain>: a newsletter whose
    # slug is "newsletter" would derive the same List-Id, and the other way round.
    _create({"slug": "the-daily", "name": "The Daily", "list_id": "newsletter.daily.example"})
    _create({"slug": "sport", "name": "Sport"}, sender_domain="daily.example")
    db.session.commit()
    with pytest.raises(Conflict, match="'newsletter.daily.example' is already newsletter "
                                       "'the-daily'"):
        _create({"slug": "newsletter", "name": "N"}, sender_domain="daily.example")
    db.session.rollback()
    with pytest.raises(Conflict, match="already newsletter 'sport'"):
        _create({"slug": "s", "name": "S", "list_id": "Sport.Daily.Example"},
                sender_domain="daily.example")
    db.session.rollback()
    sport = db.session.scalar(select(Newsletter).where(Newsletter.slug == "sport"))
    with pytest.raises(Conflict):
        newsletters.update(db.session, sport, {"list_id": "newsletter.daily.example"},
                           sender_domain="daily.example")
    db.session.rollback()
    # Changing something else never trips over it; an own List-Id elsewhere is fine.
    newsletters.update(db.session, sport, {"name": "Sport letter"}, sender_domain="daily.example")
    newsletters.update(db.session, sport, {"list_id": "sport.news.example"},
                       sender_domain="daily.example")
    db.session.commit()
    assert _count() == 2


def test_update_changes_only_what_is_given(app):
    nl = _create({"slug": "morning", "name": "Morning", "from": "Desk <desk@daily.example>",
                  "latest_n": 6, "sections": "news"})
    db.session.commit()
    newsletters.update(db.session, nl, {"name": "Morning Briefing", "public": False},
                       known_sections=SECTIONS)
    db.session.commit()
    item = newsletters.as_dict(db.session.get(Newsletter, nl.id))
    assert (item["name"], item["public"], item["from"], item["latest_n"], item["sections"]) == (
        "Morning Briefing", False, "Desk <desk@daily.example>", 6, ["news"])
    # '' resets the sender to MAILER_FROM and the sections to all of them.
    newsletters.update(db.session, nl, {"from": "", "sections": ""}, known_sections=SECTIONS)
    assert (nl.from_name, nl.from_address, nl.sections) == (None, None, "")

    newsletters.update(db.session, nl, {"archived": True}, known_sections=SECTIONS)
    db.session.commit()
    archived_at = nl.archived_at
    assert archived_at is not None and newsletters.as_dict(nl)["archived"]
    # Archiving again keeps the first time; unarchiving clears it.
    newsletters.update(db.session, nl, {"archived": True}, known_sections=SECTIONS)
    assert nl.archived_at == archived_at
    newsletters.update(db.session, nl, {"archived": False}, known_sections=SECTIONS)
    assert nl.archived_at is None

    with pytest.raises(ValidationError) as refused:
        newsletters.update(db.session, nl, {"slug": "mornings"}, known_sections=SECTIONS)
    assert refused.value.field == "slug"
    # One bad field: none of the good ones given with it is set.
    with pytest.raises(ValidationError):
        newsletters.update(db.session, nl, {"name": "Changed", "popular_m": 1000},
                           known_sections=SECTIONS)
    assert nl.name == "Morning Briefing"


def _reader(email: str, person=SubscriberStatus.ACTIVE, **subscriptions) -> Subscriber:
    sub = Subscriber(email=email, status=person)
    db.session.add(sub)
    db.session.flush()
    for newsletter_id, status in subscriptions.items():
        db.session.add(Subscription(subscriber_id=sub.id, newsletter_id=int(newsletter_id[1:]),
                                    status=status))
    db.session.flush()
    return sub


def test_the_list_counts_readers_per_newsletter_in_one_grouped_query(app):
    a = _create({"slug": "a", "name": "A"})
    b = _create({"slug": "b", "name": "B"})
    c = _create({"slug": "c", "name": "C"})
    active, pending, gone = (SubscriptionStatus.ACTIVE, SubscriptionStatus.PENDING,
                             SubscriptionStatus.UNSUBSCRIBED)
    for n in range(3):
        _reader(f"both{n}@example.com", **{f"n{a.id}": active, f"n{b.id}": active})
    _reader("waiting@example.com", SubscriberStatus.PENDING, **{f"n{a.id}": pending})
    _reader("left-a@example.com", **{f"n{a.id}": gone, f"n{b.id}": active})
    _reader("bounced@example.com", SubscriberStatus.BOUNCED, **{f"n{b.id}": active})
    db.session.commit()

    with statements(db.engine) as ran:
        listed = newsletters.with_counts(db.session)
    assert len(ran) == 2  # the counts, the newsletters: no query per newsletter
    counts = {n.slug: c for n, c in listed}
    assert counts == {
        "a": {"active": 3, "pending": 1, "unsubscribed": 1, "suppressed": 0},
        "b": {"active": 4, "pending": 0, "unsubscribed": 0, "suppressed": 1},
        "c": {"active": 0, "pending": 0, "unsubscribed": 0, "suppressed": 0},
    }
    assert newsletters.counts_for(db.session, b) == counts["b"]
    assert newsletters.counts_for(db.session, c) == counts["c"]


def _issue(newsletter, status, started=False):
    issue = Issue(subject=f"{status}", newsletter_id=newsletter.id, status=status,
                  started_at=utcnow() if started else None)
    db.session.add(issue)
    db.session.flush()
    return issue


@pytest.mark.parametrize("status, started", [
    (IssueStatus.FINISHED, True), (IssueStatus.SENDING, True), (IssueStatus.PAUSED, True),
    (IssueStatus.CANCELLED, True),  # cancelled after some of it went out
])
def test_a_newsletter_sent_from_is_not_removed(app, status, started):
    _create({"slug": "other", "name": "Other"})
    nl = _create({"slug": "morning", "name": "Morning"})
    _issue(nl, status, started)
    db.session.commit()
    with pytest.raises(newsletters.WasSent, match="Archive it instead"):
        newsletters.remove(db.session, nl, settings=app.extensions["mailer"].settings)
    db.session.rollback()
    assert db.session.scalar(select(Newsletter.id).where(Newsletter.slug == "morning"))


def test_the_only_newsletter_is_not_removed(app):
    nl = _create({"slug": "only", "name": "Only"})
    db.session.commit()
    with pytest.raises(Conflict, match="only one"):
        newsletters.remove(db.session, nl, settings=app.extensions["mailer"].settings)


def test_removing_takes_its_drafts_schedules_and_subscriptions(app):
    keep = _create({"slug": "keep", "name": "Keep"})
    nl = _create({"slug": "mistake", "name": "Mistake"})
    kept_draft = _issue(keep, IssueStatus.DRAFT)
    for status in (IssueStatus.DRAFT, IssueStatus.SCHEDULED, IssueStatus.SKIPPED,
                   IssueStatus.CANCELLED):
        _issue(nl, status)
    db.session.add(Schedule(name="Mistake weekly", cron="0 7 * * 1", newsletter_id=nl.id))
    only_here = _reader("only@example.com", **{f"n{nl.id}": SubscriptionStatus.ACTIVE})
    both = _reader("both@example.com", **{f"n{nl.id}": SubscriptionStatus.ACTIVE,
                                          f"n{keep.id}": SubscriptionStatus.ACTIVE})
    # Still to confirm the other one: something open remains, so they stay.
    waiting = _reader("waiting@example.com", SubscriberStatus.PENDING,
                      **{f"n{nl.id}": SubscriptionStatus.PENDING,
                         f"n{keep.id}": SubscriptionStatus.PENDING})
    db.session.commit()
    only_id, both_id, nl_id, waiting_id = only_here.id, both.id, nl.id, waiting.id

    newsletters.remove(db.session, nl, settings=app.extensions["mailer"].settings)
    db.session.commit()
    assert db.session.get(Newsletter, nl_id) is None
    assert db.session.scalars(select(Issue.id)).all() == [kept_draft.id]
    assert db.session.scalar(select(func.count()).select_from(Schedule)) == 0
    assert sorted(db.session.scalars(select(Subscription.subscriber_id))) == [both_id,
                                                                              waiting_id]
    # Whoever read only the removed newsletter has left, as if they had unsubscribed.
    assert db.session.get(Subscriber, only_id).status == SubscriberStatus.UNSUBSCRIBED
    assert db.session.get(Subscriber, both_id).status == SubscriberStatus.ACTIVE
    assert db.session.get(Subscriber, waiting_id).status == SubscriberStatus.PENDING
    assert db.session.scalars(select(SubscriberEvent.subscriber_id).where(
        SubscriberEvent.kind == "unsubscribed")).all() == [only_id]
