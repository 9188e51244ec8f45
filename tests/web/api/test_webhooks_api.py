"""The webhooks API: ops and admins manage endpoints; the secret is shown when made only."""

from __future__ import annotations

import pytest

from mailer.db import db
from mailer.models import HookEndpoint, Role
from mailer.services import after_commit, users
from mailer.tasks.base import hand_over


def token_for(role: Role, email: str) -> dict:
    user = users.create_user(db.session, email, "a long enough password", role)
    token = users.create_api_token(db.session, user, "tests")
    db.session.commit()
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def ops(app, make_email):
    return token_for(Role.OPS, make_email("ops"))


@pytest.fixture
def handed(app):
    got = []
    after_commit.install(lambda intent: got.append(intent) or True)
    yield got
    after_commit.install(hand_over)


HOOK = {"url": "http://127.0.0.1:9/hooks", "events": ["subscriber.confirmed", "issue.finished"],
        "personal_data": True, "description": "CRM"}


def test_add_list_rotate_disable_test_redeliver_remove(client, ops, handed):
    created = client.post("/api/v1/webhooks", json=HOOK, headers=ops)
    assert created.status_code == 201, created.json
    item = created.json
    assert item["secret"].startswith("whsec_") and item["enabled"] and item["personal_data"]
    assert item["events"] == ["issue.finished", "subscriber.confirmed"]
    hook_id = item["id"]
    listed = client.get("/api/v1/webhooks", headers=ops).json["webhooks"]
    assert [w["id"] for w in listed] == [hook_id] and "secret" not in listed[0]
    assert "secret" not in client.get(f"/api/v1/webhooks/{hook_id}", headers=ops).json

    rotated = client.post(f"/api/v1/webhooks/{hook_id}/rotate-secret", headers=ops).json
    assert rotated["secret"] != item["secret"]
    assert db.session.get(HookEndpoint, hook_id).secret == rotated["secret"]

    off = client.post(f"/api/v1/webhooks/{hook_id}/disable", headers=ops).json
    assert not off["enabled"] and off["disabled_reason"] == "Disabled by an operator."
    assert client.post(f"/api/v1/webhooks/{hook_id}/test", headers=ops).status_code == 409
    assert client.post(f"/api/v1/webhooks/{hook_id}/enable", headers=ops).json["enabled"]

    tested = client.post(f"/api/v1/webhooks/{hook_id}/test", headers=ops)
    assert tested.status_code == 202
    delivery_id = tested.json["delivery_id"]
    (row,) = client.get(f"/api/v1/webhooks/{hook_id}/deliveries", headers=ops).json["deliveries"]
    assert (row["id"], row["event"]["type"], row["status"]) == (delivery_id, "webhook.test",
                                                               "pending")
    again = client.post(f"/api/v1/webhooks/{hook_id}/deliveries/{delivery_id}/redeliver",
                        headers=ops)
    assert again.status_code == 202 and again.json["event"]["id"] == row["event"]["id"]
    assert [i.args for i in handed] == [(delivery_id,), (delivery_id,)]

    assert client.delete(f"/api/v1/webhooks/{hook_id}", headers=ops).status_code == 204
    assert client.get(f"/api/v1/webhooks/{hook_id}", headers=ops).status_code == 404


def test_bad_input_is_a_400_naming_the_field_and_writes_nothing(client, ops):
    for body, field in [
        ({**HOOK, "events": ["subscriber.nope"]}, "events"),
        ({**HOOK, "events": []}, "events"),
        ({**HOOK, "url": "ftp://example.com/x"}, "url"),
        ({**HOOK, "url": 7}, "url"),
        ({**HOOK, "personal_data": "maybe"}, "personal_data"),
        ({**HOOK, "color": "red"}, "color"),
    ]:
        resp = client.post("/api/v1/webhooks", json=body, headers=ops)
        assert resp.status_code == 400, (body, resp.json)
        assert resp.json["field"] == field and resp.json["message"]
    assert db.session.query(HookEndpoint).count() == 0


def test_only_ops_and_admins_with_a_token(client, app, make_email):
    assert client.get("/api/v1/webhooks").status_code == 401
    editor = token_for(Role.EDITOR, make_email("editor"))
    assert client.get("/api/v1/webhooks", headers=editor).status_code == 403
    admin = token_for(Role.ADMIN, make_email("admin"))
    assert client.get("/api/v1/webhooks", headers=admin).status_code == 200
