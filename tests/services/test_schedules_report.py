"""The ops report of a schedule's run: one mail to the ops address, one JSON webhook, once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from mailer.db import db
from mailer.mail.errors import TemporaryFailure
from mailer.models import ScheduleRun
from mailer.services import schedules
from mailer.services.schedule_reports import REPORT_WINDOW
from mailer.tasks.schedules import fire_schedules, send_schedule_report, sweep_reports
from tests.helpers.app import make_app
from tests.helpers.servers import Webhook

OPS = "ops@daily.example"


@pytest.fixture
def webhook():
    hook = Webhook()
    yield hook
    hook.close()


@pytest.fixture
def ops_app(app, env, webhook):
    """The test's app (clean database) with an ops address and a report webhook."""
    application = make_app(env, MAILER_OPS_EMAIL=OPS, MAILER_REPORT_WEBHOOK=webhook.url)
    yield application
    application.extensions["mailer"].transport.close()  # the pooled SMTP connection


def missed_run(ops_app) -> int:
    """A daily schedule whose 07:00 Berlin period was missed (the scheduler was down 8 h)."""
    with time_machine.travel(datetime(2027, 5, 1, tzinfo=UTC), tick=False), \
            ops_app.app_context(), db.transaction() as s:
        schedules.create_schedule(s, name="Morning digest", cron_text="daily 07:00",
                                  timezone="Europe/Berlin")
    with time_machine.travel(datetime(2027, 5, 1, 13, tzinfo=UTC), tick=False), \
            ops_app.app_context():
        assert fire_schedules() == {"missed": 1}
    with db.transaction() as s:
        return s.query(ScheduleRun).one().id


def test_missed_run_is_reported_once_by_mail_and_webhook(ops_app, smtp, webhook):
    run_id = missed_run(ops_app)
    with ops_app.app_context():
        assert send_schedule_report(run_id) == "sent"
        assert send_schedule_report(run_id) == "not owed"
        assert sweep_reports() == 0

    (mail,) = smtp.wait_for(OPS)
    assert mail.message["Subject"] == (
        "[The Daily Test] Morning digest (Sat 2027-05-01 07:00 CEST) missed: Not sent: the "
        "scheduler ran 8 h after Sat 2027-05-01 07:00 CEST, beyond the grace period of 6 h")
    assert "Outcome: missed" in mail.text and "Reason:" in mail.text
    assert "/admin/schedules/" in mail.text and mail.html

    (post,) = webhook.posts
    report = post["json"]
    assert post["type"] == "application/json"
    assert report["event"] == "schedule.run" and report["outcome"] == "missed"
    assert report["schedule"]["name"] == "Morning digest"
    assert report["period_start"] == "2027-05-01T05:00:00+00:00"
    assert report["period_local"] == "2027-05-01T07:00:00+02:00"
    assert report["issue"] is None and report["counts"] is None
    assert report["text"].startswith("Morning digest (Sat 2027-05-01 07:00 CEST) missed")
    with db.transaction() as s:
        assert s.get(ScheduleRun, run_id).reported_at is not None


def test_skipped_run_reports_the_reason(ops_app, smtp, webhook):
    with time_machine.travel(datetime(2027, 5, 1, tzinfo=UTC), tick=False), \
            ops_app.app_context(), db.transaction() as s:
        schedules.create_schedule(s, name="Weekly", cron_text="sat 07:00", timezone="UTC")
    with time_machine.travel(datetime(2027, 5, 1, 7, 0, 30, tzinfo=UTC), tick=False), \
            ops_app.app_context():
        assert fire_schedules() == {"skipped": 1}
        (run_id,) = [r.id for r in db.session.query(ScheduleRun)]
        assert sweep_reports() == 1
        assert send_schedule_report(run_id) == "sent"
    report = webhook.posts[0]["json"]
    assert report["outcome"] == "skipped"
    assert report["reason"].startswith("Nothing new since 2027-04-24 07:00 UTC")
    assert report["issue"]["status"] == "skipped"
    assert "Nothing new since" in smtp.wait_for(OPS)[0].text


def test_one_channel_down_still_reports_the_other(ops_app, smtp, webhook):
    run_id = missed_run(ops_app)
    webhook.status = 503
    with ops_app.app_context():
        assert send_schedule_report(run_id) == "sent"
    assert len(smtp.wait_for(OPS)) == 1 and len(webhook.posts) == 1


def test_both_channels_down_gives_the_claim_back_for_a_retry(ops_app, smtp, webhook):
    run_id = missed_run(ops_app)
    webhook.status = 503
    smtp.rules[OPS] = "451 4.3.0 try again later"
    with ops_app.app_context():
        with pytest.raises(TemporaryFailure):
            send_schedule_report(run_id)
        with db.transaction() as s:
            assert s.get(ScheduleRun, run_id).reported_at is None
        assert sweep_reports() == 1
        smtp.rules.clear()
        webhook.status = 200
        assert send_schedule_report(run_id) == "sent"
    assert len(smtp.wait_for(OPS)) == 1 and len(webhook.posts) == 2


def test_no_report_without_an_ops_address_or_webhook(app):
    run_id = missed_run(app)
    with app.app_context():
        assert sweep_reports() == 0
        assert send_schedule_report(run_id) == "no ops address or webhook configured"
    with db.transaction() as s:
        assert s.get(ScheduleRun, run_id).reported_at is None


def test_old_runs_are_not_reported_late(ops_app):
    missed_run(ops_app)
    with ops_app.app_context():
        later = datetime(2027, 5, 1, 13, tzinfo=UTC) + REPORT_WINDOW + timedelta(minutes=1)
        with time_machine.travel(later, tick=False):
            assert sweep_reports() == 0
