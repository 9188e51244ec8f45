"""Readers' links with several newsletters: unsubscribe (page and RFC 8058 one-click) and
preferences act on the newsletter the link names; links signed before there were several
newsletters name none and mean the first."""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import select

from mailer import tokens as t
from mailer.clock import utcnow
from mailer.db import db
from mailer.models import (
    ConsentRecord,
    Frequency,
    Newsletter,
    Subscriber,
    SubscriberEvent,
    SubscriberStatus,
    Subscription,
)
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


def prefs(client, url: str, **data):
    """POST the preferences form as a browser would: its hidden fields (one `shown-ID` per
    newsletter listed) and the given choices; a toggle not given is unticked."""
    page = client.get(url)
    assert page.status_code == 200
    return client.post(url, data={**form_fields(page.get_data(as_text=True)), **data})


def toggle(html: str, newsletter_id: int) -> str:
    """The on/off checkbox of one newsletter on the preferences page."""
    (tag,) = re.findall(rf'<input type="checkbox" name="on-{newsletter_id}"[^>]*>', html)
    return tag


def choices(email: str) -> dict[str, tuple[str, str, str]]:
    db.session.expire_all()
    return {
        slug: (str(st), str(f), sec)
        for slug, st, f, sec in db.session.execute(
            select(Newsletter.slug, Subscription.status, Subscription.frequency,
                   Subscription.sections)
            .join(Subscription, Subscription.newsletter_id == Newsletter.id)
            .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
            .where(Subscriber.email == email)
        )
    }


def test_preferences_list_every_newsletter_whatever_link_opens_them(app, client, make_email):
    email = make_email()
    with app.app_context():
        uid, first, sport = reader_of_two(email)
        subs.unsubscribe(db.session, uid, "test", sport)
        db.session.commit()
        sport_url = local(runtime().links.preferences(uid, sport))
        old_url = local(runtime().links.preferences(uid))
        first_name = newsletters.first(db.session).name
    for url in (sport_url, old_url):  # a link naming one, and one mailed before there were several
        html = client.get(url).get_data(as_text=True)
        assert "Sport Letter" in html and first_name in html
        assert "checked" in toggle(html, first)
        sport_toggle = toggle(html, sport)  # listed, unticked, may be ticked again
        assert "checked" not in sport_toggle and "disabled" not in sport_toggle
        assert "Unsubscribe from everything" in html


def test_preferences_per_newsletter_frequency_and_sections(app, client, make_email):
    email = make_email()
    with app.app_context():
        uid, first, sport = reader_of_two(email)
        first_slug = newsletters.first(db.session).slug
        sport_url = local(runtime().links.preferences(uid, sport))
        old_url = local(runtime().links.preferences(uid))
    resp = prefs(client, sport_url, action="save", **{
        f"on-{first}": "yes", f"frequency-{first}": "weekly", f"sections-{first}": ["news"],
        f"on-{sport}": "yes", f"frequency-{sport}": "daily", f"sections-{sport}": ["sport"],
    })
    assert resp.status_code == 200 and b"preferences are saved" in resp.data
    assert choices(email) == {first_slug: ("active", "weekly", "news"),
                              "sport": ("active", "daily", "sport")}
    resp = prefs(client, old_url, action="save", **{
        f"on-{first}": "yes", f"frequency-{first}": "daily",
        f"on-{sport}": "yes", f"frequency-{sport}": "daily", f"sections-{sport}": ["sport"],
    })
    assert resp.status_code == 200
    assert choices(email) == {first_slug: ("active", "daily", ""),
                              "sport": ("active", "daily", "sport")}


def test_preferences_toggle_one_off_and_on_again(app, client, make_email):
    email = make_email()
    with app.app_context():
        uid, first, sport = reader_of_two(email)
        first_slug = newsletters.first(db.session).slug
        url = local(runtime().links.preferences(uid, sport))
    resp = prefs(client, url, action="save", **{f"on-{first}": "yes"})  # sport unticked
    assert resp.status_code == 200
    assert state(email) == ("active", {first_slug: "active", "sport": "unsubscribed"})
    # Ticked again: the reader confirmed their address already, no new confirmation.
    resp = prefs(client, url, action="save", **{f"on-{first}": "yes", f"on-{sport}": "yes"})
    assert resp.status_code == 200
    assert state(email) == ("active", {first_slug: "active", "sport": "active"})
    # Moving from one to the other in one form never leaves the person unsubscribed.
    prefs(client, url, action="save", **{f"on-{first}": "yes"})
    resp = prefs(client, url, action="save", **{f"on-{sport}": "yes"})
    assert state(email) == ("active", {first_slug: "unsubscribed", "sport": "active"})
    kinds = list(db.session.scalars(select(SubscriberEvent.kind).join(Subscriber).where(
        Subscriber.email == email)))
    assert "unsubscribed" not in kinds and kinds.count("unsubscribed-from") == 3
    # Both unticked: the last open one ends the person's subscription too.
    prefs(client, url, action="save")
    assert state(email) == ("unsubscribed", {first_slug: "unsubscribed", "sport": "unsubscribed"})
    # And ticking one brings the person back (the link came by mail to this address).
    prefs(client, url, action="save", **{f"on-{sport}": "yes"})
    assert state(email) == ("active", {first_slug: "unsubscribed", "sport": "active"})


def test_unsubscribe_from_everything(app, client, make_email):
    email = make_email()
    with app.app_context():
        uid, first, sport = reader_of_two(email)
        first_slug = newsletters.first(db.session).slug
        url = local(runtime().links.preferences(uid, sport))
    resp = prefs(client, url, action="unsubscribe-all")
    assert resp.status_code == 200 and b"unsubscribed from every newsletter" in resp.data
    assert state(email) == ("unsubscribed", {first_slug: "unsubscribed", "sport": "unsubscribed"})


def test_bad_preferences_change_nothing_at_all(app, client, make_email):
    email = make_email()
    with app.app_context():
        uid, first, sport = reader_of_two(email)
        subs.unsubscribe(db.session, uid, "test", sport)
        hidden = Newsletter(slug="insiders", name="Insiders", public=False)
        gone = Newsletter(slug="gone", name="Gone", archived_at=utcnow())
        db.session.add_all([hidden, gone])
        db.session.flush()
        hidden_id, gone_id = hidden.id, gone.id
        # The sport newsletter is archived after the reader left it: it cannot come back.
        db.session.get(Newsletter, sport).archived_at = utcnow()
        db.session.commit()
        url = local(runtime().links.preferences(uid, sport))
    before = choices(email)
    ok = {f"on-{first}": "yes", f"frequency-{first}": "daily"}  # would change something
    for bad in ({f"on-{hidden_id}": "yes"}, {f"on-{gone_id}": "yes"}, {f"on-{sport}": "yes"},
                {"on-424242424": "yes"}, {"sections-1x": "news"}):
        resp = prefs(client, url, action="save", **ok, **bad)
        assert resp.status_code == 400 and b'role="alert"' in resp.data, bad
    assert choices(email) == before
    html = client.get(url).get_data(as_text=True)
    assert "disabled" in toggle(html, sport)  # still listed, but cannot be switched on
    # Nor through the link's own "Subscribe again" (gone from the page, refused if posted).
    assert "Subscribe again" not in html
    resp = prefs(client, url, action="resubscribe")
    assert resp.status_code == 400 and b"takes no new readers" in resp.data
    assert choices(email) == before


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
    # It asks about the newsletter waiting for a confirmation, not the one already held.
    assert "asked to receive Politics Weekly at this address." in mail.text
    confirm_url = next(u for u in mail.links() if "/confirm/" in u)
    page = client.get(local(confirm_url))
    resp = client.post(local(confirm_url), data=form_fields(page.get_data(as_text=True)))
    assert resp.status_code == 200
    assert state(email) == ("active", {newsletters.first(db.session).slug: "active",
                                       "politics": "active"})
    assert subs.by_email(db.session, email).status == SubscriberStatus.ACTIVE


def test_preferences_offer_the_public_newsletters_the_reader_has_not_got(
    app, client, make_email
):
    """Joining from the page: active at once (the signed link proves the address), with a
    consent record naming the newsletter; hidden and archived ones are never offered."""
    email = make_email()
    with app.app_context():
        uid, first, sport = reader_of_two(email)
        first_slug = newsletters.first(db.session).slug
        morning = Newsletter(slug="morning", name="Morning Briefing",
                             description="Before breakfast.")
        politics = Newsletter(slug="politics", name="Politics Weekly")
        hidden = Newsletter(slug="insiders", name="Insiders", public=False)
        gone = Newsletter(slug="gone", name="Gone Letter", archived_at=utcnow())
        db.session.add_all([morning, politics, hidden, gone])
        db.session.commit()
        ids = {n.slug: n.id for n in (morning, politics, hidden, gone)}
        url = local(runtime().links.preferences(uid, sport))
    html = client.get(url).get_data(as_text=True)
    offered = re.findall(r'name="newsletter" value="(\d+)"', html)
    assert offered == [str(ids["morning"]), str(ids["politics"])]
    assert "Subscribe to Morning Briefing" in html and "Before breakfast." in html
    assert "Subscribe to Politics Weekly" in html
    assert "Subscribe to Sport Letter" not in html  # held: it has its toggle instead
    assert "Insiders" not in html and "Gone Letter" not in html

    resp = prefs(client, url, action="join", newsletter=str(ids["morning"]))
    assert resp.status_code == 200
    assert "You are subscribed to Morning Briefing." in resp.get_data(as_text=True)
    assert state(email) == ("active", {first_slug: "active", "sport": "active",
                                       "morning": "active"})
    consent = db.session.scalar(select(ConsentRecord).join(Subscriber).where(
        Subscriber.email == email).order_by(ConsentRecord.id.desc()).limit(1))
    assert consent.source == "preferences" and consent.kind == "confirm"
    assert "I want to receive Morning Briefing by email" in consent.wording
    assert consent.wording.endswith("\nNewsletters: Morning Briefing")
    html = client.get(url).get_data(as_text=True)
    assert "checked" in toggle(html, ids["morning"])  # now one of the reader's own
    assert re.findall(r'name="newsletter" value="(\d+)"', html) == [str(ids["politics"])]

    # Hidden, archived, unknown: refused with a message, nothing written.
    before = choices(email)
    for bad in (ids["insiders"], ids["gone"], "424242", "x1", ""):
        resp = prefs(client, url, action="join", newsletter=str(bad))
        assert resp.status_code == 400 and b'role="alert"' in resp.data, bad
    assert choices(email) == before

    # A reader who left everything may join one from the page: active again, with it only.
    subs.unsubscribe_all(db.session, subs.by_email(db.session, email), "test")
    db.session.commit()
    assert prefs(client, url, action="join",
                 newsletter=str(ids["politics"])).status_code == 200
    assert state(email) == ("active", {first_slug: "unsubscribed", "sport": "unsubscribed",
                                       "morning": "unsubscribed", "politics": "active"})
