"""The firing sweep on a frozen clock: once per period, on time across DST, grace, outages,
pauses, and two schedulers at once against one database."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from sqlalchemy import select

from mailer import cron
from mailer.db import db
from mailer.models import Article, Frequency, Issue, IssueStatus, Schedule, ScheduleRun
from mailer.services import schedules
from mailer.tasks.schedules import fire_schedules

SECTIONS = {"news": "News", "sport": "Sport", "culture": "Culture"}


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def add_schedule(app, at: datetime, **fields) -> int:
    """A schedule created at `at` (periods before its creation are not owed)."""
    fields.setdefault("name", "Digest")
    fields.setdefault("timezone", "Europe/Berlin")
    with time_machine.travel(at, tick=False), app.app_context(), db.transaction() as s:
        return schedules.create_schedule(s, **fields).id


def runs(schedule_id: int | None = None) -> list[ScheduleRun]:
    with db.transaction() as s:
        q = select(ScheduleRun).order_by(ScheduleRun.period_start)
        if schedule_id is not None:
            q = q.where(ScheduleRun.schedule_id == schedule_id)
        return list(s.scalars(q))


def issues() -> list[Issue]:
    with db.transaction() as s:
        return list(s.scalars(select(Issue).order_by(Issue.id)))


def tick_through(app, start: datetime, end: datetime, every=timedelta(seconds=30)) -> None:
    """Run the sweep the way the beat does, every 30 seconds from start to end."""
    now = start
    with app.app_context():
        while now <= end:
            with time_machine.travel(now, tick=False):
                fire_schedules()
            now += every


# --- daylight saving: one firing per period, at the right instant ---------------------------

DST_CASES = [
    # zone, cron, local day sweep start (UTC), expected firing (UTC), what it is locally
    ("Europe/Berlin", "30 2 * * *", utc(2027, 3, 27, 23), utc(2027, 3, 28, 1, 0), "03:00 CEST"),
    ("Europe/Berlin", "30 2 * * *", utc(2027, 10, 30, 22), utc(2027, 10, 31, 0, 30), "02:30 CEST"),
    ("America/New_York", "30 2 * * *", utc(2027, 3, 14, 5), utc(2027, 3, 14, 7, 0), "03:00 EDT"),
    ("America/New_York", "30 2 * * *", utc(2027, 11, 7, 4), utc(2027, 11, 7, 7, 30), "02:30 EST"),
    ("America/New_York", "30 1 * * *", utc(2027, 11, 7, 4), utc(2027, 11, 7, 5, 30), "01:30 EDT"),
]


@pytest.mark.parametrize("zone, cron_text, start, expected, local", DST_CASES)
def test_transition_day_fires_once_on_time(app, zone, cron_text, start, expected, local):
    sid = add_schedule(app, start, cron_text=cron_text, timezone=zone)
    # Five hours of 30-second ticks cover the gap or both occurrences of the repeated hour.
    tick_through(app, start, start + timedelta(hours=5))
    (run,) = runs(sid)
    assert run.period_start == expected
    assert run.period_start.astimezone(cron.zone(zone)).strftime("%H:%M %Z") == local
    # Fired by the first tick after the period, not an hour off.
    assert timedelta(0) <= run.created_at - expected < timedelta(seconds=30)
    # Nothing new had been published: the period is skipped, with the digest's reason.
    assert run.status == "skipped" and run.reason.startswith("Nothing new since")
    (issue,) = issues()
    assert issue.status == IssueStatus.SKIPPED and issue.period_start == expected
    assert issue.schedule_id == sid and run.issue_id == issue.id


def test_daily_0230_berlin_over_the_whole_spring_and_autumn_weeks(app):
    sid = add_schedule(app, utc(2027, 3, 25), cron_text="daily 02:30")
    tick_through(app, utc(2027, 3, 25), utc(2027, 3, 31), every=timedelta(minutes=10))
    local = [r.period_start.astimezone(cron.zone("Europe/Berlin")).isoformat()
             for r in runs(sid)]
    assert local == ["2027-03-25T02:30:00+01:00", "2027-03-26T02:30:00+01:00",
                     "2027-03-27T02:30:00+01:00", "2027-03-28T03:00:00+02:00",
                     "2027-03-29T02:30:00+02:00", "2027-03-30T02:30:00+02:00"]
    assert all(r.status == "skipped" for r in runs(sid))


# --- missed runs --------------------------------------------------------------------------


def test_a_late_run_within_grace_is_made_up_once(app):
    sid = add_schedule(app, utc(2027, 5, 1), cron_text="mon 07:00")
    # Down from Sunday until 5 h 59 min after Monday 07:00 CEST (05:00 UTC).
    tick_through(app, utc(2027, 5, 3, 10, 59), utc(2027, 5, 3, 11, 5))
    (run,) = runs(sid)
    assert run.period_start == utc(2027, 5, 3, 5) and run.status == "skipped"
    assert run.created_at == utc(2027, 5, 3, 10, 59)
    assert len(issues()) == 1


def test_a_run_beyond_grace_is_missed_and_not_sent(app):
    sid = add_schedule(app, utc(2027, 5, 1), cron_text="mon 07:00")
    tick_through(app, utc(2027, 5, 3, 11, 0), utc(2027, 5, 3, 11, 5))
    (run,) = runs(sid)
    assert run.status == "missed" and run.issue_id is None
    assert run.reason == ("Not sent: the scheduler ran 6 h after Mon 2027-05-03 07:00 CEST, "
                          "beyond the grace period of 6 h.")
    assert issues() == []


def test_grace_is_configurable_globally_and_per_schedule(app, env):
    from tests.conftest import make_app

    short = add_schedule(app, utc(2027, 5, 1), name="Short", cron_text="mon 07:00",
                         grace_hours=1)
    default = add_schedule(app, utc(2027, 5, 1), name="Default", cron_text="mon 07:00")
    strict = make_app(env, MAILER_SCHEDULE_GRACE_HOURS="2")
    tick_through(strict, utc(2027, 5, 3, 6, 30), utc(2027, 5, 3, 6, 30))  # 1.5 h late
    assert [r.status for r in runs(short)] == ["missed"]
    assert "grace period of 1 h" in runs(short)[0].reason
    assert [r.status for r in runs(default)] == ["skipped"]  # within the global 2 h


def test_after_weeks_down_only_the_latest_period_is_made_up(app):
    sid = add_schedule(app, utc(2027, 4, 1), cron_text="mon 07:00")
    tick_through(app, utc(2027, 5, 3, 6), utc(2027, 5, 3, 6, 10))
    got = [(r.period_start, r.status) for r in runs(sid)]
    assert got == [(utc(2027, 4, 5, 5), "missed"), (utc(2027, 4, 12, 5), "missed"),
                   (utc(2027, 4, 19, 5), "missed"), (utc(2027, 4, 26, 5), "missed"),
                   (utc(2027, 5, 3, 5), "skipped")]
    assert len(issues()) == 1  # never a burst of old issues
    # The sweep keeps ticking: nothing more is owed until next Monday.
    tick_through(app, utc(2027, 5, 3, 7), utc(2027, 5, 3, 8), every=timedelta(minutes=5))
    assert len(runs(sid)) == 5


def test_paused_periods_are_not_owed_after_resume(app):
    sid = add_schedule(app, utc(2027, 5, 1), cron_text="daily 07:00")
    with app.app_context(), db.transaction() as s:
        schedules.set_active(s, s.get(Schedule, sid), False, utc(2027, 5, 1, 12))
    tick_through(app, utc(2027, 5, 2, 4), utc(2027, 5, 2, 6), every=timedelta(minutes=5))
    assert runs(sid) == []
    with app.app_context(), db.transaction() as s:
        schedules.set_active(s, s.get(Schedule, sid), True, utc(2027, 5, 3, 5, 30))
    # Resumed 30 min after Monday's 07:00: that period passed while paused, so it is not owed.
    tick_through(app, utc(2027, 5, 3, 5, 30), utc(2027, 5, 4, 5, 1), every=timedelta(minutes=5))
    assert [r.period_start for r in runs(sid)] == [utc(2027, 5, 4, 5)]


def test_audience_is_copied_onto_the_issue(app):
    add_schedule(app, utc(2027, 5, 1), name="Daily", cron_text="daily 06:30",
                 sections="news", known_sections={"news": "News", "sport": "Sport"})
    add_schedule(app, utc(2027, 5, 1), name="Weekly", cron_text="mon 06:30")
    tick_through(app, utc(2027, 5, 3, 4, 30), utc(2027, 5, 3, 4, 30))
    daily, weekly = issues()
    assert (daily.audience_frequency, daily.audience_sections) == (Frequency.DAILY, "news")
    assert (weekly.audience_frequency, weekly.audience_sections) == (Frequency.WEEKLY, "")


# --- several schedulers at once -----------------------------------------------------------


def test_two_schedulers_at_the_same_instant_make_one_issue_per_period(app, env):
    from tests.conftest import make_app

    # Three audiences (so no issue takes another's articles), one new article for each.
    app = make_app(env, MAILER_SECTION_MAP=",".join(f"{v}={k}" for k, v in SECTIONS.items()))
    ids = [add_schedule(app, utc(2027, 5, 1), name=f"S{i}", cron_text="mon 07:00",
                        sections=section, known_sections=SECTIONS)
           for i, section in enumerate(SECTIONS)]
    with db.transaction() as s:
        for section, label in SECTIONS.items():
            s.add(Article(title=f"{label} story", url=f"https://daily.example/{section}",
                          categories=[label], published_at=utc(2027, 5, 3, 4)))
    barrier = threading.Barrier(2)
    results, errors = [], []

    def scheduler():
        try:
            with app.app_context():
                barrier.wait(10)
                results.append(fire_schedules())
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    with time_machine.travel(utc(2027, 5, 3, 5, 0, 10), tick=False):
        threads = [threading.Thread(target=scheduler) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert errors == []
    assert sorted(r.schedule_id for r in runs()) == ids
    assert len(issues()) == 3
    # Each period fired once; the other scheduler either found it taken or no longer owed.
    assert sum(r.get("issued", 0) for r in results) == 3
    assert all(set(r) <= {"issued", "taken"} for r in results)
    # Composed and started in the firing transaction (no reader matches these audiences).
    assert [(i.status, i.status_reason) for i in issues()] == \
        [(IssueStatus.FINISHED, "No reader matched the audience.")] * 3


def test_a_scheduler_waits_for_the_one_holding_the_period_then_leaves_it(app):
    sid = add_schedule(app, utc(2027, 5, 1), cron_text="mon 07:00")
    period = utc(2027, 5, 3, 5)
    out = {}
    with time_machine.travel(utc(2027, 5, 3, 5, 0, 5), tick=False), app.app_context():
        first = db.session_factory()
        # The first scheduler has claimed the period and is still composing (not committed).
        run = schedules.claim_period(first, first.get(Schedule, sid), period)

        def second():
            with app.app_context():
                out["result"] = fire_schedules()

        t = threading.Thread(target=second)
        t.start()
        time.sleep(1.0)
        assert t.is_alive(), "the second scheduler should wait on the claimed period"
        run.status, run.reason = "skipped", "held by the first scheduler"
        first.commit()
        first.close()
        t.join(30)
    assert out["result"] == {"taken": 1}
    (only,) = runs(sid)
    assert only.reason == "held by the first scheduler" and issues() == []


def test_a_schedule_that_no_longer_fits_the_configuration_is_skipped_with_the_reason(app):
    # Made when a "weather" section existed; the site's sections no longer include it.
    sid = add_schedule(app, utc(2027, 5, 1), cron_text="mon 07:00", sections="weather",
                       known_sections={"weather": "Weather", "news": "News"})
    tick_through(app, utc(2027, 5, 3, 5, 0, 10), utc(2027, 5, 3, 5, 1))
    (run,) = runs(sid)
    assert run.status == "skipped" and run.issue_id is None
    assert run.reason == "Not composed: Unknown section 'weather'; known: business, culture, news, sport."
    assert issues() == []
