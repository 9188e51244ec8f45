"""`mailer schedule`: add, list, next (ISO 8601 with the local offset), pause, resume, remove."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import time_machine

from mailer.db import db
from mailer.models import Frequency, Schedule


def add(runner, *extra):
    return runner.invoke(["schedule", "add", *extra])


def test_add_prints_next_runs_and_the_id_last(runner):
    with time_machine.travel(datetime(2027, 3, 20, 12, tzinfo=UTC), tick=False):
        result = add(runner, "--name", "Weekly digest", "--cron", "0 7 * * mon",
                     "--tz", "Europe/Berlin", "--sections", "news,sport", "--latest", "8",
                     "--popular", "4", "--min-items", "2", "--grace-hours", "3")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == ("Added 'Weekly digest' for the-daily-test: Mondays at 07:00 "
                        "Europe/Berlin, to weekly readers of news, sport.")
    # The clock change on 28 March moves the offset, not the local hour.
    assert lines[1:4] == ["  next: 2027-03-22T07:00:00+01:00", "  next: 2027-03-29T07:00:00+02:00",
                          "  next: 2027-04-05T07:00:00+02:00"]
    schedule = db.session.get(Schedule, int(lines[-1]))
    assert schedule.name == "Weekly digest" and schedule.cron == "0 7 * * mon"
    assert schedule.timezone == "Europe/Berlin" and schedule.audience_sections == "news,sport"
    assert (schedule.latest_n, schedule.popular_m, schedule.min_items) == (8, 4, 2)
    assert schedule.grace_hours == 3 and schedule.audience_frequency == Frequency.WEEKLY


def test_simple_daily_form_goes_to_daily_readers(runner):
    result = add(runner, "--name", "Morning", "--cron", "daily 06:30", "--tz", "America/New_York")
    assert result.exit_code == 0, result.output
    schedule = db.session.get(Schedule, int(result.stdout.splitlines()[-1]))
    assert schedule.cron == "30 6 * * *" and schedule.audience_frequency == Frequency.DAILY


def test_bad_input_exits_1_with_one_line_and_writes_nothing(runner):
    cases = [
        (["--name", "X", "--cron", "0 7 * *"], "neither five cron fields"),
        (["--name", "X", "--cron", "0 7 * * mon", "--tz", "Mars/Base"], "not a known time zone"),
        (["--name", "X", "--cron", "0 7 * * mon", "--sections", "weather"],
         "Unknown section 'weather'"),
        (["--name", "X", "--cron", "0 7 * * mon", "--latest", "500"], "latest_n must be between"),
        (["--name", "X", "--cron", "0 7 * * mon", "--grace-hours", "0"],
         "grace_hours must be above 0"),
        (["--name", "12", "--cron", "0 7 * * mon"], "must not be only digits"),
    ]
    for args, message in cases:
        result = add(runner, *args)
        assert result.exit_code == 1, (args, result.output)
        assert result.stderr.startswith("mailer: ") and message in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1 and result.stdout == ""
    usage = add(runner, "--name", "X", "--cron", "0 7 * * mon", "--frequency", "hourly")
    assert usage.exit_code == 2
    assert db.session.query(Schedule).count() == 0


def test_duplicate_name_is_refused(runner):
    assert add(runner, "--name", "Weekly", "--cron", "mon 07:00").exit_code == 0
    again = add(runner, "--name", "Weekly", "--cron", "tue 07:00")
    assert again.exit_code == 1 and "exists already" in again.stderr


def test_next_with_count_and_after_across_new_york_spring_forward(runner):
    sid = add(runner, "--name", "Night", "--cron", "30 2 * * *", "--tz",
              "America/New_York").stdout.splitlines()[-1]
    result = runner.invoke(["schedule", "next", sid, "--count", "3", "--after", "2027-03-13T00:00"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "2027-03-13T02:30:00-05:00", "2027-03-14T03:00:00-04:00", "2027-03-15T02:30:00-04:00"]
    by_name = runner.invoke(["schedule", "next", "Night", "-n", "1", "--after",
                             "2027-11-07T05:00:00Z", "--json"])
    assert json.loads(by_name.stdout) == {
        "schedule": "Night", "timezone": "America/New_York",
        "next_runs": ["2027-11-07T02:30:00-05:00"]}
    bad = runner.invoke(["schedule", "next", sid, "--after", "next tuesday"])
    assert bad.exit_code == 2 and "ISO 8601" in bad.stderr
    missing = runner.invoke(["schedule", "next", "999"])
    assert missing.exit_code == 1 and missing.stderr == "mailer: There is no schedule '999'.\n"


def test_list_pause_resume_remove(runner):
    empty = runner.invoke(["schedule", "list"])
    assert empty.exit_code == 0 and "No schedules yet" in empty.stdout
    assert json.loads(runner.invoke(["schedule", "list", "--json"]).stdout) == {"schedules": []}

    with time_machine.travel(datetime(2027, 10, 30, 12, tzinfo=UTC), tick=False):
        sid = add(runner, "--name", "Weekly", "--cron", "sun 02:30",
                  "--tz", "Europe/Berlin").stdout.splitlines()[-1]
        listing = runner.invoke(["schedule", "list"])
        (row,) = [line for line in listing.stdout.splitlines() if line.startswith(sid)]
        # The repeated 02:30 on the fall-back day fires at its first occurrence.
        assert "Sundays at 02:30 Europe/Berlin" in row and "active" in row
        assert "2027-10-31T02:30:00+02:00" in row

        paused = runner.invoke(["schedule", "pause", sid])
        assert paused.exit_code == 0 and "Paused 'Weekly'" in paused.stdout
        again = runner.invoke(["schedule", "pause", "Weekly"])
        assert again.exit_code == 1 and "must be active to become paused" in again.stderr
        (item,) = json.loads(runner.invoke(["schedule", "list", "--json"]).stdout)["schedules"]
        assert item["status"] == "paused" and item["next_runs"] == []

        resumed = runner.invoke(["schedule", "resume", sid])
        assert resumed.exit_code == 0
        assert resumed.stdout == "Resumed 'Weekly'; next run 2027-10-31T02:30:00+02:00.\n"

    removed = runner.invoke(["schedule", "remove", sid])
    assert removed.exit_code == 0 and removed.stdout == "Removed schedule 'Weekly'.\n"
    assert runner.invoke(["schedule", "remove", sid]).exit_code == 1
    db.session.expire_all()
    assert db.session.query(Schedule).count() == 0


def test_every_command_has_help(runner):
    for command in ["add", "list", "remove", "pause", "resume", "run-now", "next"]:
        result = runner.invoke(["schedule", command, "--help"])
        assert result.exit_code == 0 and "Usage: " in result.stdout
        assert len(result.stdout.splitlines()[2].strip()) > 10  # a sentence, not empty


def test_run_now_with_nothing_new_records_a_skip_and_once_per_minute(runner):
    from mailer.models import Issue, IssueStatus, ScheduleRun

    with time_machine.travel(datetime(2027, 6, 1, 9, 15, 20, tzinfo=UTC), tick=False):
        sid = add(runner, "--name", "Weekly", "--cron", "mon 07:00").stdout.splitlines()[-1]
        runner.invoke(["schedule", "pause", sid])  # run-now works on paused schedules too
        result = runner.invoke(["schedule", "run-now", sid])
        assert result.exit_code == 0, result.output
        assert result.stderr.startswith("Skipped: Nothing new since 2027-05-25 09:15 UTC")
        issue = db.session.get(Issue, int(result.stdout.splitlines()[-1]))
        assert issue.status == IssueStatus.SKIPPED and issue.schedule_id == int(sid)
        run = db.session.query(ScheduleRun).one()
        assert run.status == "skipped" and run.reason.startswith("Nothing new")
        assert run.period_start == datetime(2027, 6, 1, 9, 15, tzinfo=UTC)
        again = runner.invoke(["schedule", "run-now", "Weekly"])
        assert again.exit_code == 1 and "already fired this minute" in again.stderr
        assert db.session.query(Issue).count() == 1


def test_a_schedule_belongs_to_the_newsletter_named(runner):
    from mailer.clock import utcnow
    from mailer.models import Newsletter

    db.session.add(Newsletter(slug="sport", name="The Sport Letter", latest_n=3, popular_m=1,
                              min_items=2))
    db.session.add(Newsletter(slug="gone", name="Gone", archived_at=utcnow()))
    db.session.commit()
    made = add(runner, "--name", "Sport", "--newsletter", "sport", "--cron", "mon 07:00")
    assert made.exit_code == 0, made.output
    assert made.stdout.startswith("Added 'Sport' for sport: ")
    schedule = db.session.get(Schedule, int(made.stdout.split()[-1]))
    assert schedule.newsletter.slug == "sport"
    assert (schedule.latest_n, schedule.popular_m, schedule.min_items) == (3, 1, 2)
    assert add(runner, "--name", "Plain", "--cron", "tue 07:00").exit_code == 0

    listing = runner.invoke(["schedule", "list"]).stdout.splitlines()
    assert listing[0].split()[:3] == ["ID", "NAME", "NEWSLETTER"]
    assert [line.split()[2] for line in listing[1:]] == ["the-daily-test", "sport"]
    only = json.loads(runner.invoke(["schedule", "list", "--newsletter", "sport",
                                     "--json"]).stdout)["schedules"]
    assert [(s["name"], s["newsletter"]) for s in only] == [("Sport", "sport")]

    archived = add(runner, "--name", "Late", "--newsletter", "gone", "--cron", "mon 07:00")
    assert archived.exit_code == 1 and "is archived" in archived.stderr
    unknown = add(runner, "--name", "Late", "--newsletter", "nope", "--cron", "mon 07:00")
    assert unknown.exit_code == 1 and "No newsletter 'nope'" in unknown.stderr
    assert runner.invoke(["schedule", "list", "--newsletter", "nope"]).exit_code == 1
    db.session.expire_all()
    assert db.session.query(Schedule).count() == 2
