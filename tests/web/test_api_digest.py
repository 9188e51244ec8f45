"""The digest API: bearer tokens, create, read, edit items and text, preview, test-send."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from mailer.clock import utcnow
from mailer.db import db
from mailer.models import Issue, Role
from mailer.services import users
from tests.services.test_digests_support import add_article, mark_sent


def _token(role: Role, email: str) -> dict:
    user = users.create_user(db.session, email, "long enough password", role)
    token = users.create_api_token(db.session, user, "tests")
    db.session.commit()
    return {"Authorization": f"Bearer {token}"}


def _stories(*titles):
    now = utcnow()
    ids = [
        add_article(db.session, t, now - timedelta(minutes=n + 1)).id for n, t in enumerate(titles)
    ]
    db.session.commit()
    return ids


def _count() -> int:
    return db.session.scalar(select(func.count()).select_from(Issue))


def test_only_editors_with_a_token_create_issues(client):
    _stories("One")
    editor = _token(Role.EDITOR, "editor@daily.example")
    ops = _token(Role.OPS, "ops@daily.example")
    assert client.post("/api/v1/issues", json={}).status_code == 401
    assert (
        client.post("/api/v1/issues", json={}, headers={"Authorization": "Bearer nope"}).status_code
        == 401
    )
    assert client.post("/api/v1/issues", json={}, headers=ops).status_code == 403
    assert _count() == 0
    resp = client.post(
        "/api/v1/issues",
        headers=editor,
        json={
            "subject": "Weekly: {{ top_story }}",
            "intro": "Hi {{ name }}",
            "popular": 0,
        },
    )
    assert resp.status_code == 201, resp.json
    issue = resp.json
    assert resp.headers["Location"] == f"/api/v1/issues/{issue['id']}"
    assert issue["status"] == "draft" and issue["subject"] == "Weekly: {{ top_story }}"
    assert [i["title"] for i in issue["items"]] == ["One"]
    assert issue["audience"] == {"frequency": "weekly", "sections": []}
    # Ops may read what editors made.
    assert client.get(f"/api/v1/issues/{issue['id']}", headers=ops).json["id"] == issue["id"]
    listed = client.get("/api/v1/issues", headers=ops).json["issues"]
    assert [(i["id"], i["latest"], i["popular"]) for i in listed] == [(issue["id"], 1, 0)]


def test_bad_input_is_a_400_naming_the_field_and_writes_nothing(client):
    _stories("One")
    editor = _token(Role.EDITOR, "editor@daily.example")
    cases = [
        ({"frequency": "hourly"}, "frequency"),
        ({"sections": ["weather"]}, "sections"),
        ({"sections": [1, 2]}, "sections"),
        ({"latest": "ten"}, "latest"),
        ({"latest": 1000}, "latest"),
        ({"intro": "{{ ''.__class__ }}"}, "intro"),
        ({"subject": "Two\r\nBcc: x@example.com"}, "subject"),
        ({"subject": ""}, "subject"),
    ]
    for body, field in cases:
        resp = client.post("/api/v1/issues", json=body, headers=editor)
        assert resp.status_code == 400, body
        assert resp.json["field"] == field and resp.json["message"]
    assert (
        client.post(
            "/api/v1/issues", data="x", headers={**editor, "Content-Type": "text/plain"}
        ).status_code
        == 415
    )
    assert (
        client.post(
            "/api/v1/issues", data="{oops", headers={**editor, "Content-Type": "application/json"}
        ).status_code
        == 400
    )
    assert _count() == 0
    assert client.get("/api/v1/issues/424242", headers=editor).status_code == 404
    assert (
        client.get("/api/v1/issues/424242", headers=editor).json["message"]
        == "There is no issue 424242."
    )


def test_editing_items_and_text_then_refused_once_sent(client):
    one, two, three = _stories("One", "Two", "Three")
    old = add_article(db.session, "From the archive", utcnow() - timedelta(days=30)).id
    db.session.commit()
    editor = _token(Role.EDITOR, "editor@daily.example")
    issue = client.post("/api/v1/issues", json={"popular": 0}, headers=editor).json
    base = f"/api/v1/issues/{issue['id']}"
    items = {i["article_id"]: i["id"] for i in issue["items"]}

    edited = client.patch(
        base, json={"subject": "New subject", "preheader": "Read on"}, headers=editor
    )
    assert edited.status_code == 200 and edited.json["subject"] == "New subject"
    assert (
        client.patch(
            f"{base}/items/{items[one]}", json={"excluded": True}, headers=editor
        ).status_code
        == 200
    )
    assert (
        client.patch(
            f"{base}/items/{items[three]}", json={"position": 0}, headers=editor
        ).status_code
        == 200
    )
    added = client.post(
        f"{base}/items", json={"article_id": old, "section": "popular"}, headers=editor
    )
    assert added.status_code == 201
    shown = [
        (i["title"], i["section"], i["pinned"]) for i in added.json["items"] if not i["excluded"]
    ]
    assert shown == [
        ("Three", "latest", False),
        ("Two", "latest", False),
        ("From the archive", "popular", True),
    ]
    assert client.patch(f"{base}/items/{items[two]}", json={}, headers=editor).status_code == 400
    assert (
        client.patch(f"{base}/items/999999", json={"pinned": True}, headers=editor).status_code
        == 404
    )
    assert (
        client.post(f"{base}/items", json={"article_id": 999999}, headers=editor).status_code == 404
    )
    # Re-composing proposes the unpinned items anew; the pin and the exclusion hold.
    recomposed = client.post(f"{base}/recompose", headers=editor).json
    assert [i["title"] for i in recomposed["items"] if not i["excluded"]] == [
        "Two",
        "Three",
        "From the archive",
    ]

    mark_sent(db.session, db.session.get(Issue, issue["id"]), utcnow())
    db.session.commit()
    refused = client.patch(base, json={"subject": "Too late"}, headers=editor)
    assert refused.status_code == 409 and "only draft or scheduled" in refused.json["message"]
    assert client.get(base, headers=editor).json["subject"] == "New subject"



def test_article_ids_beyond_the_id_columns_are_404_and_add_nothing(client):
    # Found by the OpenAPI conformance run: the database driver overflowed on such ids.
    _stories("One")
    editor = _token(Role.EDITOR, "editor@daily.example")
    issue = client.post("/api/v1/issues", json={"popular": 0}, headers=editor).json
    for article_id in (2**63, -(2**63) - 1, 10**30):
        resp = client.post(
            f"/api/v1/issues/{issue['id']}/items", json={"article_id": article_id}, headers=editor
        )
        assert resp.status_code == 404, resp.json
        assert resp.json["message"] == f"There is no article {article_id}."
    shown = client.get(f"/api/v1/issues/{issue['id']}", headers=editor).json
    assert [i["title"] for i in shown["items"]] == ["One"]

def test_preview_in_json_html_and_text(client):
    _stories("Previewed story")
    editor = _token(Role.EDITOR, "editor@daily.example")
    issue = client.post("/api/v1/issues", json={"popular": 0}, headers=editor).json
    base = f"/api/v1/issues/{issue['id']}/preview"
    data = client.get(base, headers=editor).json
    assert data["subject"] == "The Daily Test: Previewed story" and "%%MLR_" not in data["html"]
    html = client.get(f"{base}?format=html", headers=editor)
    assert html.mimetype == "text/html" and b"Previewed story" in html.data
    # Shown to an editor in the console: no script may run, even in a crafted issue.
    assert "sandbox" in html.headers["Content-Security-Policy"]
    assert "script-src" not in html.headers["Content-Security-Policy"]
    text = client.get(f"{base}?format=text", headers=editor)
    assert text.mimetype == "text/plain" and b"1. Previewed story" in text.data
    assert client.get(f"{base}?format=pdf", headers=editor).status_code == 400
    assert client.get(f"{base}?sections=sport", headers=editor).status_code == 404
    assert client.get(f"{base}?sections=weather", headers=editor).status_code == 400


def test_test_send_goes_through_the_worker(client, worker, smtp):
    _stories("Tested story")
    editor = _token(Role.EDITOR, "editor@daily.example")
    issue = client.post("/api/v1/issues", json={"popular": 0}, headers=editor).json
    base = f"/api/v1/issues/{issue['id']}/test"
    resp = client.post(
        base, json={"to": ["Chief@Daily.example", "desk@daily.example"]}, headers=editor
    )
    assert resp.status_code == 202 and resp.json["to"] == [
        "chief@daily.example",
        "desk@daily.example",
    ]
    for address in resp.json["to"]:
        (mail,) = smtp.wait_for(address)
        assert mail.message["Subject"] == "[Test] The Daily Test: Tested story"
        assert "Tested story" in mail.text and "Tested story" in mail.html
    assert client.post(base, json={"to": "not an address"}, headers=editor).status_code == 400
    assert (
        client.post(
            base, json={"to": [f"a{n}@daily.example" for n in range(11)]}, headers=editor
        ).status_code
        == 400
    )
    assert (
        client.post(
            base, json={"to": ["a@daily.example"], "sections": ["sport"]}, headers=editor
        ).status_code
        == 404
    )
