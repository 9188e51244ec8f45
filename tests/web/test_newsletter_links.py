"""Readers' links with several newsletters: unsubscribe (page and RFC 8058 one-click) and
preferences act on the newsletter the link names; links signed before there were several
newsletters name none and mean the first."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from mailer import tokens as t
from mailer.db import db
from mailer.models import Frequency, Newsletter, Subscriber, SubscriberStatus, Subscription
from mailer.runtime import runtime
from mailer.services import newsletters
from mailer.services import subscriptions as subs
from mailer.tasks import send_confirmation
from tests.helpers.web import form_fields, local

CONSENT = subs.ConsentInfo(source="form", wording="Yes.")


def reader_of_two(email: str) -> tuple[str, int, int]:
    """An active reader of the first newsletter and of "sport": (uid, first id, sport id)."""
    sport = Newsletter(slug="sport", name="Sport Letter")
    db.session.add(sport)
    db.session.flush()
    first = newsletters.first(db.session).id
    subs.subscribe(db.session, email=email, name=None, frequency=Frequency.WEEKLY, sections="",
                   consent=CONSENT, cooldown=timedelta(0), newsletter_ids=[first, sport.id])
    sub = subs.by_email(db.session, email)
    subs.confirm(db.session, sub.uid, sub.confirm_requested_at)
    db.session.commit()
    return sub.uid, first, sport.id


def state(email: str) -> tuple[str, dict[str, str]]:
    db.session.expire_all()
    sub = subs.by_email(db.session, email)
    return str(sub.status), {
        s.newsletter.slug: str(s.status) for s in subs.subscriptions_of(db.session, sub.id)
    }


def test_one_click_ends_only_the_newsletter_the_link_names(app, client, make_email):
    email = make_email()
    with app.app_context():
        uid, first, sport = reader_of_two(email)
        first_slug = newsletters.first(db.session).slug
        url = local(runtime().links.unsubscribe(uid, sport))
        old_url = local(runtime().links.unsubscribe(uid))
    page = client.get(url)
    assert page.status_code == 200 and b"Sport Letter" in page.data
    # RFC 8058: exactly this body, no cookies, no CSRF token.
    fresh = app.test_client()
    resp = fresh.post(url, data={"List-Unsubscribe": "One-Click"})
    assert resp.status_code == 200 and b"You are unsubscribed" in resp.data
    assert state(email) == ("active", {first_slug: "active", "sport": "unsubscribed"})
    assert b"already unsubscribed" in client.get(url).data
    # A link mailed before there were several newsletters: the first one; the last one
    # open ends the person's subscription too.
    assert fresh.post(old_url, data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert state(email) == ("unsubscribed", {first_slug: "unsubscribed", "sport": "unsubscribed"})


def test_preferences_change_the_subscription_of_the_link(app, client, make_email):
    email = make_email()
    with app.app_context():
        uid, first, sport = reader_of_two(email)
        sport_url = local(runtime().links.preferences(uid, sport))
        old_url = local(runtime().links.preferences(uid))
    page = client.get(sport_url)
    assert page.status_code == 200 and b"Sport Letter" in page.data
    resp = client.post(sport_url, data={
        **form_fields(page.get_data(as_text=True)), "action": "save", "frequency": "daily",
        "sections": ["sport"],
    })
    assert resp.status_code == 200 and b"preferences are saved" in resp.data
    page = client.get(old_url)
    assert page.status_code == 200
    resp = client.post(old_url, data={
        **form_fields(page.get_data(as_text=True)), "action": "save", "frequency": "weekly",
        "sections": ["news"],
    })
    assert resp.status_code == 200
    db.session.expire_all()
    got = {
        n: (str(f), sec)
        for n, f, sec in db.session.execute(
            select(Subscription.newsletter_id, Subscription.frequency, Subscription.sections)
            .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
            .where(Subscriber.email == email)
        )
    }
    assert got == {first: ("weekly", "news"), sport: ("daily", "sport")}


def test_a_signed_link_naming_no_valid_newsletter_opens_nothing(app, client, make_email):
    email = make_email()
    with app.app_context():
        uid, _, _ = reader_of_two(email)
        tokens = runtime().tokens
        bad = [f"/unsubscribe/{tokens.sign(t.UNSUBSCRIBE, uid + '~x1')}",
               f"/preferences/{tokens.sign(t.PREFERENCES, uid + '~')}"]
    for url in bad:
        resp = client.get(url)
        assert resp.status_code == 400 and b"link" in resp.data.lower()
    resp = app.test_client().post(bad[0], data={"List-Unsubscribe": "One-Click"})
    assert resp.status_code == 400
    assert state(email)[0] == "active"


def test_an_active_reader_asking_for_another_newsletter_gets_a_confirmation(
    app, client, smtp, make_email
):
    email = make_email()
    with app.app_context():
        first = newsletters.first(db.session).id
        politics = Newsletter(slug="politics", name="Politics Weekly")
        db.session.add(politics)
        db.session.flush()
        subs.subscribe(db.session, email=email, name=None, frequency=Frequency.WEEKLY,
                       sections="", consent=CONSENT, cooldown=timedelta(0),
                       newsletter_ids=[first])
        sub = subs.by_email(db.session, email)
        subs.confirm(db.session, sub.uid, sub.confirm_requested_at)
        subs.subscribe(db.session, email=email, name=None, frequency=Frequency.WEEKLY,
                       sections="", consent=CONSENT, cooldown=timedelta(0),
                       newsletter_ids=[politics.id])
        db.session.commit()
        try:  # the task, run here: this process's SMTP connection is closed after it
            assert send_confirmation(sub.id) == "sent"
        finally:
            runtime().transport.close()
    (mail,) = smtp.wait_for(email)
    assert mail.message["Subject"].startswith("Please confirm")
    confirm_url = next(u for u in mail.links() if "/confirm/" in u)
    page = client.get(local(confirm_url))
    resp = client.post(local(confirm_url), data=form_fields(page.get_data(as_text=True)))
    assert resp.status_code == 200
    assert state(email) == ("active", {newsletters.first(db.session).slug: "active",
                                       "politics": "active"})
    assert subs.by_email(db.session, email).status == SubscriberStatus.ACTIVE
