"""End to end: `mailer schedule add`, then the production worker and beat send each scheduled
digest once, to the right readers, and report to ops by mail and webhook."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import time_machine
from sqlalchemy import select

from mailer import cron
from mailer.clock import utcnow
from mailer.db import db
from mailer.models import (
    Article,
    Frequency,
    Issue,
    IssueStatus,
    ScheduleRun,
    Subscriber,
    SubscriberStatus,
)
from mailer.tasks.schedules import fire_schedules, sweep_reports
from tests.helpers.app import MailerRunner, make_app
from tests.helpers.readers import subscribe_readers
from tests.helpers.servers import ROOT, Webhook, WorkerProcess, wait_until

OPS = "ops@daily.example"


def isolated_env(env: dict, tmp_path, webhook_url: str) -> dict:
    """The session's database and SMTP server, but a broker of its own, so only this test's
    worker (configured with the ops address) takes this test's tasks."""
    out = {**env, "MAILER_OPS_EMAIL": OPS, "MAILER_REPORT_WEBHOOK": webhook_url,
           "MAILER_TICK_SECONDS": "1", "MAILER_INSTANCE_PATH": str(tmp_path / "instance")}
    if env.get("MAILER_REDIS_URL"):
        out["MAILER_REDIS_URL"] = env["MAILER_REDIS_URL"].rsplit("/", 1)[0] + "/3"
    else:
        out["MAILER_DATABASE_URL"] = f"sqlite:///{env['MAILER_INSTANCE_PATH']}/mailer.sqlite"
    return out


def readers(make_email) -> dict[Frequency, str]:
    out = {}
    with db.transaction() as s:
        for freq in Frequency:
            email = make_email(f"{freq.value}-reader")
            s.add(Subscriber(email=email, status=SubscriberStatus.ACTIVE, frequency=freq,
                             confirmed_at=utcnow(), source="test"))
            out[freq] = email
        s.flush()
        subscribe_readers(s)
        now = utcnow()
        for n in range(3):
            s.add(Article(title=f"Story {n} of the day", url=f"https://daily.example/e2e-{n}",
                          summary="What happened.", published_at=now - timedelta(hours=n + 1)))
    return out


def a_minute_ago(zone: str) -> tuple[str, str]:
    """(weekday, HH:MM) of the minute that just passed, in `zone`."""
    local = (utcnow() - timedelta(minutes=1)).astimezone(cron.zone(zone))
    return local.strftime("%a").lower(), local.strftime("%H:%M")


def test_scheduled_digests_go_out_once_and_ops_get_a_report(
    app, env, smtp, make_email, tmp_path
):
    hook = Webhook()
    ops_env = isolated_env(env, tmp_path, hook.url)
    ops_app = make_app(ops_env)
    emails = readers(make_email)

    # Added an hour ago, each due a minute ago: a weekly one in Berlin, a daily one in New York.
    runner = MailerRunner(ops_app)
    berlin_day, berlin_at = a_minute_ago("Europe/Berlin")
    _, new_york_at = a_minute_ago("America/New_York")
    with time_machine.travel(utcnow() - timedelta(hours=1)):
        weekly = runner.invoke(["schedule", "add", "--name", "Weekly", "--cron",
                                f"{berlin_day} {berlin_at}", "--tz", "Europe/Berlin"])
        daily = runner.invoke(["schedule", "add", "--name", "Daily", "--cron",
                               f"daily {new_york_at}", "--tz", "America/New_York"])
    assert weekly.exit_code == 0 and daily.exit_code == 0, weekly.output + daily.output
    weekly_id, daily_id = int(weekly.stdout.split()[-1]), int(daily.stdout.split()[-1])

    # The worker ticks too (not only beat), so the first tick can come from either process.
    ticks_started = utcnow()
    worker = WorkerProcess(ops_env, tmp_path / "worker.log").start()
    with open(tmp_path / "beat.log", "wb") as beat_log:
        beat = subprocess.Popen([sys.executable, "-m", "mailer.cli", "beat"], env=ops_env,
                                cwd=ROOT, stdout=beat_log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            weekly_mail = smtp.wait_for(emails[Frequency.WEEKLY], timeout=60)
            daily_mail = smtp.wait_for(emails[Frequency.DAILY], timeout=60)
            reports = smtp.wait_for(OPS, count=2, timeout=60)
            wait_until(lambda: len(hook.posts) >= 2, 30, what="two webhook reports")
            time.sleep(3)  # a few more beat ticks: nothing more may go out
            # A second scheduler coming late (a restarted beat, another host) finds nothing
            # owed.
            with ops_app.app_context():
                assert fire_schedules() == {} and sweep_reports() == 0
        finally:
            if beat.poll() is None:
                os.killpg(beat.pid, signal.SIGTERM)
                beat.wait(20)
            worker.stop()
            hook.close()
            ops_app.extensions["mailer"].transport.close()
    # The worker fired both schedules (from its own tick or from the beat's).
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert f"schedule {weekly_id} fired for" in log and f"schedule {daily_id} fired for" in log

    # One digest per reader: weekly readers got the weekly schedule's, daily readers the daily.
    assert len(smtp.to(emails[Frequency.WEEKLY])) == 1 == len(weekly_mail)
    assert len(smtp.to(emails[Frequency.DAILY])) == 1 == len(daily_mail)
    assert "Story 0 of the day" in weekly_mail[0].text
    assert "Story 0 of the day" in daily_mail[0].text
    with db.transaction() as s:
        issues = list(s.scalars(select(Issue).order_by(Issue.schedule_id)))
        runs = list(s.scalars(select(ScheduleRun).order_by(ScheduleRun.schedule_id)))
        assert [(i.schedule_id, i.audience_frequency, i.status) for i in issues] == [
            (weekly_id, Frequency.WEEKLY, IssueStatus.FINISHED),
            (daily_id, Frequency.DAILY, IssueStatus.FINISHED)]
        assert [(r.schedule_id, r.status, r.issue_id) for r in runs] == [
            (weekly_id, "issued", issues[0].id), (daily_id, "issued", issues[1].id)]
        assert all(r.reported_at is not None for r in runs)
        # On time: the periods were already due when the ticks started (a minute ago),
        # and each issue was made within seconds of its first ticks.
        assert all(r.period_start <= ticks_started <= r.created_at for r in runs)
        assert all(r.created_at - ticks_started < timedelta(seconds=30) for r in runs)

    # The reports: once per run, by mail and by webhook, with the counts.
    assert len(smtp.to(OPS)) == 2 and len(hook.posts) == 2
    subjects = sorted(m.message["Subject"] for m in reports)
    assert subjects[0].startswith("[The Daily Test] Daily (")
    assert subjects[0].endswith(") sent: sent 1, failed 0, bounced 0")
    assert subjects[1].startswith("[The Daily Test] Weekly (")
    by_name = {p["json"]["schedule"]["name"]: p["json"] for p in hook.posts}
    assert by_name["Weekly"]["outcome"] == "sent"
    assert by_name["Weekly"]["counts"] == {"sent": 1, "failed": 0, "bounced": 0, "uncertain": 0,
                                           "withdrawn": 0, "total": 1}
    assert by_name["Daily"]["period_local"].endswith(("-04:00", "-05:00"))
    assert by_name["Weekly"]["period_local"].endswith(("+01:00", "+02:00"))


def test_worker_processes_and_this_process_sweeping_at_once_make_one_issue_per_period(
    app, env, smtp, worker, make_email
):
    from mailer.tasks.base import tick

    emails = readers(make_email)
    runner = MailerRunner(app)
    berlin_day, berlin_at = a_minute_ago("Europe/Berlin")
    _, new_york_at = a_minute_ago("America/New_York")
    with time_machine.travel(utcnow() - timedelta(hours=1)):
        assert runner.invoke(["schedule", "add", "--name", "Weekly", "--cron",
                              f"{berlin_day} {berlin_at}", "--tz", "Europe/Berlin"]).exit_code == 0
        assert runner.invoke(["schedule", "add", "--name", "Daily", "--cron",
                              f"daily {new_york_at}", "--tz", "America/New_York"]).exit_code == 0
    # Two ticks for the worker's two processes, and this process sweeping at the same moment.
    tick.delay()
    tick.delay()
    with app.app_context():
        for _ in range(10):
            fire_schedules()
            time.sleep(0.1)
    smtp.wait_for(emails[Frequency.WEEKLY])
    smtp.wait_for(emails[Frequency.DAILY])

    def settled():
        with db.transaction() as s:
            statuses = list(s.scalars(select(Issue.status)))
        return len(statuses) == 2 and all(st == IssueStatus.FINISHED for st in statuses)

    wait_until(settled, 30, what="both issues to finish")
    tick.delay()  # and once more, later
    time.sleep(1)
    with db.transaction() as s:
        assert s.query(Issue).count() == 2 and s.query(ScheduleRun).count() == 2
    assert len(smtp.to(emails[Frequency.WEEKLY])) == 1
    assert len(smtp.to(emails[Frequency.DAILY])) == 1
