"""The schedules API: bearer tokens for ops and admins, JSON in and out, 4xx for bad input."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import time_machine

from mailer.db import db
from mailer.models import Role, Schedule
from mailer.services import users


def token_for(role: Role, email: str) -> dict:
    user = users.create_user(db.session, email, "a long enough password", role)
    token = users.create_api_token(db.session, user, "tests")
    db.session.commit()
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def ops(app, make_email):
    return token_for(Role.OPS, make_email("ops"))


WEEKLY = {"name": "Weekly digest", "cron": "0 7 * * mon", "timezone": "Europe/Berlin",
          "sections": ["news", "sport"], "latest_n": 8, "popular_m": 3, "grace_hours": 2}


def test_create_list_show_next_pause_resume_delete(client, ops):
    with time_machine.travel(datetime(2027, 3, 20, 12, tzinfo=UTC), tick=False):
        created = client.post("/api/v1/schedules", json=WEEKLY, headers=ops)
        assert created.status_code == 201, created.json
        item = created.json
        assert item["name"] == "Weekly digest" and item["description"] == "Mondays at 07:00"
        assert item["frequency"] == "weekly" and item["sections"] == ["news", "sport"]
        assert item["status"] == "active" and item["grace_hours"] == 2
        assert item["next_runs"] == ["2027-03-22T07:00:00+01:00", "2027-03-29T07:00:00+02:00",
                                     "2027-04-05T07:00:00+02:00"]
        sid = item["id"]

        listing = client.get("/api/v1/schedules", headers=ops).json["schedules"]
        assert [s["id"] for s in listing] == [sid]

        shown = client.get(f"/api/v1/schedules/{sid}", headers=ops).json
        assert shown["recent_runs"] == [] and len(shown["next_runs"]) == 5

        nxt = client.get(f"/api/v1/schedules/{sid}/next?count=2&after=2027-10-25T00:00",
                         headers=ops).json
        assert nxt == {"id": sid, "timezone": "Europe/Berlin",
                       "next_runs": ["2027-10-25T07:00:00+02:00", "2027-11-01T07:00:00+01:00"]}

        paused = client.post(f"/api/v1/schedules/{sid}/pause", headers=ops)
        assert paused.status_code == 200 and paused.json["status"] == "paused"
        assert paused.json["next_runs"] == []
        twice = client.post(f"/api/v1/schedules/{sid}/pause", headers=ops)
        assert twice.status_code == 409 and "must be active" in twice.json["message"]
        resumed = client.post(f"/api/v1/schedules/{sid}/resume", headers=ops)
        assert resumed.status_code == 200 and resumed.json["status"] == "active"

    assert client.delete(f"/api/v1/schedules/{sid}", headers=ops).status_code == 204
    assert client.get(f"/api/v1/schedules/{sid}", headers=ops).status_code == 404
    assert client.delete(f"/api/v1/schedules/{sid}", headers=ops).status_code == 404


def test_tokens_and_roles(client, app, make_email):
    assert client.get("/api/v1/schedules").status_code == 401
    forged = {"Authorization": "Bearer nope"}
    assert client.get("/api/v1/schedules", headers=forged).status_code == 401
    editor = token_for(Role.EDITOR, make_email("editor"))
    refused = client.post("/api/v1/schedules", json=WEEKLY, headers=editor)
    assert refused.status_code == 403 and refused.is_json
    admin = token_for(Role.ADMIN, make_email("admin"))
    assert client.post("/api/v1/schedules", json=WEEKLY, headers=admin).status_code == 201
    assert db.session.query(Schedule).count() == 1


@pytest.mark.parametrize(
    "change, field, message",
    [
        ({"cron": "0 7 * *"}, "cron", "neither five cron fields"),
        ({"cron": 7}, "cron", "cron must be a string"),
        ({"cron": "*/10 * * * *"}, "cron", "at most once an hour"),
        ({"timezone": "Berlin"}, "timezone", "not a known time zone"),
        ({"frequency": "hourly"}, "frequency", "weekly or daily"),
        ({"sections": ["weather"]}, "sections", "Unknown section 'weather'"),
        ({"sections": "news"}, None, None),
        ({"latest_n": -1}, "latest_n", "between 0 and 100"),
        ({"latest_n": "ten"}, "latest_n", "whole number"),
        ({"latest_n": float("inf")}, "latest_n", "whole number"),  # 1e400 in JSON (was a 500)
        ({"latest_n": 0, "popular_m": 0}, "latest_n", "needs latest or popular"),
        ({"grace_hours": 1000}, "grace_hours", "at most 168"),
        ({"name": ""}, "name", "Give the schedule a name"),
        ({"name": "Line\r\nBreak"}, "name", "control characters"),
        ({"subject": "{{ unclosed"}, "subject", None),
        ({"colour": "blue"}, "colour", "Unknown field 'colour'"),
    ],
)
def test_bad_input_is_a_400_and_writes_nothing(client, ops, change, field, message):
    resp = client.post("/api/v1/schedules", json={**WEEKLY, **change}, headers=ops)
    if field is None:
        assert resp.status_code == 201  # a single section as a string is fine
        return
    assert resp.status_code == 400, resp.json
    assert resp.json["error"] == "invalid" and resp.json["field"] == field
    if message:
        assert message in resp.json["message"]
    assert db.session.query(Schedule).count() == 0


def test_other_bad_requests(client, ops):
    assert client.post("/api/v1/schedules", data="{", headers={**ops, "Content-Type":
                       "application/json"}).status_code == 400
    assert client.post("/api/v1/schedules", data="x", headers={**ops, "Content-Type":
                       "text/plain"}).status_code == 415
    sid = client.post("/api/v1/schedules", json=WEEKLY, headers=ops).json["id"]
    dup = client.post("/api/v1/schedules", json=WEEKLY, headers=ops)
    assert dup.status_code == 409 and "exists already" in dup.json["message"]
    # The calendar's edges were 500s: no firing time can be computed there.
    for query in ["count=0", "count=abc", "after=tomorrow", "after=0001-01-01T00:00",
                  "after=9999-12-31T23:59"]:
        bad = client.get(f"/api/v1/schedules/{sid}/next?{query}", headers=ops)
        assert bad.status_code == 400 and bad.json["error"] == "invalid"
    assert client.get("/api/v1/schedules/12345/next", headers=ops).status_code == 404
    assert client.get(f"/api/v1/schedules/{sid}/runs", headers=ops).json == {"total": 0, "runs": []}



def test_times_before_standard_time_are_rfc3339(client, ops):
    # Found by the OpenAPI conformance run: Berlin's local mean time before 1893 (+00:53:28)
    # came out as an offset with seconds, which RFC 3339 (and most parsers) cannot read.
    sid = client.post("/api/v1/schedules", json=WEEKLY, headers=ops).json["id"]
    old = client.get(f"/api/v1/schedules/{sid}/next?count=1&after=1890-01-01T00:00", headers=ops)
    assert old.json["next_runs"] == ["1890-01-06T06:06:32+00:00"]  # Monday 07:00 LMT, in UTC
    new = client.get(f"/api/v1/schedules/{sid}/next?count=1&after=2027-03-20T00:00", headers=ops)
    assert new.json["next_runs"] == ["2027-03-22T07:00:00+01:00"]

def test_run_now_and_runs(client, ops):
    with time_machine.travel(datetime(2027, 6, 1, 9, 15, 20, tzinfo=UTC), tick=False):
        sid = client.post("/api/v1/schedules", json=WEEKLY, headers=ops).json["id"]
        ran = client.post(f"/api/v1/schedules/{sid}/run-now", headers=ops)
        assert ran.status_code == 202
        assert ran.json["status"] == "skipped" and ran.json["issue_id"]
        assert ran.json["period_local"] == "2027-06-01T11:15:00+02:00"
        assert client.post(f"/api/v1/schedules/{sid}/run-now", headers=ops).status_code == 409
        listed = client.get(f"/api/v1/schedules/{sid}/runs", headers=ops).json
        assert listed["total"] == 1 and listed["runs"][0]["id"] == ran.json["id"]
        shown = client.get(f"/api/v1/schedules/{sid}", headers=ops).json
        assert shown["last_run"]["status"] == "skipped"
    assert client.post("/api/v1/schedules/999/run-now", headers=ops).status_code == 404
