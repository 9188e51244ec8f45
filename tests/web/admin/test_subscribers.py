"""Readers in the console: search and filters, a reader's records, CSV import on the worker,
export, erase, and the suppression list."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta

import time_machine
from sqlalchemy import func, select

from mailer.clock import utcnow
from mailer.db import db
from mailer.models import (
    ConsentRecord,
    Role,
    Subscriber,
    SubscriberImport,
    SubscriberStatus,
    Suppression,
)
from mailer.services import after_commit, deliveries, digests, newsletters
from mailer.services import subscriber_admin as admin
from mailer.services import subscriptions as subs
from tests.helpers.console import add_readers, login, post, text_of, token
from tests.helpers.digests import add_article
from tests.helpers.readers import subscribe_readers
from tests.helpers.servers import wait_until
from tests.helpers.web import signup


def reader(email: str) -> Subscriber | None:
    db.session.expire_all()
    return db.session.scalar(select(Subscriber).where(Subscriber.email == email))


def upload(client, content: bytes, source: str = "Signup sheet, book fair 2025", name="list.csv"):
    return client.post("/admin/subscribers/import", data={
        "csrf_token": token(client), "source": source, "file": (io.BytesIO(content), name),
    }, content_type="multipart/form-data")


def test_a_fresh_install_says_how_readers_arrive(client):
    login(client, Role.OPS, "ops@daily.example")
    page = text_of(client.get("/admin/subscribers"))
    assert "No subscribers yet." in page and "imported from a CSV file" in page
    assert "The list is empty." in text_of(client.get("/admin/subscribers/suppressions"))
    assert "No import yet." in text_of(client.get("/admin/subscribers/import"))


def test_search_filter_by_status_and_section_with_pages(client):
    login(client, Role.OPS, "ops@daily.example")
    add_readers(52, prefix="weekly")
    add_readers(2, prefix="ada.gone", status=SubscriberStatus.UNSUBSCRIBED)
    add_readers(2, prefix="news.only", sections="news")
    add_readers(3, prefix="sport.fan", sections="sport")
    add_readers(1, prefix="both", sections="news,sport")
    db.session.add(Subscriber(email="lovelace@example.com", name="Ada Lovelace",
                              status=SubscriberStatus.PENDING))
    db.session.flush()
    subscribe_readers(db.session)
    db.session.commit()

    first = client.get("/admin/subscribers")
    assert "61 subscribers, newest first." in text_of(first) and "Page 1 of 2" in text_of(first)
    assert text_of(first).count("@example.com") == 50
    second = text_of(client.get("/admin/subscribers?page=2"))
    assert second.count("@example.com") == 11 and "weekly0@example.com" in second

    found = text_of(client.get("/admin/subscribers?q=ADA"))
    assert "3 subscribers match" in found
    assert "lovelace@example.com" in found and "ada.gone1@example.com" in found
    gone = text_of(client.get("/admin/subscribers?status=unsubscribed"))
    assert "2 subscribers match" in gone and "weekly1@" not in gone
    both = text_of(client.get("/admin/subscribers?status=unsubscribed&q=gone0"))
    assert "1 subscriber match" in both
    # Sport readers: those who chose sport, and those who get every section.
    sport = text_of(client.get("/admin/subscribers?section=sport&status=active"))
    assert "56 subscribers match" in sport and "news.only" not in sport
    assert text_of(client.get("/admin/subscribers?section=sport&q=both")).count("@example.com") == 1
    assert "No subscriber matches" in text_of(client.get("/admin/subscribers?q=%25"))
    # A wrong filter is a readable 400, not an empty page.
    assert client.get("/admin/subscribers?status=happy").status_code == 400
    bad = client.get("/admin/subscribers?section=weather")
    assert bad.status_code == 400 and "Unknown section: weather" in text_of(bad)


def test_a_readers_page_shows_consent_deliveries_and_history(app, client):
    email = "ada@example.com"
    signup(client, email, name="Ada Reader")
    sub = reader(email)
    subs.confirm(db.session, sub.uid, sub.confirm_requested_at)
    add_article(db.session, "A story", utcnow() - timedelta(hours=1))
    rt = app.extensions["mailer"]
    issue = digests.create_issue(db.session, rt.settings, rt.popularity, now=utcnow(), subject="Weekly news")
    deliveries.start_send(db.session, issue.id, settings=rt.settings)
    after_commit.take(db.session)  # the reader's history is what matters here, not the mail
    db.session.commit()

    login(client, Role.OPS, "ops@daily.example")
    page = text_of(client.get(f"/admin/subscribers/{sub.id}"))
    assert "Ada Reader" in page and "active" in page
    assert "Consent records" in page and "signup" in page and "127.0.0.1" in page
    assert "unsubscribe at any time" in page  # the words the reader was shown
    assert "Weekly news" in page and f"#{issue.id}" in page
    assert "confirmed" in page and "History" in page
    data = client.get(f"/admin/subscribers/{sub.id}/data.json")
    assert data.headers["Content-Disposition"].startswith("attachment")
    assert json.loads(data.data)["consents"][0]["kind"] == "signup"

    done = post(client, f"/admin/subscribers/{sub.id}/unsubscribe")
    assert "ada@example.com is unsubscribed." in text_of(client.get(done.headers["Location"]))
    assert reader(email).status == SubscriberStatus.UNSUBSCRIBED
    assert "console: ops@daily.example" in text_of(client.get(f"/admin/subscribers/{sub.id}"))
    assert client.get("/admin/subscribers/999999").status_code == 404


def test_csv_import_on_the_worker_with_progress_and_consent_source(app, client, worker):
    login(client, Role.OPS, "ops@daily.example")
    add_readers(1, prefix="known")
    subs.suppress(db.session, app.extensions["mailer"].email_hash("erased@example.com"), "erased")
    db.session.commit()

    good = ("email,name,frequency,sections\n"
            "new1@example.com,New One,weekly,\n"
            "NEW2@example.com,New Two,daily,sport;news\n"
            "known0@example.com,Known,,\n"
            "erased@example.com,Gone,,\n"
            "not an address,Nobody,,\n"
            "new3@example.com,,weekly,weather\n"
            + "".join(f"bulk{n}@example.com,,,\n" for n in range(1100))).encode()

    for content, source, reason in [
        (good, "", "Say where these readers gave their consent"),
        (b"name\nAda\n", "fair", "needs a header row with an 'email' column"),
        ("email\nada@example.com\n".encode("utf-16"), "fair", "not UTF-8"),
        (b"email\n", "fair", "no readers"),
    ]:
        resp = upload(client, content, source)
        assert resp.status_code == 400 and reason in text_of(resp), reason
    assert db.session.scalar(select(func.count()).select_from(SubscriberImport)) == 0

    resp = upload(client, good)
    assert resp.status_code == 302
    status_url = resp.headers["Location"]
    def finished():
        data = client.get(status_url + "/status").json
        return data if data["final"] else None

    progress = wait_until(finished, 60, 0.2, "the import to finish")
    assert progress["status"] == "finished" and progress["percent"] == 100
    assert (progress["done"], progress["total"]) == (1106, 1106)
    assert (progress["added"], progress["existing"], progress["suppressed"],
            progress["invalid"]) == (1102, 1, 1, 2)

    page = text_of(client.get(status_url))
    assert "Invalid rows" in page
    assert "6 That does not look like an email address" in page
    assert "7 Unknown section 'weather'" in page
    two = reader("new2@example.com")
    assert (two.status, two.frequency, two.sections) == (SubscriberStatus.ACTIVE, "daily",
                                                         "news,sport")
    consent = db.session.scalar(select(ConsentRecord).where(ConsentRecord.subscriber_id == two.id))
    assert consent.kind == "import" and consent.source == "import: Signup sheet, book fair 2025"
    assert reader("erased@example.com") is None and reader("known0@example.com").name == "Reader 0"
    # The uploaded file is not kept once it is imported.
    assert db.session.scalar(select(SubscriberImport.body)) is None
    listed = text_of(client.get("/admin/subscribers/import"))
    assert "list.csv" in listed and "finished" in listed and "1102" in listed


def test_an_import_chunk_is_imported_once_and_a_silent_worker_is_replaced(app):
    rt = app.extensions["mailer"]
    imp = admin.create_import(db.session, filename="a.csv", data=b"email\na@example.com\n",
                              source="fair", user_id=None)
    db.session.commit()
    assert admin.claim_import(db.session, imp.id)
    assert not admin.claim_import(db.session, imp.id)  # a second task finds it taken
    rows = admin.import_rows_of(imp.body)
    kwargs = {"hasher": rt.email_hash, "known_sections": rt.settings.section_labels}
    assert admin.import_chunk(db.session, imp.id, 0, rows, **kwargs)
    assert not admin.import_chunk(db.session, imp.id, 0, rows, **kwargs)
    db.session.commit()
    db.session.refresh(imp)
    assert (imp.status, imp.done, imp.added) == ("finished", 1, 1)

    stuck = admin.create_import(db.session, filename="b.csv", data=b"email\nb@example.com\n",
                                source="fair", user_id=None)
    db.session.commit()
    admin.claim_import(db.session, stuck.id)
    db.session.commit()
    assert stuck.id not in admin.imports_owed(db.session)
    later = utcnow() + admin.IMPORT_STALE + timedelta(seconds=1)
    with time_machine.travel(later, tick=False):
        assert stuck.id in admin.imports_owed(db.session)
        assert admin.claim_import(db.session, stuck.id)


def test_a_chunk_subscribes_each_row_to_the_newsletters_it_names(app):
    rt = app.extensions["mailer"]
    morning = newsletters.create(db.session, {"slug": "morning", "name": "Morning"})
    imp = admin.create_import(
        db.session, filename="a.csv", source="fair", user_id=None,
        data=b"email,newsletters\nnl-a@example.com,morning\nnl-b@example.com,nosuch\n",
    )
    db.session.commit()
    assert admin.claim_import(db.session, imp.id)
    assert admin.import_chunk(db.session, imp.id, 0, admin.import_rows_of(imp.body),
                              hasher=rt.email_hash, known_sections=rt.settings.section_labels)
    db.session.commit()
    db.session.refresh(imp)
    assert (imp.added, imp.invalid) == (1, 1)
    assert reader("nl-b@example.com") is None
    held = subs.subscriptions_of(db.session, reader("nl-a@example.com").id)
    assert [(h.newsletter_id, h.status.value) for h in held] == [(morning.id, "active")]


def test_export_is_a_csv_of_the_readers_shown(client, monkeypatch):
    login(client, Role.OPS, "ops@daily.example")
    add_readers(3, prefix="kept", sections="sport")
    add_readers(2, prefix="left", status=SubscriberStatus.UNSUBSCRIBED)
    # Batches of two: the newsletters of every batch are fetched, not only the first's.
    monkeypatch.setattr(subs, "EXPORT_BATCH", 2)
    everyone = client.get("/admin/subscribers/export.csv")
    assert everyone.mimetype == "text/csv"
    assert "attachment; filename=subscribers-" in everyone.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(everyone.get_data(as_text=True))))
    assert len(rows) == 5 and list(rows[0]) == admin.EXPORT_FIELDS
    first = newsletters.first(db.session).slug
    assert [r["newsletters"] for r in rows] == [first] * 3 + [""] * 2
    only = client.get("/admin/subscribers/export.csv?status=active")
    rows = list(csv.DictReader(io.StringIO(only.get_data(as_text=True))))
    assert [r["email"] for r in rows] == [f"kept{n}@example.com" for n in range(3)]
    assert {r["sections"] for r in rows} == {"sport"}


def test_erasing_a_reader_needs_their_address_and_keeps_them_out_of_imports(app, client):
    login(client, Role.OPS, "ops@daily.example")
    (sid,) = add_readers(1, prefix="leaving")
    email = "leaving0@example.com"
    confirm = text_of(client.get(f"/admin/subscribers/{sid}/erase"))
    assert "deleted for good" in confirm
    wrong = post(client, f"/admin/subscribers/{sid}/erase", confirm="someone@example.com")
    assert wrong.status_code == 400 and "nothing was erased" in text_of(wrong)
    assert reader(email) is not None
    done = post(client, f"/admin/subscribers/{sid}/erase", confirm=" Leaving0@Example.com ")
    assert f"{email} is erased" in text_of(client.get(done.headers["Location"]))
    assert reader(email) is None
    rt = app.extensions["mailer"]
    assert db.session.get(Suppression, rt.email_hash(email)).reason == "erased"
    checked = text_of(client.get(f"/admin/subscribers/suppressions?email={email}"))
    assert f"{email} is suppressed (erased" in checked


def test_the_suppression_list_checks_and_blocks_addresses(client):
    login(client, Role.OPS, "ops@daily.example")
    page = text_of(client.get("/admin/subscribers/suppressions?email=spam@example.com"))
    assert "spam@example.com is not suppressed." in page
    bad = post(client, "/admin/subscribers/suppressions", email="not an address")
    assert bad.status_code == 400 and "does not look like an email address" in text_of(bad)
    assert db.session.scalar(select(func.count()).select_from(Suppression)) == 0
    done = post(client, "/admin/subscribers/suppressions", email="Spam@Example.com")
    listing = text_of(client.get(done.headers["Location"]))
    assert "spam@example.com is suppressed: imports will not add it." in listing
    assert "1 entry, newest first." in listing and "manual" in listing
    assert "spam@example.com" not in listing.split("1 entry")[1]  # only the hash is listed
    page = text_of(client.get("/admin/subscribers/suppressions?email=SPAM@example.com"))
    assert "spam@example.com is suppressed (manual" in page
