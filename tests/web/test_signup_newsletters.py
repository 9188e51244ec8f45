"""Signing up for several newsletters: the page's checkboxes, one newsletter's own page, the
API's `newsletters`, and the consent record naming them."""

from __future__ import annotations

import re

from sqlalchemy import select

from mailer.clock import utcnow
from mailer.db import db
from mailer.models import ConsentRecord, Newsletter, Subscriber, Subscription
from mailer.services import newsletters
from tests.helpers.web import form_fields


def add(slug: str, name: str, **fields) -> Newsletter:
    n = Newsletter(slug=slug, name=name, **fields)
    db.session.add(n)
    db.session.commit()
    return n


def three() -> None:
    add("morning", "Morning Briefing", description="Before breakfast.")
    add("sport", "Sport Letter")
    add("politics", "Politics Weekly")
    add("insiders", "Insiders", public=False)
    add("old", "Old Letter", archived_at=utcnow())


def held(email: str) -> dict[str, str]:
    db.session.expire_all()
    return {
        slug: str(status)
        for slug, status in db.session.execute(
            select(Newsletter.slug, Subscription.status)
            .join(Subscription, Subscription.newsletter_id == Newsletter.id)
            .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
            .where(Subscriber.email == email)
        )
    }


def post_page(client, url: str, email: str, **extra):
    page = client.get(url)
    assert page.status_code == 200
    data = {**form_fields(page.get_data(as_text=True)), "email": email, "frequency": "weekly",
            **extra}
    return client.post(url, data=data)


def test_with_one_newsletter_the_page_has_no_choice(app, client, make_email):
    page = client.get("/subscribe").get_data(as_text=True)
    assert 'name="newsletters"' not in page and "newsletters_offered" not in page
    email = make_email()
    assert post_page(client, "/subscribe", email).status_code == 200
    assert held(email) == {newsletters.first(db.session).slug: "pending"}


def test_the_page_offers_every_public_newsletter_none_ticked(app, client, make_email):
    three()
    page = client.get("/subscribe").get_data(as_text=True)
    boxes = re.findall(r'<input type="checkbox" name="newsletters" value="([^"]+)"([^>]*)>', page)
    first = newsletters.first(db.session).slug
    assert [slug for slug, _ in boxes] == [first, "morning", "sport", "politics"]
    assert not any("checked" in rest for _, rest in boxes)
    assert "Before breakfast." in page and "Insiders" not in page and "Old Letter" not in page
    # Nothing ticked: the reader is asked to choose, nothing is written.
    email = make_email()
    resp = post_page(client, "/subscribe", email)
    assert resp.status_code == 400 and "Please choose at least one newsletter." in resp.text
    assert held(email) == {}
    resp = post_page(client, "/subscribe", email, newsletters=["sport", "politics"])
    assert resp.status_code == 200
    assert held(email) == {"sport": "pending", "politics": "pending"}
    consent = db.session.scalar(select(ConsentRecord).join(Subscriber).where(
        Subscriber.email == email))
    assert "the newsletters ticked above" in consent.wording
    assert consent.wording.endswith("Newsletters: Sport Letter, Politics Weekly")


def test_a_refused_choice_keeps_what_was_ticked(app, client, make_email):
    three()
    resp = post_page(client, "/subscribe", "not an address", newsletters=["sport"])
    assert resp.status_code == 400
    assert re.search(r'value="sport" checked', resp.text)
    assert not re.search(r'value="morning" checked', resp.text)


def test_a_newsletters_own_page(app, client, make_email):
    three()
    page = client.get("/subscribe/morning")
    assert page.status_code == 200
    assert "Get Morning Briefing by email" in page.text and 'name="newsletters"' not in page.text
    email = make_email()
    assert post_page(client, "/subscribe/morning", email).status_code == 200
    assert held(email) == {"morning": "pending"}
    consent = db.session.scalar(select(ConsentRecord).join(Subscriber).where(
        Subscriber.email == email))
    assert consent.source == "form: morning"
    assert "I want to receive Morning Briefing by email" in consent.wording
    # A hidden newsletter's page exists for the readers it is given to; an archived one's
    # and an unknown one's do not.
    hidden = make_email()
    assert post_page(client, "/subscribe/insiders", hidden).status_code == 200
    assert held(hidden) == {"insiders": "pending"}
    assert client.get("/subscribe/old").status_code == 404
    assert client.get("/subscribe/nothing-here").status_code == 404


def test_the_api_takes_newsletters_as_a_list_or_a_repeated_field(app, client, make_email):
    three()
    a, b, c = make_email(), make_email(), make_email()
    assert client.post("/api/v1/subscribe", json={
        "email": a, "newsletters": ["morning", "sport"]}).status_code == 202
    assert held(a) == {"morning": "pending", "sport": "pending"}
    assert client.post("/api/v1/subscribe", data={
        "email": b, "newsletters": ["politics", "sport"]}).status_code == 202
    assert held(b) == {"sport": "pending", "politics": "pending"}
    # Without newsletters: the defaults for plain signups (here the first).
    assert client.post("/api/v1/subscribe", json={"email": c}).status_code == 202
    assert held(c) == {newsletters.first(db.session).slug: "pending"}


def test_the_api_refuses_unknown_hidden_and_archived_newsletters_by_name(
    app, client, make_email
):
    three()
    email = make_email()
    for slug in ("weather", "insiders", "old"):
        resp = client.post("/api/v1/subscribe", json={"email": email,
                                                      "newsletters": ["sport", slug]})
        assert resp.status_code == 400
        assert resp.json["field"] == "newsletters" and repr(slug) in resp.json["message"]
    resp = client.post("/api/v1/subscribe", json={"email": email, "newsletters": [1, 2]})
    assert resp.status_code == 400 and resp.json["field"] == "newsletters"
    assert held(email) == {}


def consent_of(email: str) -> ConsentRecord:
    db.session.expire_all()
    return db.session.scalar(select(ConsentRecord).join(Subscriber).where(
        Subscriber.email == email))


def test_a_plain_signups_consent_names_the_default_newsletters(app, client, make_email):
    """A signup that names no newsletter gets the signup defaults, and its consent record
    says which (on PostgreSQL inside the one signup statement)."""
    three()
    for slug in ("morning", "politics"):
        newsletters.by_slug(db.session, slug).signup_default = True
    newsletters.first(db.session).signup_default = False
    db.session.commit()
    email = make_email()
    resp = client.post("/api/v1/subscribe", json={"email": email, "consent": "Yes, please."})
    assert resp.status_code == 202
    assert held(email) == {"morning": "pending", "politics": "pending"}
    assert consent_of(email).wording == "Yes, please.\nNewsletters: Morning Briefing, Politics Weekly"
    # Named ones are named the same way, whatever the defaults are.
    named = make_email()
    assert client.post("/api/v1/subscribe", json={
        "email": named, "newsletters": ["sport"]}).status_code == 202
    assert consent_of(named).wording.endswith("\nNewsletters: Sport Letter")


def test_a_plain_signup_on_a_site_of_one_newsletter_names_it(app, client, make_email):
    email = make_email()
    assert post_page(client, "/subscribe", email).status_code == 200
    first = newsletters.first(db.session)
    wording = consent_of(email).wording
    assert "unsubscribe at any time" in wording
    assert wording.endswith(f"\nNewsletters: {first.name}")


def test_the_confirmation_mail_lists_the_newsletters_asked_for(
    app, client, smtp, worker, make_email
):
    three()
    email = make_email()
    resp = post_page(client, "/subscribe", email, newsletters=["morning", "sport"])
    assert resp.status_code == 200
    (mail,) = smtp.wait_for(email, match="/confirm/")
    for part in (mail.text, mail.html):
        assert "asked to receive these newsletters" in part
        assert "Morning Briefing" in part and "Before breakfast." in part
        assert "Sport Letter" in part
        assert "Politics Weekly" not in part and "Insiders" not in part
    text = mail.text.replace("\r\n", "\n")
    assert re.search(r"\n- Morning Briefing\n  Before breakfast\.\n- Sport Letter\n", text)
    assert re.search(r"<li[^>]*><strong>Morning Briefing</strong><br><span[^>]*>"
                     r"Before breakfast\.</span></li>", mail.html)

    # One newsletter: the mail names it, with its description.
    one = make_email()
    assert post_page(client, "/subscribe/morning", one).status_code == 200
    (mail,) = smtp.wait_for(one, match="/confirm/")
    assert "asked to receive Morning Briefing at this address." in mail.text
    assert "Before breakfast." in mail.text and "Sport Letter" not in mail.text
    assert "asked to receive <strong>Morning Briefing</strong> at this address." in mail.html
    assert "Before breakfast." in mail.html and "Sport Letter" not in mail.html
