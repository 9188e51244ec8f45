"""The composer, sending and reports through the console (Flask's test client).

The browser journey with the real worker is in test_console_browser.py; these cover the
rules: edits, bad input, the confirmation, idempotent starts, send-at times and the tick,
pause/resume/cancel, and what the report counts.
"""

from __future__ import annotations

import re
import threading
from datetime import UTC, timedelta
from zoneinfo import ZoneInfo

import time_machine
from sqlalchemy import func, select

from mailer.bounces import Kind, Report, Source
from mailer.clock import utcnow
from mailer.db import db
from mailer.models import (
    Article,
    Click,
    Delivery,
    DeliveryStatus,
    Issue,
    IssueItem,
    IssueStatus,
    Role,
)
from mailer.services import after_commit, bounces, deliveries, digests
from mailer.tasks.console import start_due_issues
from tests.helpers.console import add_readers, login, post, text_of, token
from tests.helpers.digests import BROWSER_UA, add_article

HOUR = timedelta(hours=1)


def stories(*titles, hours_ago: int = 1) -> list[int]:
    now = utcnow()
    ids = [add_article(db.session, t, now - (hours_ago + n) * HOUR).id
           for n, t in enumerate(titles)]
    db.session.commit()
    return ids


def items(issue_id: int) -> dict[str, list[str]]:
    """Titles per section in reading order; dropped ones under 'dropped'."""
    db.session.expire_all()
    out: dict[str, list[str]] = {"latest": [], "popular": [], "dropped": []}
    for item in db.session.scalars(
        select(IssueItem).where(IssueItem.issue_id == issue_id)
        .order_by(IssueItem.section, IssueItem.position, IssueItem.id)
    ):
        out["dropped" if item.excluded else str(item.section)].append(item.article.title)
    return out


def item_id(issue_id: int, title: str) -> int:
    return next(i.id for i in db.session.scalars(
        select(IssueItem).where(IssueItem.issue_id == issue_id)) if i.article.title == title)


def new_issue(client, **form) -> int:
    resp = post(client, "/admin/issues/new", **form)
    assert resp.status_code == 302, text_of(resp)
    return int(resp.headers["Location"].rsplit("/", 1)[1])


def issue(issue_id: int) -> Issue:
    db.session.expire_all()
    return db.session.get(Issue, issue_id)


def test_compose_reorder_pin_drop_add_and_propose_again(client):
    stories("One", "Two", "Three", "Four", "Five")
    old = db.session.get(Article, stories("Old favourite", hours_ago=24 * 10)[0])
    for n in range(3):  # readers on the site make an older story this week's most read
        seen = client.post("/api/v1/pageviews", json={"url": old.url},
                           headers={"User-Agent": BROWSER_UA},
                           environ_base={"REMOTE_ADDR": f"10.1.0.{n}"})
        assert seen.status_code == 204
    login(client, Role.EDITOR, "editor@daily.example")
    empty = text_of(client.get("/admin/issues"))
    assert "No issues yet." in empty

    iid = new_issue(client, latest="4", popular="2")
    page = text_of(client.get(f"/admin/issues/{iid}"))
    assert f"Issue {iid} draft" in page and "Readers see: The Daily Test: One" in page
    assert items(iid) == {"latest": ["One", "Two", "Three", "Four"],
                          "popular": ["Old favourite"], "dropped": []}

    post(client, f"/admin/issues/{iid}/items/{item_id(iid, 'One')}/down")
    post(client, f"/admin/issues/{iid}/items/{item_id(iid, 'Four')}/up")
    assert items(iid)["latest"] == ["Two", "One", "Four", "Three"]
    post(client, f"/admin/issues/{iid}/items/{item_id(iid, 'Three')}/move", section="popular",
         position="0")
    post(client, f"/admin/issues/{iid}/items/{item_id(iid, 'Two')}/exclude")
    post(client, f"/admin/issues/{iid}/items/{item_id(iid, 'Four')}/pin")
    five = db.session.scalar(select(Article.id).where(Article.title == "Five"))
    added = post(client, f"/admin/issues/{iid}/articles/{five}")
    assert "Article added and pinned." in text_of(client.get(added.headers["Location"]))
    assert items(iid) == {"latest": ["One", "Four", "Five"],
                          "popular": ["Three", "Old favourite"], "dropped": ["Two"]}
    page = text_of(client.get(f"/admin/issues/{iid}"))
    assert "Dropped (1)" in page and "Restore" in page and "pinned" in page

    # The drag-and-drop script moves with JSON; a bad position is a JSON 400.
    moved = client.post(f"/admin/issues/{iid}/items/{item_id(iid, 'Five')}/move",
                        data={"csrf_token": token(client), "position": "0",
                              "section": "latest"}, headers={"Accept": "application/json"})
    assert moved.status_code == 200 and moved.json == {"ok": True}
    bad = client.post(f"/admin/issues/{iid}/items/{item_id(iid, 'Five')}/move",
                      data={"csrf_token": token(client), "position": "-3"},
                      headers={"Accept": "application/json"})
    assert bad.status_code == 400 and bad.json["field"] == "position"
    assert items(iid)["latest"] == ["Five", "One", "Four"]

    # Proposing again keeps pinned and dropped items; the rest is chosen anew.
    post(client, f"/admin/issues/{iid}/recompose")
    after = items(iid)
    assert after["dropped"] == ["Two"] and {"Four", "Five"} <= set(after["latest"])
    post(client, f"/admin/issues/{iid}/items/{item_id(iid, 'Two')}/include")
    assert "Two" in items(iid)["latest"]
    other = client.post(f"/admin/issues/{iid}/items/999999/pin",
                        data={"csrf_token": token(client)})
    assert other.status_code == 404


def test_text_is_checked_and_kept_when_wrong_and_preview_is_sandboxed(client):
    stories("The big story")
    login(client, Role.EDITOR, "editor@daily.example")
    iid = new_issue(client)
    wrong = post(client, f"/admin/issues/{iid}/text", subject="Weekly {{ oops",
                 preheader="", intro="Hello")
    assert wrong.status_code == 400 and "template error" in text_of(wrong)
    assert 'value="Weekly {{ oops"' in wrong.get_data(as_text=True)
    assert issue(iid).subject == digests.DEFAULT_SUBJECT and issue(iid).intro == ""
    sneaky = post(client, f"/admin/issues/{iid}/text", subject="ok",
                  intro="{{ ''.__class__.__mro__ }}")
    assert sneaky.status_code == 400 and "not allowed" in text_of(sneaky)

    saved = post(client, f"/admin/issues/{iid}/text", subject="Weekly: {{ top_story }}",
                 preheader="What you missed", intro="Hello **{{ name }}**, here is the week.")
    page = text_of(client.get(saved.headers["Location"]))
    assert "Text saved." in page and "Readers see: Weekly: The big story" in page
    html = client.get(f"/admin/issues/{iid}/preview.html")
    csp = html.headers["Content-Security-Policy"]
    assert csp.startswith("sandbox") and "script-src" not in csp and "default-src 'none'" in csp
    assert "<strong>Reader</strong>" in html.get_data(as_text=True)
    text = client.get(f"/admin/issues/{iid}/preview.txt").get_data(as_text=True)
    assert "Hello **Reader**, here is the week." in text and "The big story" in text
    mobile = client.get(f"/admin/issues/{iid}?preview=mobile").get_data(as_text=True)
    assert "preview-mobile" in mobile and 'sandbox="allow-popups' in mobile
    as_text = text_of(client.get(f"/admin/issues/{iid}?preview=text"))
    assert "Hello **Reader**" in as_text

    none = post(client, f"/admin/issues/{iid}/test", to="")
    assert none.status_code == 400 and "at least one address" in text_of(none)
    bad = post(client, f"/admin/issues/{iid}/test", to="editor@daily.example, nobody")
    assert bad.status_code == 400 and "does not look like an email address" in text_of(bad)
    many = post(client, f"/admin/issues/{iid}/test",
                to=",".join(f"e{n}@daily.example" for n in range(11)))
    assert many.status_code == 400 and "At most 10" in text_of(many)


def test_the_confirmation_states_the_audience_and_two_sends_start_one(app):
    stories("Only story")
    add_readers(3, prefix="weekly")
    add_readers(1, prefix="daily", frequency="daily")
    add_readers(1, prefix="sportonly", sections="sport")
    add_readers(1, prefix="left", status="unsubscribed")
    first, second = app.test_client(), app.test_client()
    login(first, Role.EDITOR, "one@daily.example")
    login(second, Role.EDITOR, "two@daily.example")
    iid = new_issue(first)
    page = text_of(first.get(f"/admin/issues/{iid}/send"))
    assert "3 readers will get this issue" in page
    assert "1 reader whose sections have no article in this issue" in page
    assert "Send now to 3 readers" in page

    answers = {}

    def send(name, client):
        answers[name] = client.post(f"/admin/issues/{iid}/send",
                                    data={"csrf_token": token(client)})

    threads = [threading.Thread(target=send, args=(n, c))
               for n, c in (("first", first), ("second", second))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {r.status_code for r in answers.values()} == {302}
    said = [text_of(c.get(answers[n].headers["Location"])) for n, c in
            (("first", first), ("second", second))]
    assert sum("Sending to 3 readers started." in s for s in said) == 1
    assert sum(f"Issue {iid} is already being sent" in s for s in said) == 1
    assert db.session.scalar(select(func.count()).select_from(Delivery)) == 3
    # A third click, and the confirmation page itself, show where the send is instead (a
    # worker of the session may have finished it already).
    again = post(first, f"/admin/issues/{iid}/send")
    said = text_of(first.get(again.headers["Location"]))
    assert "already being sent" in said or f"Issue {iid} was already sent." in said
    assert re.search(r"/admin/issues/\d+/(sending|report)$",
                     first.get(f"/admin/issues/{iid}/send").headers["Location"])
    late = post(first, f"/admin/issues/{iid}/text", subject="Too late")
    assert "can no longer be edited" in text_of(first.get(late.headers["Location"]))
    assert issue(iid).subject == digests.DEFAULT_SUBJECT


def test_nobody_to_send_to_is_said_before_anything_starts(client):
    stories("Only story")
    login(client, Role.EDITOR, "editor@daily.example")
    iid = new_issue(client)
    page = text_of(client.get(f"/admin/issues/{iid}/send"))
    assert "0 readers will get this issue" in page and "Nobody would get this issue" in page
    refused = post(client, f"/admin/issues/{iid}/send")
    assert refused.status_code == 400 and issue(iid).status == IssueStatus.DRAFT


def test_send_at_a_time_then_the_tick_starts_it(app, client):
    stories("Morning story")
    add_readers(2)
    login(client, Role.EDITOR, "editor@daily.example")
    iid = new_issue(client)
    berlin = ZoneInfo("Europe/Berlin")
    when = (utcnow() + 3 * HOUR).astimezone(berlin).replace(second=0, microsecond=0)
    local = when.strftime("%Y-%m-%dT%H:%M")
    for form, reason in [
        ({"send_at": (utcnow() - HOUR).strftime("%Y-%m-%dT%H:%M"), "timezone": "UTC"},
         "has passed"),
        ({"send_at": local, "timezone": "Mars/Olympus"}, "Unknown time zone"),
        ({"send_at": "tomorrow", "timezone": "UTC"}, "Give the date and time"),
    ]:
        resp = post(client, f"/admin/issues/{iid}/schedule", **form)
        assert resp.status_code == 400 and reason in text_of(resp), reason
    assert issue(iid).status == IssueStatus.DRAFT

    done = post(client, f"/admin/issues/{iid}/schedule", send_at=local, timezone="Europe/Berlin")
    at = when.astimezone(UTC)
    assert issue(iid).status == IssueStatus.SCHEDULED and issue(iid).send_at == at
    page = text_of(client.get(done.headers["Location"]))
    assert f"will be sent at {at:%Y-%m-%d %H:%M} UTC" in page and "goes out on its own" in page
    listed = text_of(client.get("/admin/issues?status=scheduled"))
    assert f"goes out {at:%Y-%m-%d %H:%M} UTC" in listed
    coming = text_of(client.get("/admin/"))
    assert f"{at:%Y-%m-%d %H:%M} UTC — issue #{iid}" in coming
    # Still editable while it waits.
    post(client, f"/admin/issues/{iid}/text", subject="Set for later")
    assert issue(iid).subject == "Set for later"

    with app.app_context():
        assert start_due_issues() == {}  # not yet
        with time_machine.travel(at - timedelta(seconds=30), tick=False):
            assert start_due_issues() == {}
        # Taken back to a draft: the time passing starts nothing.
        post(client, f"/admin/issues/{iid}/unschedule")
        assert issue(iid).status == IssueStatus.DRAFT and issue(iid).send_at is None
        with time_machine.travel(at + timedelta(minutes=5), tick=False):
            assert start_due_issues() == {}
        assert issue(iid).status == IssueStatus.DRAFT
        post(client, f"/admin/issues/{iid}/schedule", send_at=local, timezone="Europe/Berlin")
        with time_machine.travel(at + timedelta(seconds=20), tick=False):
            assert start_due_issues() == {"started": 1}
            assert start_due_issues() == {}
    assert issue(iid).status in (IssueStatus.SENDING, IssueStatus.FINISHED)  # a worker may run
    assert db.session.scalar(select(func.count()).select_from(Delivery)) == 2


def test_pause_resume_cancel_and_the_polled_status(app, smtp):
    stories("A story")
    add_readers(4)
    # Should a worker take the batch, the server puts every message off: the issue stays
    # in flight for the controls to act on.
    smtp.rules["@example.com"] = "451 4.7.1 try again later"
    editor, ops = app.test_client(), app.test_client()
    login(editor, Role.EDITOR, "editor@daily.example")
    login(ops, Role.OPS, "ops@daily.example")
    iid = new_issue(editor)
    post(editor, f"/admin/issues/{iid}/send")

    status = editor.get(f"/admin/issues/{iid}/status").json
    assert (status["state"], status["total"], status["final"]) == ("sending", 4, False)
    assert status["fields"]["status_text"] == "Sending" and status["fields"]["total"] == 4
    page = editor.get(f"/admin/issues/{iid}/sending").get_data(as_text=True)
    assert f'data-poll="/admin/issues/{iid}/status"' in page and "console.js" in page

    paused = post(ops, f"/admin/issues/{iid}/pause")
    assert "Paused:" in text_of(ops.get(paused.headers["Location"]))
    status = editor.get(f"/admin/issues/{iid}/status").json
    assert status["state"] == "paused" and status["reason"] == "Paused by ops@daily.example."
    twice = post(editor, f"/admin/issues/{iid}/pause")
    assert "That did not work" in text_of(editor.get(twice.headers["Location"]))
    post(editor, f"/admin/issues/{iid}/resume")
    assert issue(iid).status == IssueStatus.SENDING
    cancelled = post(editor, f"/admin/issues/{iid}/cancel")
    assert cancelled.headers["Location"].endswith(f"/admin/issues/{iid}/report")
    assert issue(iid).status == IssueStatus.CANCELLED
    final = editor.get(f"/admin/issues/{iid}/status").json
    assert final["final"] is True and final["fields"]["status_text"] == "Cancelled"

    # A draft discarded from the composer goes to the list.
    draft = new_issue(editor)
    gone = post(editor, f"/admin/issues/{draft}/cancel")
    assert gone.headers["Location"].endswith("/admin/issues")
    assert issue(draft).status == IssueStatus.CANCELLED


def test_the_report_counts_deliveries_clicks_and_bounces(app, client):
    a, _ = stories("Read me", "Skip me")
    add_readers(4)
    rt = app.extensions["mailer"]
    made = digests.create_issue(db.session, rt.settings, rt.popularity, now=utcnow(), subject="Weekly report test")
    deliveries.start_send(db.session, made.id, settings=rt.settings)
    after_commit.take(db.session)  # no worker sends it: the rows are set as sent below
    rows = list(db.session.scalars(select(Delivery).order_by(Delivery.id)))
    for row, (state, attempts, error) in zip(rows, [
        (DeliveryStatus.SENT, 1, None), (DeliveryStatus.SENT, 1, None),
        (DeliveryStatus.FAILED_PERMANENT, 1, "550 5.1.1 no such user"),
        (DeliveryStatus.FAILED_PERMANENT, 0, "not sent: the reader is unsubscribed"),
    ], strict=True):
        row.status, row.attempts, row.last_error = state, attempts, error
    # The 5xx answer, recorded the way the sending worker records it: a hard bounce.
    bounces.record(db.session, rt.settings, Report(
        source=Source.SMTP, kind=Kind.HARD, key=str(rows[2].id), delivery_id=rows[2].id,
        diagnostic="550 5.1.1 no such user"))
    read = db.session.scalar(select(IssueItem.id).where(IssueItem.article_id == a))
    db.session.add_all([
        Click(issue_id=made.id, item_id=read, delivery_id=rows[0].id),
        Click(issue_id=made.id, item_id=read, delivery_id=rows[0].id),
        Click(issue_id=made.id, item_id=read, delivery_id=rows[1].id),
        Click(issue_id=made.id, item_id=read, delivery_id=rows[1].id, counted=False),
    ])
    made.status, made.finished_at = IssueStatus.FINISHED, utcnow()
    db.session.commit()

    login(client, Role.OPS, "ops@daily.example")
    page = client.get(f"/admin/issues/{made.id}/report")
    text = text_of(page)
    assert "Report: Weekly report test" in text
    assert "2 sent" in text and "2 readers clicked (100.0%)" in text and "3 clicks" in text
    assert "1 hard bounces (33.33%)" in text and "0 complaints (0.00%)" in text
    assert "reader2@example.com hard smtp 550 5.1.1 no such user" in text
    assert "of which readers who left before their turn 1" in text
    assert "Read me Latest 3 2" in text and "Skip me Latest 0 0" in text
    svg = page.get_data(as_text=True)
    assert "<title id=" in svg and f"Clicks per article in issue {made.id}" in svg
    listed = text_of(client.get("/admin/issues"))
    assert "Weekly report test" in listed
    dashboard = text_of(client.get("/admin/"))
    assert "Weekly report test #" in dashboard


def test_issues_list_filters_and_pages(app, client):
    rt = app.extensions["mailer"]
    for _ in range(27):
        digests.create_issue(db.session, rt.settings, rt.popularity, now=utcnow())  # nothing new: skipped
    db.session.commit()
    login(client, Role.OPS, "ops@daily.example")
    page = text_of(client.get("/admin/issues"))
    assert "27 issues, newest first." in page and "Page 1 of 2" in page
    assert "Nothing new since" in page and "Compose a new issue" not in page
    assert "Page 2 of 2" in text_of(client.get("/admin/issues?page=2"))
    assert "No draft issues." in text_of(client.get("/admin/issues?status=draft"))
    assert client.get("/admin/issues?status=lost").status_code == 400
    skipped = db.session.scalar(select(Issue.id).limit(1))
    # An ops user following a link to a draft-only page gets a reason, not a broken page.
    assert client.get(f"/admin/issues/{skipped}").status_code == 302


def test_an_article_added_by_hand_goes_to_latest_and_popular_waits_for_reading_data(client):
    stories("Fresh story")
    archive = stories("From the archive", hours_ago=24 * 30)[0]
    login(client, Role.EDITOR, "editor@daily.example")
    iid = new_issue(client, latest="4", popular="2")
    page = text_of(client.get(f"/admin/issues/{iid}"))
    assert "No reading data yet" in page
    post(client, f"/admin/issues/{iid}/articles/{archive}")
    assert items(iid) == {"latest": ["Fresh story", "From the archive"], "popular": [],
                          "dropped": []}

    url = db.session.get(Article, archive).url
    seen = client.post("/api/v1/pageviews", json={"url": url},
                       headers={"User-Agent": BROWSER_UA}, environ_base={"REMOTE_ADDR": "10.9.0.1"})
    assert seen.status_code == 204
    page = text_of(client.get(f"/admin/issues/{iid}"))
    assert "No reading data yet" not in page
    assert "the articles read in the last 7 days are in Latest already" in page


def test_the_composer_and_the_api_turn_the_greeting_off(app, client):
    stories("One")
    login(client, Role.EDITOR, "editor@daily.example")
    iid = new_issue(client)
    assert 'id="greeting" name="greeting" checked' in client.get(f"/admin/issues/{iid}").text
    post(client, f"/admin/issues/{iid}/text", subject="Hi", preheader="", intro="Hello all!")
    assert issue(iid).greeting is False  # an unticked box is not sent
    post(client, f"/admin/issues/{iid}/text", subject="Hi", preheader="", intro="", greeting="on")
    assert issue(iid).greeting is True
