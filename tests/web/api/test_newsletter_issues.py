"""The API's issues and schedules name their newsletter by slug, in and out."""

from __future__ import annotations

from datetime import timedelta

from mailer.clock import utcnow
from mailer.db import db
from mailer.models import Newsletter, Role
from mailer.services import newsletters, users
from tests.helpers.digests import add_article


def _auth(role: Role, email: str) -> dict:
    user = users.create_user(db.session, email, "a long enough password", role)
    token = users.create_api_token(db.session, user, "tests")
    db.session.commit()
    return {"Authorization": f"Bearer {token}"}


def test_issues_and_schedules_take_and_return_their_newsletter(client):
    editor = _auth(Role.EDITOR, "editor@daily.example")
    ops = _auth(Role.OPS, "ops@daily.example")
    db.session.add(Newsletter(slug="sport", name="The Sport Letter", popular_m=0))
    db.session.add(Newsletter(slug="gone", name="Gone", archived_at=utcnow()))
    add_article(db.session, "Cup final tonight", utcnow() - timedelta(hours=1))
    db.session.commit()
    first = newsletters.first(db.session).slug

    made = client.post("/api/v1/issues", json={"newsletter": "sport"}, headers=editor)
    assert made.status_code == 201, made.json
    assert made.json["newsletter"] == "sport" and made.json["popular_m"] == 0
    assert made.json["subject"] == "{{ list_name }}: {{ top_story }}"
    plain = client.post("/api/v1/issues", json={"min_items": 0}, headers=editor)
    assert plain.status_code == 201 and plain.json["newsletter"] == first
    listed = client.get("/api/v1/issues?newsletter=sport", headers=editor).json["issues"]
    assert [(i["id"], i["newsletter"]) for i in listed] == [(made.json["id"], "sport")]
    assert client.get("/api/v1/issues?newsletter=nope", headers=editor).status_code == 404

    gone = client.post("/api/v1/issues", json={"newsletter": "gone"}, headers=editor)
    assert gone.status_code == 409 and "archived" in gone.json["message"]
    unknown = client.post("/api/v1/issues", json={"newsletter": "nope"}, headers=editor)
    assert unknown.status_code == 404
    wrong = client.post("/api/v1/issues", json={"newsletter": 7}, headers=editor)
    assert wrong.status_code == 400 and wrong.json["field"] == "newsletter"

    schedule = client.post("/api/v1/schedules", json={
        "name": "Sport Monday", "cron": "mon 07:00", "newsletter": "sport"}, headers=ops)
    assert schedule.status_code == 201 and schedule.json["newsletter"] == "sport"
    assert schedule.json["popular_m"] == 0
    other = client.post("/api/v1/schedules", json={"name": "Weekly", "cron": "mon 07:00"},
                        headers=ops)
    assert other.status_code == 201 and other.json["newsletter"] == first
    only = client.get("/api/v1/schedules?newsletter=sport", headers=ops).json["schedules"]
    assert [s["name"] for s in only] == ["Sport Monday"]
    assert client.post("/api/v1/schedules", json={
        "name": "Late", "cron": "mon 07:00", "newsletter": "gone"}, headers=ops).status_code == 409
    assert client.post("/api/v1/schedules", json={
        "name": "Late", "cron": "mon 07:00", "newsletter": "nope"}, headers=ops).status_code == 404
