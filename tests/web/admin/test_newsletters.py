"""The console's newsletters: ops add one (bad input kept in the form with the reason), edit
its settings, archive, unarchive and remove it (refused once it was sent from); editors read;
the dashboard shows readers per newsletter."""

from __future__ import annotations

import pytest

from mailer.clock import utcnow
from mailer.db import db
from mailer.models import (
    Issue,
    IssueStatus,
    Newsletter,
    Role,
    Subscriber,
    SubscriberStatus,
    Subscription,
    SubscriptionStatus,
)
from tests.helpers.console import login, post, text_of, token

# These tests make every newsletter they use, the first one too.
pytestmark = pytest.mark.usefixtures("no_newsletters")

FIELDS = {"name": "Morning Briefing", "description": "Before breakfast.", "from": "",
          "reply_to": "", "list_id": "", "public": "on", "latest_n": "6", "popular_m": "2",
          "min_items": "1"}


def _subscribe(newsletter_id: int, email: str, status=SubscriptionStatus.ACTIVE,
               person=SubscriberStatus.ACTIVE):
    sub = Subscriber(email=email, status=person)
    db.session.add(sub)
    db.session.flush()
    db.session.add(Subscription(subscriber_id=sub.id, newsletter_id=newsletter_id,
                                status=status))
    db.session.commit()


def test_ops_add_edit_archive_and_remove_a_newsletter(client, make_email):
    login(client, Role.OPS, make_email("ops"))
    empty = client.get("/admin/newsletters")
    assert empty.status_code == 200 and "No newsletters yet" in text_of(empty)
    assert 'href="/admin/newsletters"' in empty.get_data(as_text=True)  # in the menu

    bad = post(client, "/admin/newsletters", slug="Morning!", **FIELDS)
    assert bad.status_code == 400 and "lowercase letters" in text_of(bad)
    assert 'value="Morning Briefing"' in bad.get_data(as_text=True)  # kept what was typed
    assert db.session.query(Newsletter).count() == 0

    added = post(client, "/admin/newsletters", slug="morning", sections=["news", "sport"],
                 **FIELDS)
    assert added.status_code == 302 and added.headers["Location"].endswith(
        "/admin/newsletters/morning")
    morning = db.session.query(Newsletter).one()
    assert (morning.name, morning.latest_n, morning.sections, morning.public,
            morning.signup_default) == ("Morning Briefing", 6, "news,sport", True, False)
    duplicate = post(client, "/admin/newsletters", slug="morning", **FIELDS)
    assert duplicate.status_code == 409 and "already a newsletter" in text_of(duplicate)
    post(client, "/admin/newsletters", slug="evening", **{**FIELDS, "name": "Evening"})
    _subscribe(morning.id, "a@example.com")
    _subscribe(morning.id, "p@example.com", SubscriptionStatus.PENDING, SubscriberStatus.PENDING)

    listing = text_of(client.get("/admin/newsletters"))
    assert "Morning Briefing morning Before breakfast. public 1 1 0 0" in listing
    page = client.get("/admin/newsletters/morning")
    shown = text_of(page)
    assert "Settings" in shown and "From: The Daily Test <news@daily.example>" in shown
    assert "List-Id: morning.daily.example" in shown
    assert "Active readers 1 Pending 1" in shown

    # Editing: the page's form sends every field; an unticked box means no.
    refused = post(client, "/admin/newsletters/morning", **{**FIELDS, "from": "nobody"})
    assert refused.status_code == 400 and "Name <address>" in text_of(refused)
    assert 'value="nobody"' in refused.get_data(as_text=True)
    saved = post(client, "/admin/newsletters/morning",
                 **{**FIELDS, "name": "Morning", "public": "", "from": "Desk <am@daily.example>",
                    "list_id": "am.daily.example"})
    assert saved.status_code == 302
    db.session.expire_all()
    morning = db.session.get(Newsletter, morning.id)
    assert (morning.name, morning.public, morning.from_address, morning.list_id,
            morning.sections) == ("Morning", False, "am@daily.example", "am.daily.example", "")

    archived = post(client, "/admin/newsletters/morning/archive")
    assert archived.status_code == 302
    page = client.get("/admin/newsletters/morning")
    assert "Archived: it takes no new issues" in text_of(page)
    db.session.expire_all()
    assert db.session.get(Newsletter, morning.id).archived_at is not None
    post(client, "/admin/newsletters/morning/unarchive")
    db.session.expire_all()
    assert db.session.get(Newsletter, morning.id).archived_at is None

    # Once an issue went out, removing is refused and the page says why.
    db.session.add(Issue(subject="Out", newsletter_id=morning.id, status=IssueStatus.FINISHED,
                         started_at=utcnow()))
    db.session.commit()
    page = text_of(client.get("/admin/newsletters/morning"))
    assert "It cannot be removed" in page and "Archive it instead" in page
    refused = client.post("/admin/newsletters/morning/remove",
                          data={"csrf_token": token(client)}, follow_redirects=True)
    assert "was sent from (1 issue)" in text_of(refused)
    assert db.session.get(Newsletter, morning.id) is not None

    removed = post(client, "/admin/newsletters/evening/remove")
    assert removed.status_code == 302
    assert "Newsletter 'Evening' removed." in text_of(client.get("/admin/newsletters"))
    assert [n.slug for n in db.session.query(Newsletter)] == ["morning"]
    assert client.get("/admin/newsletters/evening").status_code == 404


def test_editors_read_but_do_not_change(client, make_email):
    db.session.add(Newsletter(slug="morning", name="Morning"))
    db.session.commit()
    login(client, Role.EDITOR, make_email("editor"))
    listing = client.get("/admin/newsletters")
    assert listing.status_code == 200 and "Add a newsletter" not in text_of(listing)
    page = client.get("/admin/newsletters/morning")
    assert page.status_code == 200 and "disabled" in page.get_data(as_text=True)
    assert "Ops change these settings" in text_of(page)
    assert post(client, "/admin/newsletters/morning", **FIELDS).status_code == 403
    assert post(client, "/admin/newsletters", slug="evening", **FIELDS).status_code == 403
    assert post(client, "/admin/newsletters/morning/archive").status_code == 403
    db.session.expire_all()
    assert db.session.query(Newsletter).one().name == "Morning"


def test_the_dashboard_shows_readers_per_newsletter(client, make_email):
    morning = Newsletter(slug="morning", name="Morning")
    sport = Newsletter(slug="sport", name="Sport letter", public=False)
    gone = Newsletter(slug="elections", name="Election night", archived_at=utcnow())
    db.session.add_all([morning, sport, gone])
    db.session.commit()
    for n in range(3):
        _subscribe(morning.id, f"m{n}@example.com")
    _subscribe(sport.id, "s@example.com")
    _subscribe(sport.id, "w@example.com", SubscriptionStatus.PENDING, SubscriberStatus.PENDING)
    _subscribe(sport.id, "b@example.com", person=SubscriberStatus.BOUNCED)  # gets nothing
    login(client, Role.EDITOR, make_email("editor"))
    page = text_of(client.get("/admin/"))
    assert ("Readers per newsletter Newsletter Active Pending Morning 3 0 Sport letter hidden "
            "1 1 Readers over") in page  # an archived newsletter is not listed
