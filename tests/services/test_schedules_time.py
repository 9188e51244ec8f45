"""Schedule time math: cron parsing, local firings across the 2027 daylight-saving changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mailer import cron
from mailer.errors import ValidationError
from mailer.services.schedules import plan

BERLIN = cron.zone("Europe/Berlin")
NEW_YORK = cron.zone("America/New_York")


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def local_iso(times, tz) -> list[str]:
    return [t.astimezone(tz).isoformat() for t in times]


@pytest.mark.parametrize(
    "text, canonical, words",
    [
        ("0 7 * * mon", "0 7 * * mon", "Mondays at 07:00"),
        ("mon 07:00", "0 7 * * mon", "Mondays at 07:00"),
        ("Mondays at 7:00", "0 7 * * mon", "Mondays at 07:00"),
        ("mon,thu 07:15", "15 7 * * mon,thu", "Mondays, Thursdays at 07:15"),
        ("daily 06:30", "30 6 * * *", "daily at 06:30"),
        ("weekdays 06:30", "30 6 * * mon-fri", "weekdays at 06:30"),
        ("  0  7  *  *  MON ", "0 7 * * mon", "Mondays at 07:00"),
        ("@weekly", "0 0 * * sun", "Sundays at 00:00"),
        ("0 7 1 * *", "0 7 1 * *", "cron 0 7 1 * * (at 07:00)"),
    ],
)
def test_parse_cron_and_simple_forms(text, canonical, words):
    spec = cron.parse(text)
    assert spec.text == canonical
    assert cron.describe(spec) == words


def test_default_audience_follows_the_rhythm():
    assert cron.parse("daily 06:30").default_frequency == "daily"
    assert cron.parse("weekdays 06:30").default_frequency == "daily"
    assert cron.parse("mon 07:00").default_frequency == "weekly"
    assert cron.parse("0 7 1 * *").default_frequency == "weekly"


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "Give a schedule"),
        ("0 7 * *", "neither five cron fields"),
        ("61 7 * * *", "minute 61 is outside 0-59"),
        ("0 24 * * *", "hour 24 is outside 0-23"),
        ("0 7 * * funday", "'funday' is not a valid day of week"),
        ("0 7 * 13 *", "month 13 is outside 1-12"),
        ("5-1 7 * * *", "runs backwards"),
        ("0 7 */0 * *", "step in '*/0' must be a positive number"),
        ("*/5 * * * *", "at most once an hour"),
        ("0 7 31 2 *", "never comes"),
        ("mon 25:00", "not a time of day"),
    ],
)
def test_bad_expressions_are_refused_with_a_reason(text, message):
    with pytest.raises(ValidationError) as e:
        cron.parse(text)
    assert message in e.value.message and e.value.field == "cron"


def test_time_zones_are_iana_names():
    assert cron.zone("Europe/Berlin").key == "Europe/Berlin"
    for bad in ["", "Mars/Olympus", "../etc/passwd", "CEST+1"]:
        with pytest.raises(ValidationError):
            cron.zone(bad)
    with pytest.raises(ValidationError, match="Did you mean Europe/Berlin"):
        cron.zone("europe/berlin")
    with pytest.raises(ValidationError, match="Did you mean America/New_York"):
        cron.zone("New York")


def test_day_of_month_and_weekday_follow_cron():
    # Both restricted: either matches (the 1st, or any Monday) — classic cron.
    spec = cron.parse("0 7 1 * mon")
    got = local_iso(cron.next_firings(spec, BERLIN, utc(2027, 2, 25), 4), BERLIN)
    assert got == ["2027-03-01T07:00:00+01:00", "2027-03-08T07:00:00+01:00",
                   "2027-03-15T07:00:00+01:00", "2027-03-22T07:00:00+01:00"]
    leap = cron.next_firings(cron.parse("0 9 29 2 *"), BERLIN, utc(2027, 1, 1), 2)
    assert local_iso(leap, BERLIN) == ["2028-02-29T09:00:00+01:00", "2032-02-29T09:00:00+01:00"]


# --- 2027 daylight-saving transitions -----------------------------------------------------


def test_berlin_spring_forward_0230_fires_once_at_0300():
    # 28 March 2027: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that day.
    got = cron.next_firings(cron.parse("30 2 * * *"), BERLIN, utc(2027, 3, 26, 12), 3)
    assert local_iso(got, BERLIN) == [
        "2027-03-27T02:30:00+01:00", "2027-03-28T03:00:00+02:00", "2027-03-29T02:30:00+02:00"]
    assert got[1] == utc(2027, 3, 28, 1, 0)


def test_berlin_fall_back_0230_fires_once_at_the_first():
    # 31 October 2027: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice.
    got = cron.next_firings(cron.parse("30 2 * * *"), BERLIN, utc(2027, 10, 29, 12), 3)
    assert local_iso(got, BERLIN) == [
        "2027-10-30T02:30:00+02:00", "2027-10-31T02:30:00+02:00", "2027-11-01T02:30:00+01:00"]
    assert got[1] == utc(2027, 10, 31, 0, 30)


def test_new_york_spring_forward_0230_fires_at_0300_edt():
    # 14 March 2027: 02:00 EST jumps to 03:00 EDT.
    got = cron.next_firings(cron.parse("30 2 * * *"), NEW_YORK, utc(2027, 3, 13, 12), 2)
    assert local_iso(got, NEW_YORK) == ["2027-03-14T03:00:00-04:00", "2027-03-15T02:30:00-04:00"]
    assert got[0] == utc(2027, 3, 14, 7, 0)


def test_new_york_fall_back_day():
    # 7 November 2027: 02:00 EDT falls back to 01:00 EST, so 01:30 happens twice and 02:30
    # once; each fires once.
    half_two = cron.next_firings(cron.parse("30 2 * * *"), NEW_YORK, utc(2027, 11, 6, 12), 2)
    assert local_iso(half_two, NEW_YORK) == [
        "2027-11-07T02:30:00-05:00", "2027-11-08T02:30:00-05:00"]
    half_one = cron.next_firings(cron.parse("30 1 * * *"), NEW_YORK, utc(2027, 11, 6, 12), 2)
    assert local_iso(half_one, NEW_YORK) == [
        "2027-11-07T01:30:00-04:00", "2027-11-08T01:30:00-05:00"]


def test_hourly_schedule_across_both_berlin_changes():
    hourly = cron.parse("0 * * * *")
    spring = cron.next_firings(hourly, BERLIN, utc(2027, 3, 27, 23, 30), 3)
    assert local_iso(spring, BERLIN) == [
        "2027-03-28T01:00:00+01:00", "2027-03-28T03:00:00+02:00", "2027-03-28T04:00:00+02:00"]
    autumn = cron.next_firings(hourly, BERLIN, utc(2027, 10, 30, 23, 30), 3)
    # The repeated 02:00 fires once, at its first occurrence.
    assert local_iso(autumn, BERLIN) == [
        "2027-10-31T02:00:00+02:00", "2027-10-31T03:00:00+01:00", "2027-10-31T04:00:00+01:00"]


def test_two_gap_times_on_the_spring_day_fire_once():
    # 02:00 and 02:30 both fall in the gap and both move to 03:00: one firing, not two.
    spec = cron.parse("30 2,3 * * *")
    got = cron.next_firings(spec, BERLIN, utc(2027, 3, 27, 12), 3)
    assert local_iso(got, BERLIN) == [
        "2027-03-28T03:00:00+02:00", "2027-03-28T03:30:00+02:00", "2027-03-29T02:30:00+02:00"]


def test_weekly_local_time_keeps_its_wall_clock_across_the_change():
    got = cron.next_firings(cron.parse("mon 07:00"), BERLIN, utc(2027, 3, 20), 3)
    assert [t.isoformat() for t in got] == [
        "2027-03-22T06:00:00+00:00", "2027-03-29T05:00:00+00:00", "2027-04-05T05:00:00+00:00"]


# --- what a sweep owes ------------------------------------------------------------------

DAILY_7 = cron.parse("daily 07:00")
SIX_HOURS = timedelta(hours=6)


def test_plan_fires_the_period_just_passed():
    p = plan(DAILY_7, BERLIN, utc(2027, 5, 1, 12), utc(2027, 5, 3, 5, 0, 20), SIX_HOURS)
    # 3 May 07:00 CEST = 05:00 UTC: due 20 s ago. 2 May 07:00 was missed (no sweep ran).
    assert p.fire == utc(2027, 5, 3, 5, 0)
    assert [m[0] for m in p.missed] == [utc(2027, 5, 2, 5, 0)]
    assert "only the latest period (Mon 2027-05-03 07:00 CEST) is made up" in p.missed[0][1]


def test_plan_makes_up_within_grace_and_misses_beyond():
    since = utc(2027, 5, 3, 4)
    late = plan(DAILY_7, BERLIN, since, utc(2027, 5, 3, 10, 59), SIX_HOURS)
    assert late.fire == utc(2027, 5, 3, 5, 0) and late.missed == []
    too_late = plan(DAILY_7, BERLIN, since, utc(2027, 5, 3, 11, 0), SIX_HOURS)
    assert too_late.fire is None
    (period, reason), = too_late.missed
    assert period == utc(2027, 5, 3, 5, 0)
    assert reason == ("Not sent: the scheduler ran 6 h after Mon 2027-05-03 07:00 CEST, "
                      "beyond the grace period of 6 h.")


def test_plan_after_weeks_down_makes_up_only_the_latest():
    weekly = cron.parse("mon 07:00")
    p = plan(weekly, BERLIN, utc(2027, 4, 1), utc(2027, 5, 3, 6), SIX_HOURS)
    assert p.fire == utc(2027, 5, 3, 5, 0)
    assert [m[0] for m in p.missed] == [utc(2027, 4, 5, 5), utc(2027, 4, 12, 5),
                                        utc(2027, 4, 19, 5), utc(2027, 4, 26, 5)]


def test_plan_after_a_long_outage_keeps_the_records_bounded():
    hourly = cron.parse("0 * * * *")
    p = plan(hourly, BERLIN, utc(2027, 1, 1), utc(2027, 3, 1), SIX_HOURS)
    assert p.fire == utc(2027, 3, 1) and len(p.missed) == 50
    # 59 days of hourly periods: 51 listed (50 missed + the one fired), the rest counted.
    assert f"{59 * 24 - 51} earlier periods were missed too" in p.missed[0][1]


def test_plan_owes_nothing_before_the_first_period():
    assert plan(DAILY_7, BERLIN, utc(2027, 5, 3, 5, 0), utc(2027, 5, 3, 6), SIX_HOURS) == \
        plan(DAILY_7, BERLIN, utc(2027, 5, 3, 5, 0), utc(2027, 5, 4, 4, 59), SIX_HOURS)
    assert plan(DAILY_7, BERLIN, utc(2027, 5, 3, 5, 0), utc(2027, 5, 3, 6), SIX_HOURS).fire is None
