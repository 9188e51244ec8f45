"""Bounces and complaints in the console: a reader's history and the Reactivate button, the
issue's report with its counts, rates and diagnostics."""

from __future__ import annotations

from sqlalchemy import select, update

from mailer.bounces import Kind
from mailer.db import db
from mailer.models import Issue, IssueStatus, Role, Subscriber
from mailer.services import bounces
from tests.helpers.bounces import report, sending_issue
from tests.helpers.console import login, post, text_of


def test_the_console_shows_the_history_and_reactivates(app, client):
    settings = app.extensions["mailer"].settings
    issue_id, dids, emails = sending_issue(3)
    with db.transaction() as s:
        bounces.record(s, settings, report(Kind.HARD, dids[0]))
        bounces.record(s, settings, report(Kind.COMPLAINT, dids[1]))
        sub_id = s.scalar(select(Subscriber.id).where(Subscriber.email == emails[0]))
    login(client, Role.OPS, "ops@daily.example")
    page = text_of(client.get(f"/admin/subscribers/{sub_id}"))
    assert "Bounces and complaints" in page and "550 5.1.1 no such user" in page
    assert "Reactivate" in page
    done = post(client, f"/admin/subscribers/{sub_id}/reactivate")
    assert done.status_code == 302
    assert f"{emails[0]} is active again." in text_of(client.get(f"/admin/subscribers/{sub_id}"))
    with db.transaction() as s:
        s.execute(update(Issue).where(Issue.id == issue_id).values(status=IssueStatus.FINISHED))
    login(client, Role.EDITOR, "editor@daily.example")
    report_page = text_of(client.get(f"/admin/issues/{issue_id}/report"))
    assert "1 hard bounces (33.33%)" in report_page
    assert "complaint" in report_page and "550 5.1.1 no such user" in report_page
