"""When a schedule fires: five-field cron or "mon 07:00" forms, evaluated in a local time zone.

Our own small evaluator rather than a library, because the daylight-saving rules are the
point: firings are computed as local wall-clock times and only then turned into UTC. A wall
time inside a spring-forward gap fires once, at the first minute that exists after it; a
wall time that occurs twice on the fall-back day fires once, at its first occurrence.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from mailer.errors import ValidationError

DAY_NAMES = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
MONTH_NAMES = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_LONG_DAYS = {
    "sunday": "sun", "monday": "mon", "tuesday": "tue", "wednesday": "wed",
    "thursday": "thu", "friday": "fri", "saturday": "sat",
    "tues": "tue", "thur": "thu", "thurs": "thu",
}
MACROS = {"@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@weekly": "0 0 * * sun",
          "@monthly": "0 0 1 * *", "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *"}

# name, low, high, names (index + offset = value)
_FIELDS = [
    ("minute", 0, 59, None),
    ("hour", 0, 23, None),
    ("day of month", 1, 31, None),
    ("month", 1, 12, MONTH_NAMES),
    ("day of week", 0, 7, DAY_NAMES),
]
_SIMPLE = re.compile(r"^(?P<days>[a-z,\-]+)\s+(?:at\s+)?(?P<h>\d{1,2}):(?P<m>\d{2})$")
# A schedule that finds no firing within this many days never fires (say, 30 February).
HORIZON_DAYS = 8 * 366


@dataclass(frozen=True)
class CronSpec:
    """A parsed five-field expression; `text` is its canonical form, stored in the schedule."""

    text: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool  # day-of-month field was *
    any_weekday: bool  # day-of-week field was *

    def matches(self, d: date) -> bool:
        """Whether the local calendar day `d` has firings (cron's day-of-month OR weekday rule)."""
        if d.month not in self.months:
            return False
        in_month = d.day in self.days
        in_week = (d.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return in_month and in_week
        # Both restricted: classic cron fires when either matches.
        return in_month or in_week

    @property
    def daily_or_less(self) -> bool:
        """True when it fires at most once a day (what a "daily" digest looks like)."""
        return len(self.hours) == 1 and len(self.minutes) == 1

    @property
    def default_frequency(self) -> str:
        """Which readers a schedule serves unless told: daily if it fires most days."""
        several = self.any_weekday or len(self.weekdays) > 1
        return "daily" if self.any_day and several and len(self.months) == 12 else "weekly"


def _value(token: str, field: str, low: int, high: int, names) -> int:
    if names and token in names:
        return names.index(token) + (1 if names is MONTH_NAMES else 0)
    if not token.isdigit():
        raise ValidationError("cron", f"{token!r} is not a valid {field}.")
    n = int(token)
    if not low <= n <= high:
        raise ValidationError("cron", f"The {field} {n} is outside {low}-{high}.")
    return n


def _field(text: str, field: str, low: int, high: int, names) -> set[int]:
    out: set[int] = set()
    for item in text.split(","):
        if not item:
            raise ValidationError("cron", f"The {field} field has an empty list item.")
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ValidationError("cron", f"The step in {item!r} must be a positive number.")
            step = int(step_text)
        if base == "*":
            start, end = low, high
        elif "-" in base:
            a, _, b = base.partition("-")
            start, end = _value(a, field, low, high, names), _value(b, field, low, high, names)
            if start > end:
                raise ValidationError("cron", f"The {field} range {base!r} runs backwards.")
        else:
            start = _value(base, field, low, high, names)
            end = high if slash else start
        out.update(range(start, end + 1, step))
    return out


def _simple_form(text: str) -> str | None:
    """'mon 07:00', 'mondays at 7:00', 'mon,thu 07:00', 'weekdays 06:30', 'daily 06:30'."""
    m = _SIMPLE.match(text)
    if not m:
        return None
    hour, minute = int(m["h"]), int(m["m"])
    if hour > 23 or minute > 59:
        raise ValidationError("cron", f"{m['h']}:{m['m']} is not a time of day.")
    days = m["days"]
    if days in ("daily", "everyday", "day"):
        dow = "*"
    elif days in ("weekdays", "weekday"):
        dow = "mon-fri"
    elif days in ("weekends", "weekend"):
        dow = "sat,sun"
    else:
        parts = []
        for part in days.split(","):
            part = part.strip().rstrip("s") if part not in ("tues", "thurs") else part
            part = _LONG_DAYS.get(part, part)
            if "-" in part:
                a, _, b = part.partition("-")
                a, b = _LONG_DAYS.get(a, a), _LONG_DAYS.get(b, b)
                if a not in DAY_NAMES or b not in DAY_NAMES:
                    return None
                part = f"{a}-{b}"
            elif part not in DAY_NAMES:
                return None
            parts.append(part)
        dow = ",".join(parts)
    return f"{minute} {hour} * * {dow}"


def parse(text: str | None) -> CronSpec:
    """Parse a cron expression or a simple weekly/daily form; ValidationError if malformed."""
    raw = " ".join((text or "").lower().split())
    if not raw:
        raise ValidationError("cron", "Give a schedule: a cron expression like '0 7 * * mon' "
                                      "or a form like 'mon 07:00' or 'daily 06:30'.")
    expr = MACROS.get(raw) or _simple_form(raw) or raw
    parts = expr.split(" ")
    if len(parts) != 5:
        raise ValidationError(
            "cron", f"{text.strip()!r} is neither five cron fields (minute hour day month "
                    "weekday) nor a form like 'mon 07:00' or 'daily 06:30'.")
    values = [_field(p, *f) for p, f in zip(parts, _FIELDS, strict=True)]
    minutes, hours, days, months, weekdays = values
    if len(minutes) > 1:
        # A digest that went out every few minutes would flood every reader's inbox.
        raise ValidationError("cron", "A schedule fires at most once an hour: give one minute.")
    weekdays = {d % 7 for d in weekdays}  # 7 is Sunday too
    spec = CronSpec(
        text=expr,
        minutes=tuple(sorted(minutes)),
        hours=tuple(sorted(hours)),
        days=frozenset(days),
        months=frozenset(months),
        weekdays=frozenset(weekdays),
        # As in Vixie cron, a field starting with * does not count as a restriction.
        any_day=parts[2].startswith("*"),
        any_weekday=parts[4].startswith("*"),
    )
    if not any(spec.matches(date(2028, 1, 1) + timedelta(days=i)) for i in range(4 * 366 + 1)):
        raise ValidationError("cron", f"{text.strip()!r} names a day that never comes.")
    return spec


def zone(name: str | None) -> ZoneInfo:
    """An IANA time zone by name (Europe/Berlin); ValidationError for anything else."""
    name = (name or "").strip()
    if not name or name.startswith(("/", ".")) or ".." in name:
        raise ValidationError("timezone", "Give an IANA time zone like Europe/Berlin.")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        wanted = name.lower().replace(" ", "_")
        hint = sorted(z for z in available_timezones()
                      if z.lower() == wanted or z.lower().endswith("/" + wanted))
        extra = f" Did you mean {hint[0]}?" if hint else ""
        raise ValidationError("timezone", f"{name!r} is not a known time zone.{extra}") from None


def _exists(wall: datetime, tz: ZoneInfo) -> datetime | None:
    """The UTC instant of a naive local wall time, or None inside a spring-forward gap."""
    aware = wall.replace(tzinfo=tz, fold=0)  # fold=0: the first of two repeated times
    utc = aware.astimezone(UTC)
    if utc.astimezone(tz).replace(tzinfo=None) != wall:
        return None
    return utc


def resolve(wall: datetime, tz: ZoneInfo) -> datetime:
    """The UTC instant a local wall time fires at: itself, or the next minute that exists."""
    probe = wall
    # Gaps are an hour almost everywhere; the bound covers the rare day-long jumps too.
    for _ in range(2 * 24 * 60):
        utc = _exists(probe, tz)
        if utc is not None:
            return utc
        probe += timedelta(minutes=1)
    raise ValueError(f"no valid local time after {wall} in {tz.key}")


def _day_firings(spec: CronSpec, day: date, tz: ZoneInfo) -> Iterator[datetime]:
    for h in spec.hours:
        for m in spec.minutes:
            yield resolve(datetime(day.year, day.month, day.day, h, m), tz)


def iter_firings(spec: CronSpec, tz: ZoneInfo, after: datetime) -> Iterator[datetime]:
    """Firing instants (aware UTC) strictly after `after`, in order, each once."""
    # Start a day early: a wall time in a gap that spans midnight lands on the next day.
    day = after.astimezone(tz).date() - timedelta(days=1)
    last = after
    idle = 0
    while idle < HORIZON_DAYS:
        if spec.matches(day):
            idle = 0
            for utc in _day_firings(spec, day, tz):
                # The local-to-UTC map never runs backwards (gaps map forward, repeats to
                # their first occurrence), so "later than the last one" also removes doubles.
                if utc > last:
                    last = utc
                    yield utc
        else:
            idle += 1
        day += timedelta(days=1)


def next_firings(spec: CronSpec, tz: ZoneInfo, after: datetime, count: int = 1) -> list[datetime]:
    out = []
    for utc in iter_firings(spec, tz, after):
        out.append(utc)
        if len(out) >= count:
            break
    return out


def firings_between(
    spec: CronSpec, tz: ZoneInfo, after: datetime, until: datetime, keep: int
) -> tuple[list[datetime], int]:
    """The last `keep` firings in (after, until], and how many there were in all."""
    kept: list[datetime] = []
    total = 0
    for utc in iter_firings(spec, tz, after):
        if utc > until:
            break
        total += 1
        kept.append(utc)
        if len(kept) > keep:
            kept.pop(0)
    return kept, total


def describe(spec: CronSpec) -> str:
    """A short English reading: 'Mondays at 07:00', 'daily at 06:30', else the expression."""
    if not spec.daily_or_less:
        return f"cron {spec.text}"
    at = f"{spec.hours[0]:02d}:{spec.minutes[0]:02d}"
    if len(spec.months) != 12 or not spec.any_day:
        return f"cron {spec.text} (at {at})"
    if spec.any_weekday:
        return f"daily at {at}"
    days = sorted(spec.weekdays, key=lambda d: (d + 6) % 7)  # Monday first
    if days == [1, 2, 3, 4, 5]:
        return f"weekdays at {at}"
    full = ["Sundays", "Mondays", "Tuesdays", "Wednesdays", "Thursdays", "Fridays", "Saturdays"]
    return f"{', '.join(full[d] for d in days)} at {at}"
