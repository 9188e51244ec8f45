"""What the reports add up to: an issue's counts and rates, the automatic pause, the
reader's history, reactivation, and the signals in the CLI, the console and /metrics."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from sqlalchemy import select

from mailer.bounces import Kind
from mailer.db import db
from mailer.errors import Conflict
from mailer.models import (
    Issue,
    IssueStatus,
    Subscriber,
    SubscriberStatus,
)
from mailer.services import bounces, deliveries, reports
from tests.helpers.bounces import report, sending_issue


def issue(issue_id: int) -> Issue:
    with db.transaction() as s:
        row = s.get(Issue, issue_id)
        s.expunge(row)
        return row


def test_an_issue_pauses_itself_when_complaints_pass_the_limit(rt):
    issue_id, dids, _ = sending_issue(1200)
    settings = rt.settings  # 0.3 % complaints after at least 1,000 messages
    for did in dids[:3]:  # 3 of 1,200 = 0.25 %: goes on
        with db.transaction() as s:
            bounces.record(s, settings, report(Kind.COMPLAINT, did))
    assert issue(issue_id).status == IssueStatus.SENDING
    with db.transaction() as s:  # the 4th: 0.33 %
        bounces.record(s, settings, report(Kind.COMPLAINT, dids[3]))
    paused = issue(issue_id)
    assert paused.status == IssueStatus.PAUSED
    assert paused.status_reason == (
        "Paused automatically: 4 complaints in 1200 messages (0.33%, over 0.3 %)."
    )
    with db.transaction() as s:
        st = deliveries.status(s, issue_id)
        assert (st["status"], st["reason"]) == ("paused", paused.status_reason)
        assert (st["complaints"], st["complaints_rate"]) == (4, round(4 / 1200, 6))
        # The dashboard shows the pause with its reason, and the complaint rate.
        shown = {w.kind: w.message for w in reports.warnings(s, settings)}
        letter = s.get(Issue, issue_id).newsletter.name
        assert shown["paused"] == (f"Issue {issue_id} of {letter} is paused: "
                                   f"{paused.status_reason}")
        assert f"0.33% of the readers of issue {issue_id} of {letter}" in shown["complaints"]


def test_hard_bounces_pause_only_after_enough_messages(rt):
    issue_id, dids, _ = sending_issue(40)
    settings = replace(rt.settings, bounce_pause_min=50)
    for did in dids[:10]:  # 25 %, but only 40 messages
        with db.transaction() as s:
            bounces.record(s, settings, report(Kind.HARD, did))
    assert issue(issue_id).status == IssueStatus.SENDING
    settings = replace(settings, bounce_pause_min=40)
    with db.transaction() as s:
        bounces.record(s, settings, report(Kind.HARD, dids[10]))
    assert issue(issue_id).status_reason.startswith(
        "Paused automatically: 11 hard bounces in 40 messages (27.50%, over 5 %)"
    )
    # A paused issue is not paused again; a finished one never.
    with db.transaction() as s:
        assert bounces.pause_if_over(s, settings, issue_id) is False


def test_issue_counts_count_each_reader_once_per_kind(rt):
    issue_id, dids, _ = sending_issue(10)
    for key, kind, did in (("a", Kind.SOFT, dids[0]), ("b", Kind.SOFT, dids[0]),
                           ("c", Kind.HARD, dids[1]), ("d", Kind.COMPLAINT, dids[2])):
        with db.transaction() as s:
            bounces.record(s, rt.settings, report(kind, did, key=key))
    with db.transaction() as s:
        c = bounces.issue_counts(s, issue_id)
    assert (c["bounced_hard"], c["bounced_soft"], c["complaints"], c["messages"]) == (1, 1, 1, 10)
    assert (c["bounced_hard_rate"], c["complaints_rate"]) == (0.1, 0.1)


def test_the_cli_shows_a_readers_story_and_reactivates_them(rt, runner):
    issue_id, dids, emails = sending_issue(2)
    with db.transaction() as s:
        bounces.record(s, rt.settings, report(Kind.SOFT, dids[0], key="s1"))
        bounces.record(s, rt.settings, report(Kind.HARD, dids[0]))
    shown = runner.invoke(["subscribers", "show", emails[0], "--json"])
    assert shown.exit_code == 0
    doc = json.loads(shown.output)
    assert (doc["email"], doc["status"], doc["bounce_score"]) == (emails[0], "bounced", 1)
    assert doc["last_bounce"] is not None
    assert [(e["kind"], e["source"]) for e in doc["events"]] == [("hard", "pipe"), ("soft", "pipe")]
    assert doc["events"][0]["detail"] == "5.1.1 550 5.1.1 no such user"
    assert set(doc["events"][0]) == {"kind", "at", "source", "detail", "issue"}
    text = runner.invoke(["subscribers", "show", emails[0]]).output
    assert text.startswith(f"{emails[0]}: bounced, bounce score 1, last bounce ")

    done = runner.invoke(["subscribers", "reactivate", emails[0]])
    assert done.exit_code == 0
    with db.transaction() as s:
        sub = s.scalar(select(Subscriber).where(Subscriber.email == emails[0]))
        assert (sub.status, sub.bounce_score) == (SubscriberStatus.ACTIVE, 0)
    again = runner.invoke(["subscribers", "reactivate", emails[1]])
    assert again.exit_code == 1 and "Only a bounced reader can be reactivated" in again.output
    assert runner.invoke(["subscribers", "show", "nobody@example.org"]).exit_code == 1

    status = json.loads(runner.invoke(["digest", "status", str(issue_id), "--json"]).output)
    assert (status["bounced_hard"], status["bounced_soft"], status["complaints"]) == (1, 1, 0)
    assert status["bounced_hard_rate"] == 0.5


def test_a_complained_reader_is_not_reactivated_by_an_operator(rt):
    _, dids, emails = sending_issue(1)
    with db.transaction() as s:
        bounces.record(s, rt.settings, report(Kind.COMPLAINT, dids[0]))
    with db.transaction() as s:
        sub = s.scalar(select(Subscriber).where(Subscriber.email == emails[0]))
        with pytest.raises(Conflict, match="signing up and confirming again"):
            bounces.reactivate(s, sub, by="test")
