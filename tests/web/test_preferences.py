"""The preferences page: frequency, sections, name, change of address, export, erase."""

from __future__ import annotations

import json

from sqlalchemy import func, select

from mailer.db import db
from mailer.models import (
    ConsentRecord,
    Frequency,
    Subscriber,
    SubscriberEvent,
    SubscriberStatus,
    Suppression,
)
from mailer.runtime import runtime
from mailer.services import newsletters
from mailer.services import subscriptions as subs
from tests.helpers.web import form_fields, link_with, local, post_form


def active_reader(client, email: str, **fields) -> Subscriber:
    client.post("/api/v1/subscribe", json={"email": email, **fields})
    sub = db.session.scalar(select(Subscriber).where(Subscriber.email == email))
    subs.confirm(db.session, sub.uid, sub.confirm_requested_at)
    db.session.commit()
    return sub


def prefs_url(app, sub) -> str:
    with app.app_context():
        return local(runtime().links.preferences(sub.uid))


def fresh(email: str) -> Subscriber | None:
    db.session.expire_all()
    return db.session.scalar(select(Subscriber).where(Subscriber.email == email))


def test_change_frequency_sections_and_name(app, client, make_email):
    email = make_email()
    sub = active_reader(client, email)
    url = prefs_url(app, sub)
    page = client.get(url)
    assert page.status_code == 200 and email.encode() in page.data
    n = newsletters.first(db.session).id
    resp = client.post(url, data={
        **form_fields(page.get_data(as_text=True)), "action": "save", "name": "Ada",
        f"on-{n}": "yes", f"frequency-{n}": "daily", f"sections-{n}": ["sport", "news"],
    })
    assert resp.status_code == 200 and b"preferences are saved" in resp.data
    sub = fresh(email)
    assert (sub.name, sub.frequency, sub.section_list) == ("Ada", Frequency.DAILY, ["news", "sport"])
    events = db.session.scalars(select(SubscriberEvent.kind).where(SubscriberEvent.subscriber_id == sub.id))
    assert "preferences" in list(events)


def test_bad_preferences_change_nothing(app, client, make_email):
    email = make_email()
    sub = active_reader(client, email, name="Ada")
    url = prefs_url(app, sub)
    n = newsletters.first(db.session).id
    for data in (
        {"action": "save", f"on-{n}": "yes", f"frequency-{n}": "hourly"},
        {"action": "save", f"on-{n}": "yes", f"frequency-{n}": "daily", f"sections-{n}": ["gossip"]},
        {"action": "save", f"on-{n}": "yes", f"frequency-{n}": "daily",
         "name": "Ada\r\nBcc: x@example.com"},
        {"action": "save", f"on-{n}": "yes", "on-99999999": "yes"},  # no such newsletter
        {"action": "save", f"on-{n}": "yes", "frequency-x1": "daily"},
        {"action": "email", "new_email": "not-an-address"},
        {"action": "erase"},  # without ticking the box
    ):
        resp = post_form(client, url, **data)
        assert resp.status_code == 400 and b'role="alert"' in resp.data, data
    sub = fresh(email)
    assert (sub.name, sub.frequency, sub.sections) == ("Ada", Frequency.WEEKLY, "")
    assert sub.status == SubscriberStatus.ACTIVE


def test_change_of_address_takes_effect_only_after_confirmation(
    app, client, smtp, worker, make_email
):
    old, new = make_email(), make_email()
    sub = active_reader(client, old)
    resp = post_form(client, prefs_url(app, sub), action="email", new_email=new.upper())
    assert resp.status_code == 200 and f"We sent a link to {new}".encode() in resp.data
    assert fresh(old) is not None and fresh(new) is None

    (mail,) = smtp.wait_for(new, match="/preferences/email/")
    assert smtp.to(old, match="/preferences/email/") == []
    confirm = local(link_with(mail, "/preferences/email/"))
    assert client.get(confirm).status_code == 200
    assert fresh(new) is None, "a GET (mail scanner) must not change the address"
    resp = post_form(client, confirm)
    assert resp.status_code == 302
    assert fresh(old) is None and fresh(new).id == sub.id


def test_change_to_an_address_already_subscribed_is_refused(app, client, smtp, worker, make_email):
    first, second = make_email(), make_email()
    sub = active_reader(client, first)
    active_reader(client, second)
    post_form(client, prefs_url(app, sub), action="email", new_email=second)
    (mail,) = smtp.wait_for(second, match="/preferences/email/")
    resp = post_form(client, local(link_with(mail, "/preferences/email/")))
    assert resp.status_code == 409 and b"already uses that address" in resp.data
    assert fresh(first).id == sub.id


def test_download_my_data(app, client, make_email):
    email = make_email()
    sub = active_reader(client, email, name="Ada", source="footer")
    resp = post_form(client, prefs_url(app, sub), action="export")
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    assert "attachment" in resp.headers["Content-Disposition"]
    data = json.loads(resp.data)
    assert data["email"] == email and data["name"] == "Ada" and data["status"] == "active"
    assert [c["kind"] for c in data["consents"]] == ["signup"]
    assert data["consents"][0]["source"] == "api: footer"
    assert {e["kind"] for e in data["events"]} >= {"signup", "confirmed"}


def test_erase_deletes_personal_data_and_blocks_reimport(app, client, runner, make_email, tmp_path):
    email = make_email()
    sub = active_reader(client, email)
    url = prefs_url(app, sub)
    resp = post_form(client, url, action="erase", confirm="yes")
    assert resp.status_code == 200 and b"Your data is erased" in resp.data
    assert fresh(email) is None
    for model in (ConsentRecord, SubscriberEvent):
        assert db.session.scalar(select(func.count()).select_from(model)) == 0
    (row,) = db.session.scalars(select(Suppression))
    assert row.reason == "erased" and email not in row.email_hash
    assert client.get(url).status_code == 400  # the old link opens nothing any more

    csv_file = tmp_path / "readers.csv"
    csv_file.write_text(f"email,name\n{email},Ada\n{make_email()},Bob\n")
    result = runner.invoke(args=["subscribers", "import", str(csv_file), "--source", "old list"])
    assert result.exit_code == 0, result.output
    assert "added 1, already present 0, suppressed 1, invalid 0" in result.output
    assert fresh(email) is None


def test_erased_reader_may_sign_up_again_by_themselves(app, client, make_email):
    email = make_email()
    sub = active_reader(client, email)
    post_form(client, prefs_url(app, sub), action="erase", confirm="yes")
    assert db.session.scalar(select(func.count()).select_from(Suppression)) == 1
    # A new signup, confirmed by the reader on the confirmation page.
    client.post("/api/v1/subscribe", json={"email": email})
    again = fresh(email)
    with app.app_context():
        confirm = local(runtime().links.confirm(again.uid, again.confirm_requested_at))
    assert post_form(client, confirm).status_code == 200
    assert fresh(email).status == SubscriberStatus.ACTIVE
    assert db.session.scalar(select(func.count()).select_from(Suppression)) == 0


def test_resubscribe_from_preferences_after_unsubscribing(app, client, make_email):
    email = make_email()
    sub = active_reader(client, email)
    subs.unsubscribe(db.session, sub.uid, "test")
    db.session.commit()
    url = prefs_url(app, sub)
    page = client.get(url)
    assert b"Subscribe again" in page.data
    resp = post_form(client, url, action="resubscribe")
    assert resp.status_code == 200 and b"subscribed again" in resp.data
    assert fresh(email).status == SubscriberStatus.ACTIVE
