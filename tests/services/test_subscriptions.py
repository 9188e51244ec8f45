"""A reader is one person with a subscription per newsletter: signup, confirmation,
unsubscribe from one or from everything, import and erasure, on both databases."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from mailer.clock import utcnow
from mailer.db import db
from mailer.models import (
    ConsentRecord,
    Frequency,
    Newsletter,
    Subscriber,
    SubscriberStatus,
    Subscription,
)
from mailer.services import newsletters
from mailer.services import subscriptions as subs

CONSENT = subs.ConsentInfo(source="form", wording="Yes.")


def add_newsletter(slug: str, **fields) -> int:
    with db.transaction() as s:
        n = Newsletter(slug=slug, name=slug.title(), **fields)
        s.add(n)
        s.flush()
        return n.id


def first_id() -> int:
    with db.transaction() as s:
        return newsletters.first(s).id


def signup(email: str, ids=None, *, frequency=Frequency.WEEKLY, sections="", cooldown=10):
    with db.transaction() as s:
        return subs.subscribe(s, email=email, name=None, frequency=frequency, sections=sections,
                              consent=CONSENT, cooldown=timedelta(minutes=cooldown),
                              newsletter_ids=ids)


def confirm(email: str) -> None:
    with db.transaction() as s:
        sub = s.scalar(select(Subscriber).where(Subscriber.email == email))
        subs.confirm(s, sub.uid, sub.confirm_requested_at, CONSENT)


def person(email: str) -> Subscriber:
    with db.transaction() as s:
        sub = s.scalar(select(Subscriber).where(Subscriber.email == email))
        s.expunge(sub)
        return sub


def held(email: str) -> dict[int, tuple[str, str, str]]:
    """newsletter id -> (status, frequency, sections) of the reader's subscriptions."""
    with db.transaction() as s:
        return {
            n: (str(st), str(f), sec)
            for n, st, f, sec in s.execute(
                select(Subscription.newsletter_id, Subscription.status, Subscription.frequency,
                       Subscription.sections)
                .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
                .where(Subscriber.email == email)
            )
        }


def test_a_plain_signup_asks_for_the_default_newsletters_and_one_confirmation_starts_them(
    rt, make_email
):
    first = first_id()
    sport = add_newsletter("sport", signup_default=True)
    add_newsletter("politics")  # offered, not a default
    email = make_email()
    assert signup(email, frequency=Frequency.DAILY, sections="news").send_confirmation
    assert held(email) == {first: ("pending", "daily", "news"), sport: ("pending", "daily", "news")}
    confirm(email)
    assert person(email).status == SubscriberStatus.ACTIVE
    assert held(email) == {first: ("active", "daily", "news"), sport: ("active", "daily", "news")}


def test_the_first_newsletter_is_the_default_when_none_is_marked(rt, make_email):
    with db.transaction() as s:
        s.execute(Newsletter.__table__.update().values(signup_default=False))
    add_newsletter("sport")
    email = make_email()
    signup(email)
    assert held(email) == {first_id(): ("pending", "weekly", "")}


def test_an_archived_default_is_not_asked_for(rt, make_email):
    first = first_id()
    add_newsletter("sport", signup_default=True, archived_at=utcnow())
    email = make_email()
    signup(email)
    assert held(email) == {first: ("pending", "weekly", "")}
    # Only when the default is archived too does the first newsletter stand in for it.
    with db.transaction() as s:
        s.execute(Newsletter.__table__.update().values(signup_default=True, archived_at=utcnow()))
    other = make_email()
    signup(other)
    assert held(other) == {first: ("pending", "weekly", "")}


def test_a_signup_names_its_newsletters(rt, make_email):
    sport, politics = add_newsletter("sport"), add_newsletter("politics")
    email = make_email()
    signup(email, [politics, sport, sport])
    assert held(email) == {sport: ("pending", "weekly", ""), politics: ("pending", "weekly", "")}


def test_an_active_reader_asking_for_another_newsletter_confirms_it_by_mail(rt, make_email):
    first, sport = first_id(), add_newsletter("sport")
    email = make_email()
    signup(email, [first], frequency=Frequency.DAILY)
    confirm(email)
    with db.transaction() as s:
        assert not subs.has_pending(s, person(email).id)
    # Asks again (after the cooldown) for sport, and for the first again.
    assert signup(email, [first, sport], cooldown=0).send_confirmation
    assert held(email) == {first: ("active", "daily", ""), sport: ("pending", "weekly", "")}
    with db.transaction() as s:
        assert subs.has_pending(s, person(email).id)
    confirm(email)
    assert held(email) == {first: ("active", "daily", ""), sport: ("active", "weekly", "")}
    # The link was for that request: used once.
    with pytest.raises(subs.LinkUsed), db.transaction() as s:
        sub = s.scalar(select(Subscriber).where(Subscriber.email == email))
        subs.confirm(s, sub.uid, sub.confirm_requested_at)


def test_within_the_cooldown_a_signup_changes_nothing(rt, make_email):
    first, sport = first_id(), add_newsletter("sport")
    email = make_email()
    signup(email, [first])
    assert not signup(email, [sport]).send_confirmation
    assert held(email) == {first: ("pending", "weekly", "")}


def test_unsubscribe_ends_one_newsletter_and_the_last_one_ends_the_person(rt, make_email):
    first, sport = first_id(), add_newsletter("sport")
    email = make_email()
    signup(email, [first, sport])
    confirm(email)
    uid = person(email).uid
    with db.transaction() as s:
        # A link made before there were several newsletters names none: the first.
        assert subs.unsubscribe(s, uid, "one-click")
    assert held(email)[first][0] == "unsubscribed" and held(email)[sport][0] == "active"
    assert person(email).status == SubscriberStatus.ACTIVE
    with db.transaction() as s:
        assert not subs.unsubscribe(s, uid, "one-click")  # idempotent
        assert subs.unsubscribe(s, uid, "one-click", sport)
    assert person(email).status == SubscriberStatus.UNSUBSCRIBED
    assert {st for st, _, _ in held(email).values()} == {"unsubscribed"}
    with db.transaction() as s:
        assert not subs.unsubscribe(s, uid, "one-click", sport)
    # Signing up again brings the person and the newsletter back, once confirmed.
    signup(email, [sport], cooldown=0)
    assert held(email)[sport][0] == "pending"
    confirm(email)
    assert person(email).status == SubscriberStatus.ACTIVE
    assert held(email)[sport][0] == "active" and held(email)[first][0] == "unsubscribed"


def test_unsubscribe_from_everything(rt, make_email):
    first, sport = first_id(), add_newsletter("sport")
    email = make_email()
    signup(email, [first, sport])
    confirm(email)
    with db.transaction() as s:
        sub = s.scalar(select(Subscriber).where(Subscriber.email == email))
        assert subs.unsubscribe_all(s, sub, "preferences")
        assert not subs.unsubscribe_all(s, sub, "preferences")
    assert person(email).status == SubscriberStatus.UNSUBSCRIBED
    assert {st for st, _, _ in held(email).values()} == {"unsubscribed"}


def test_preferences_and_resubscribe_are_per_newsletter(rt, make_email):
    first, sport = first_id(), add_newsletter("sport")
    email = make_email()
    signup(email, [first])
    confirm(email)
    with db.transaction() as s:
        sub = s.scalar(select(Subscriber).where(Subscriber.email == email))
        # From a link of sport's: the reader starts it, then picks its frequency.
        subs.resubscribe(s, sub, CONSENT, sport)
        subs.apply_preferences(s, sub, name="Ann", consent=CONSENT,
                               choices=[subs.Choice(sport, True, Frequency.DAILY, "")])
    assert held(email) == {first: ("active", "weekly", ""), sport: ("active", "daily", "")}
    with db.transaction() as s:
        kinds = list(s.scalars(select(ConsentRecord.kind).where(
            ConsentRecord.subscriber_id == person(email).id).order_by(ConsentRecord.id)))
    assert kinds == ["signup", "confirm", "confirm"]


def test_import_gives_active_subscriptions_and_erase_removes_them(rt, make_email):
    first, sport = first_id(), add_newsletter("sport")
    a, b = make_email(), make_email()
    with db.transaction() as s:
        report = subs.import_rows(
            s, [subs.ImportRow(1, a, frequency="daily"), subs.ImportRow(2, b)], source="old list",
            known_sections=(), hasher=rt.email_hash, report=subs.ImportReport(),
            newsletter_ids=[sport],
        )
    assert report.added == 2
    assert held(a) == {sport: ("active", "daily", "")} and held(b) == {sport: ("active", "weekly", "")}
    c = make_email()
    with db.transaction() as s:  # default: the signup defaults (here the first)
        subs.import_rows(s, [subs.ImportRow(1, c)], source="old list", known_sections=(),
                         hasher=rt.email_hash, report=subs.ImportReport())
    assert held(c) == {first: ("active", "weekly", "")}
    with db.transaction() as s:
        subs.erase(s, s.scalar(select(Subscriber).where(Subscriber.email == a)), rt.email_hash)
    with db.transaction() as s:
        assert s.scalar(select(func.count()).select_from(Subscription)) == 2


def test_the_reader_export_lists_their_newsletters(rt, make_email):
    first, sport = first_id(), add_newsletter("sport")
    email = make_email()
    signup(email, [first, sport])
    confirm(email)
    with db.transaction() as s:
        sub = s.scalar(select(Subscriber).where(Subscriber.email == email))
        subs.unsubscribe(s, sub.uid, "test", sport, now=utcnow())
        data = subs.export_data(s, sub)
    assert [(n["newsletter"], n["status"]) for n in data["newsletters"]] == [
        (newsletters_slug(first), "active"), ("sport", "unsubscribed"),
    ]


def newsletters_slug(newsletter_id: int) -> str:
    with db.transaction() as s:
        return newsletters.get(s, newsletter_id).slug


def test_a_signup_whose_transaction_rolls_back_leaves_no_reader(rt):
    """A signup's writes go with its transaction: on SQLite the new reader's row is written
    inside a savepoint after the signup's first reads, and a rollback after the savepoint's
    release (a later error, a limit refusing the request) must take that row back too."""
    s = db.session
    result = subs.subscribe(s, email="undone@example.com", name=None, frequency=Frequency.WEEKLY,
                            sections="", consent=CONSENT, cooldown=timedelta(minutes=10),
                            newsletter_ids=None)
    assert result.send_confirmation
    s.rollback()
    with db.transaction() as other:
        assert other.scalar(select(func.count()).select_from(Subscriber)) == 0
        assert other.scalar(select(func.count()).select_from(Subscription)) == 0
        assert other.scalar(select(func.count()).select_from(ConsentRecord)) == 0


def test_the_quick_address_check_answers_as_email_validator_does():
    """Addresses of the common form skip email-validator (subscriptions._plain_address); on
    every address it takes, random near-misses included, the answer is the one
    email-validator's check gives."""
    import random

    from email_validator import SPECIAL_USE_DOMAIN_NAMES

    rnd = random.Random(12)
    pieces = ["a", "Z", "x", "n", "9", "0", ".", "-", "_", "+", "--", "xn--", "..", "K", "é",
              "!", " ", "@", "\u212a"]  # the Kelvin sign lower-cases to an ASCII k
    tlds = ["com", "co.uk", "DE", "x", "c0m", "123", "museum", "a" * 64, *SPECIAL_USE_DOMAIN_NAMES]

    def word(n):
        return "".join(rnd.choice(pieces) for _ in range(rnd.randint(1, n)))

    taken = 0
    for _ in range(20000):
        local = rnd.choice([word(6), "reader", "Ada.Lovelace+news", "a" * rnd.randint(60, 70)])
        labels = [rnd.choice([word(5), "mail", "ex-ample", "a" * rnd.randint(60, 66)])
                  for _ in range(rnd.randint(0, 3))]
        raw = f"{local}@{'.'.join([*labels, rnd.choice(tlds)])}"
        quick = subs._plain_address(raw)
        if quick is None:
            continue
        taken += 1
        assert quick == subs._validated_address(raw), raw
    assert taken > 1000  # the common forms were tried, not only what falls through
    for raw in ("a@b.local", "a@xn--bcher-kva.example", "a@ab--c.com", "é@x.com", "\u212a@x.com",
                f"{'a' * 65}@x.com", "a..b@x.com", ".a@x.com", "a@-x.com", "a@x.c0m"):
        assert subs._plain_address(raw) is None, raw
    assert subs.normalize_email(" Ada.Lovelace+News@Mail.Example.COM ") == (
        "ada.lovelace+news@mail.example.com")
