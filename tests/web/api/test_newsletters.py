"""The newsletters API: editors and ops read, ops change; JSON in and out; 4xx with the field
for bad input, nothing written."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from mailer.db import db
from mailer.models import (
    Newsletter,
    Role,
    Subscriber,
    SubscriberStatus,
    Subscription,
    SubscriptionStatus,
)
from mailer.services import users

# These tests make every newsletter they use, the first one too.
pytestmark = pytest.mark.usefixtures("no_newsletters")


def token_for(role: Role, email: str) -> dict:
    user = users.create_user(db.session, email, "a long enough password", role)
    token = users.create_api_token(db.session, user, "tests")
    db.session.commit()
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def ops(app, make_email):
    return token_for(Role.OPS, make_email("ops"))


@pytest.fixture
def editor(app, make_email):
    return token_for(Role.EDITOR, make_email("editor"))


MORNING = {"slug": "morning", "name": "Morning Briefing", "from": "Morning <am@daily.example>",
           "reply_to": "letters@daily.example", "description": "Before breakfast.",
           "sections": ["news", "sport"], "latest_n": 6, "popular_m": 2, "min_items": 3,
           "signup_default": True}


def _count() -> int:
    return db.session.scalar(select(func.count()).select_from(Newsletter))


def test_create_list_show_update(client, ops, editor):
    created = client.post("/api/v1/newsletters", json=MORNING, headers=ops)
    assert created.status_code == 201, created.json
    item = created.json
    assert (item["slug"], item["name"], item["from"], item["reply_to"], item["sections"],
            item["latest_n"], item["signup_default"], item["public"], item["archived"]) == (
        "morning", "Morning Briefing", "Morning <am@daily.example>", "letters@daily.example",
        ["news", "sport"], 6, True, True, False)
    assert item["readers"] == {"active": 0, "pending": 0, "unsubscribed": 0, "suppressed": 0}

    reader = Subscriber(email="r@example.com", status=SubscriberStatus.PENDING)
    db.session.add(reader)
    db.session.flush()
    db.session.add(Subscription(subscriber_id=reader.id, newsletter_id=item["id"],
                                status=SubscriptionStatus.PENDING))
    db.session.commit()

    listing = client.get("/api/v1/newsletters", headers=editor)
    assert listing.status_code == 200
    (listed,) = [n for n in listing.json["newsletters"] if n["slug"] == "morning"]
    assert listed["readers"]["pending"] == 1
    shown = client.get("/api/v1/newsletters/morning", headers=editor)
    assert shown.status_code == 200 and shown.json["readers"]["pending"] == 1

    changed = client.patch("/api/v1/newsletters/morning", headers=ops,
                           json={"name": "Morning", "archived": True, "from": None})
    assert changed.status_code == 200, changed.json
    assert (changed.json["name"], changed.json["archived"], changed.json["from"],
            changed.json["latest_n"]) == ("Morning", True, None, 6)
    assert changed.json["archived_at"]
    assert db.session.scalar(select(Newsletter.archived_at).where(
        Newsletter.slug == "morning")) is not None
    back = client.patch("/api/v1/newsletters/morning", headers=ops, json={"archived": False})
    assert back.json["archived"] is False and back.json["archived_at"] is None


def test_roles(client, ops, editor):
    assert client.post("/api/v1/newsletters", json=MORNING, headers=editor).status_code == 403
    assert client.post("/api/v1/newsletters", json=MORNING).status_code == 401
    assert client.post("/api/v1/newsletters", json=MORNING, headers=ops).status_code == 201
    assert client.patch("/api/v1/newsletters/morning", json={"name": "X"},
                        headers=editor).status_code == 403
    assert client.get("/api/v1/newsletters/morning").status_code == 401
    assert db.session.scalar(select(Newsletter.name)) == "Morning Briefing"


@pytest.mark.parametrize("body, status, field", [
    ({"slug": "Bad Slug", "name": "X"}, 400, "slug"),
    ({"slug": "evening"}, 400, "name"),
    ({"slug": "evening", "name": "E", "from": "nobody"}, 400, "from"),
    ({"slug": "evening", "name": "E", "list_id": "no-dots"}, 400, "list_id"),
    ({"slug": "evening", "name": "E", "latest_n": 1000}, 400, "latest_n"),
    ({"slug": "evening", "name": "E", "sections": ["weather"]}, 400, "sections"),
    ({"slug": "evening", "name": "E", "colour": "red"}, 400, "colour"),
    ({"slug": "morning", "name": "Again"}, 409, None),
])
def test_bad_bodies_are_refused_and_write_nothing(client, ops, body, status, field):
    assert client.post("/api/v1/newsletters", json=MORNING, headers=ops).status_code == 201
    before = _count()
    answer = client.post("/api/v1/newsletters", json=body, headers=ops)
    assert answer.status_code == status, answer.json
    assert answer.json["message"] and answer.json.get("field") == field
    assert _count() == before


def test_bad_updates_and_unknown_slugs(client, ops):
    client.post("/api/v1/newsletters", json=MORNING, headers=ops)
    for body, field in [({"slug": "renamed"}, "slug"), ({"public": "sometimes"}, "public"),
                        ({"name": "Fine", "popular_m": -2}, "popular_m")]:
        answer = client.patch("/api/v1/newsletters/morning", json=body, headers=ops)
        assert (answer.status_code, answer.json["field"]) == (400, field)
    assert db.session.scalar(select(Newsletter.name)) == "Morning Briefing"
    assert client.get("/api/v1/newsletters/nosuch", headers=ops).status_code == 404
    missing = client.patch("/api/v1/newsletters/nosuch", json={"name": "X"}, headers=ops)
    assert missing.status_code == 404 and missing.json["error"] == "not_found"
    wrong_type = client.patch("/api/v1/newsletters/morning", data="name=x", headers={
        **ops, "Content-Type": "text/plain"})
    assert wrong_type.status_code == 415
