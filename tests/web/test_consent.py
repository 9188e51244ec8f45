"""Consent follows the reader's latest choice: links work once, old links change nothing."""

from __future__ import annotations

import base64
import time

import time_machine
from sqlalchemy import func, select

from mailer import tokens as t
from mailer.clock import utcnow
from mailer.db import db
from mailer.models import Subscriber, SubscriberEvent, SubscriberStatus
from mailer.runtime import runtime
from mailer.services import subscriptions as subs
from tests.helpers.web import link_with, local, post_form, signup


def reader(email: str) -> Subscriber:
    db.session.expire_all()
    return db.session.scalar(select(Subscriber).where(Subscriber.email == email))


def confirmations(email: str) -> int:
    sub = reader(email)
    return db.session.scalar(
        select(func.count()).where(
            SubscriberEvent.subscriber_id == sub.id, SubscriberEvent.kind == "confirmed"
        )
    )


def confirm_link(app, email: str) -> str:
    """The link the confirmation mail for the reader's latest request carries."""
    sub = reader(email)
    with app.app_context():
        return local(runtime().links.confirm(sub.uid, sub.confirm_requested_at))


def test_a_confirmation_link_works_once(app, client, make_email):
    email = make_email()
    signup(client, email)
    link = confirm_link(app, email)
    assert b"Yes, subscribe me" in client.get(link).data
    assert b"You are subscribed" in post_form(client, link).data
    used = post_form(client, link)  # the button pressed a second time
    for resp in (used, client.get(link)):
        assert resp.status_code == 410 and b"This link has been used" in resp.data
        assert b"Sign up again" in resp.data
    assert confirmations(email) == 1


def test_a_link_from_before_an_unsubscribe_changes_nothing(app, client, smtp, worker, make_email):
    email = make_email()
    signup(client, email)
    (mail,) = smtp.wait_for(email, match="/confirm/")
    link = local(link_with(mail, "/confirm/"))
    assert post_form(client, link).status_code == 200
    sub = reader(email)
    with app.app_context():
        unsubscribe = local(runtime().links.unsubscribe(sub.uid))
    client.post(unsubscribe, data={"List-Unsubscribe": "One-Click"})
    assert reader(email).status == SubscriberStatus.UNSUBSCRIBED

    resp = post_form(client, link)
    assert resp.status_code == 410 and b"This link has been used" in resp.data
    assert reader(email).status == SubscriberStatus.UNSUBSCRIBED
    time.sleep(1)
    assert len(smtp.to(email, match="Welcome")) <= 1  # no second welcome
    assert confirmations(email) == 1


def test_a_pending_readers_unsubscribe_closes_the_confirmation_link(app, client, make_email):
    email = make_email()
    signup(client, email)
    link = confirm_link(app, email)
    subs.unsubscribe(db.session, reader(email).uid, "test")
    db.session.commit()
    assert post_form(client, link).status_code == 410
    assert reader(email).status == SubscriberStatus.UNSUBSCRIBED


def test_a_newer_request_supersedes_the_older_link(app, client, make_email):
    email = make_email()
    signup(client, email)
    first = confirm_link(app, email)
    with time_machine.travel(utcnow().timestamp() + 601, tick=True):
        signup(client, email)
        second = confirm_link(app, email)
        assert second != first
        assert post_form(client, first).status_code == 410
        assert reader(email).status == SubscriberStatus.PENDING
        assert post_form(client, second).status_code == 200
    assert reader(email).status == SubscriberStatus.ACTIVE


def test_links_carry_no_readable_address(app, client, smtp, worker, make_email):
    email = make_email()
    signup(client, email)
    (mail,) = smtp.wait_for(email, match="/confirm/")
    token = link_with(mail, "/confirm/").rsplit("/", 1)[1]
    decoded = base64.urlsafe_b64decode(token.split(".")[0] + "==")
    assert email.encode() not in decoded and email.split("@")[0] not in token
    sub = reader(email)
    with app.app_context():
        change = runtime().links.change_email(sub.uid, "new.address@example.org")
    assert "new.address" not in change
    assert b"new.address" not in base64.urlsafe_b64decode(change.rsplit("/", 1)[1].split(".")[0] + "==")


def test_a_link_mailed_by_the_first_release_opens_safely(app, client, make_email):
    email = make_email()
    signup(client, email)
    sub = reader(email)
    with app.app_context():
        # The form v0.1.0 mailed: a timed token of [uid, address].
        legacy = "/confirm/" + runtime().tokens.make_timed(t.CONFIRM, [sub.uid, email])
    page = client.get(legacy)
    assert page.status_code == 200 and email.encode() in page.data
    assert post_form(client, legacy).status_code == 200
    assert reader(email).status == SubscriberStatus.ACTIVE
    subs.unsubscribe(db.session, sub.uid, "test")
    db.session.commit()
    assert post_form(client, legacy).status_code == 410
    assert reader(email).status == SubscriberStatus.UNSUBSCRIBED


def test_the_unsubscribe_page_of_a_reader_who_left_says_so(app, client, make_email):
    email = make_email()
    signup(client, email)
    sub = reader(email)
    with app.app_context():
        url = local(runtime().links.unsubscribe(sub.uid))
    assert b'<button type="submit" class="danger">Unsubscribe</button>' in client.get(url).data
    client.post(url, data={"List-Unsubscribe": "One-Click"})
    page = client.get(url)
    assert page.status_code == 200 and b"You are already unsubscribed" in page.data
    assert b"<button" not in page.data and b"Manage your subscription" in page.data


def test_an_active_reader_signing_up_again_gets_a_short_mail(app, client, smtp, worker, make_email):
    email = make_email()
    signup(client, email)
    smtp.wait_for(email, 1)
    post_form(client, confirm_link(app, email))
    # (After the cooldown that began with the first signup: the answer is rate-limited like
    # confirmations.)
    with time_machine.travel(utcnow().timestamp() + 601, tick=True):
        new_page = signup(client, make_email())
        page = signup(client, email)
        assert page.status_code == new_page.status_code == 200
        assert b"check your inbox" in page.data
        (mail,) = smtp.wait_for(email, match="already subscribed")
        assert mail.message["Subject"] == "You are already subscribed to The Daily Test"
        assert "/preferences/" in mail.text and "/confirm/" not in mail.text
        # More signups inside the cooldown send nothing.
        signup(client, email)
        client.post("/api/v1/subscribe", json={"email": email})
        time.sleep(1.5)
    assert len(smtp.to(email, match="already subscribed")) == 1
    assert reader(email).status == SubscriberStatus.ACTIVE
