"""The reader's journey through the real worker and SMTP server: signup → confirm → leave."""

from __future__ import annotations

import re

from sqlalchemy import select

from mailer.db import db
from mailer.models import ConsentRecord, Subscriber, SubscriberStatus
from tests.helpers.web import link_with, local, post_form, signup


def subscriber(email: str) -> Subscriber | None:
    db.session.expire_all()
    return db.session.scalar(select(Subscriber).where(Subscriber.email == email))


def test_signup_confirm_welcome_unsubscribe(client, smtp, worker, make_email):
    email = make_email()
    resp = signup(client, email, name="Ada Reader")
    assert resp.status_code == 200
    assert "check your inbox" in resp.get_data(as_text=True)

    sub = subscriber(email)
    assert sub.status == SubscriberStatus.PENDING and sub.name == "Ada Reader"
    consent = db.session.scalar(select(ConsentRecord).where(ConsentRecord.subscriber_id == sub.id))
    assert consent.kind == "signup" and consent.source == "form"
    assert consent.ip == "127.0.0.1" and "unsubscribe at any time" in consent.wording

    (mail,) = smtp.wait_for(email)
    msg = mail.message
    assert msg["Subject"] == "Please confirm your subscription to The Daily Test"
    assert mail.text and mail.html, "confirmation must have a text and an HTML part"
    confirm_url = link_with(mail, "/confirm/")
    assert confirm_url in mail.html

    # Following the link (as a mail scanner would) confirms nothing.
    page = client.get(local(confirm_url))
    assert page.status_code == 200 and b"Yes, subscribe me" in page.data
    assert subscriber(email).status == SubscriberStatus.PENDING

    done = post_form(client, local(confirm_url))
    assert done.status_code == 200 and b"You are subscribed" in done.data
    assert subscriber(email).status == SubscriberStatus.ACTIVE

    (welcome,) = [m for m in smtp.wait_for(email, 2) if "Welcome" in m.message["Subject"]]
    headers = welcome.message
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    unsubscribe_url = re.search(r"<(https?://[^>]+)>", headers["List-Unsubscribe"]).group(1)
    assert unsubscribe_url.startswith("http://localhost:")
    assert headers["List-Id"].endswith("<newsletter.daily.example>")

    # RFC 8058: a POST with exactly this body, no cookies, no CSRF token.
    fresh = client.application.test_client()
    resp = fresh.post(local(unsubscribe_url), data={"List-Unsubscribe": "One-Click"})
    assert resp.status_code == 200 and b"You are unsubscribed" in resp.data
    assert subscriber(email).status == SubscriberStatus.UNSUBSCRIBED
    again = fresh.post(local(unsubscribe_url), data={"List-Unsubscribe": "One-Click"})
    assert again.status_code == 200
    assert subscriber(email).status == SubscriberStatus.UNSUBSCRIBED
