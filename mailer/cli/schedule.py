"""Recurring digests: `mailer schedule add | list | remove | pause | resume | run-now | next`."""

from __future__ import annotations

import json
from datetime import datetime

import click

from mailer import cron
from mailer.cli import Context, cli, fail, pass_ctx
from mailer.clock import utcnow
from mailer.db import db
from mailer.errors import MailerError
from mailer.services import schedules


@cli.group()
def schedule():
    """Recurring digests: weekly or daily issues composed and sent on time."""


def _find(s, ref: str):
    try:
        return schedules.get_schedule(s, ref)
    except MailerError as e:
        fail(str(e))


def _audience(item: dict) -> str:
    sections = ", ".join(item["sections"]) or "all sections"
    return f"{item['frequency']} readers of {sections}"


@schedule.command("add")
@click.option("--name", required=True, help="A unique name, e.g. 'Weekly digest'.")
@click.option("--newsletter", metavar="SLUG",
              help="The newsletter its issues belong to (default: the first one).")
@click.option("--cron", "cron_text", required=True,
              help="Five cron fields ('0 7 * * mon') or a form like 'mon 07:00', 'daily 06:30'.")
@click.option("--tz", "timezone", default="UTC", show_default=True,
              help="IANA time zone the times are read in, e.g. Europe/Berlin.")
@click.option("--frequency", type=click.Choice(["weekly", "daily"]),
              help="Readers it goes to (default: daily for schedules that fire most days).")
@click.option("--sections", help="Comma-separated sections of the audience (default: all).")
@click.option("--latest", "latest_n", type=int,
              help="How many of the latest articles (default: the newsletter's).")
@click.option("--popular", "popular_m", type=int,
              help="How many of the most popular articles (default: the newsletter's).")
@click.option("--min-items", type=int,
              help="Skip the period when fewer new articles than this exist "
                   "(default: the newsletter's).")
@click.option("--subject", help="Subject line (may use {{ date }}, {{ top_story }}, ...).")
@click.option("--grace-hours", type=float,
              help="How late a missed period may still be made up (default: "
                   "MAILER_SCHEDULE_GRACE_HOURS, 6).")
@pass_ctx
def add(ctx: Context, name, newsletter, cron_text, timezone, frequency, sections, latest_n, popular_m,
        min_items, subject, grace_hours):
    """Add a schedule; prints its next firing times and, on the last line, its id."""
    settings = ctx.settings
    now = utcnow()
    with ctx.app.app_context():
        try:
            with db.transaction() as s:
                created = schedules.create_schedule(
                    s, name=name, cron_text=cron_text, timezone=timezone, frequency=frequency,
                    sections=sections, latest_n=latest_n, popular_m=popular_m,
                    min_items=min_items, subject=subject, grace_hours=grace_hours,
                    known_sections=settings.section_labels, newsletter=newsletter,
                )
                item = schedules.as_dict(created, now, count=3)
        except MailerError as e:
            fail(str(e))
    click.echo(f"Added {item['name']!r} for {item['newsletter']}: {item['description']} "
               f"{item['timezone']}, to {_audience(item)}.")
    for when in item["next_runs"]:
        click.echo(f"  next: {when}")
    click.echo(item["id"])


@schedule.command("list")
@click.option("--newsletter", metavar="SLUG", help="Only this newsletter's schedules.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_ctx
def list_(ctx: Context, newsletter, as_json: bool):
    """Every schedule with its next firing time (local) and its last run."""
    from mailer.services import newsletters

    now = utcnow()
    with ctx.app.app_context(), db.transaction() as s:
        letter_id = newsletters.by_slug(s, newsletter).id if newsletter else None
        last = schedules.last_runs(s)
        items = [schedules.as_dict(x, now, count=1, last=last.get(x.id))
                 for x in schedules.list_schedules(s, newsletter_id=letter_id)]
    if as_json:
        click.echo(json.dumps({"schedules": items}, indent=2))
        return
    if not items:
        click.echo("No schedules yet. Add one, e.g.:\n"
                   "  mailer schedule add --name 'Weekly digest' --cron 'mon 07:00' "
                   "--tz Europe/Berlin")
        return
    rows = [("ID", "NAME", "NEWSLETTER", "WHEN", "AUDIENCE", "STATUS", "NEXT RUN", "LAST RUN")]
    for i in items:
        last_run = i["last_run"]
        rows.append((
            str(i["id"]), i["name"], i["newsletter"] or "-",
            f"{i['description']} {i['timezone']}", _audience(i),
            i["status"], i["next_runs"][0] if i["next_runs"] else "-",
            f"{last_run['status']} {last_run['period_local']}" if last_run else "-",
        ))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


@schedule.command("remove")
@click.argument("ref", metavar="ID")
@pass_ctx
def remove(ctx: Context, ref: str):
    """Delete a schedule and its run history (its issues stay)."""
    with ctx.app.app_context(), db.transaction() as s:
        found = _find(s, ref)
        name = found.name
        schedules.remove_schedule(s, found)
    click.echo(f"Removed schedule {name!r}.")


def _set_active(ctx: Context, ref: str, active: bool) -> None:
    now = utcnow()
    with ctx.app.app_context():
        try:
            with db.transaction() as s:
                found = _find(s, ref)
                schedules.set_active(s, found, active, now)
                item = schedules.as_dict(found, now, count=1)
        except MailerError as e:
            fail(str(e))
    if active:
        nxt = item["next_runs"][0] if item["next_runs"] else "never"
        click.echo(f"Resumed {item['name']!r}; next run {nxt}.")
    else:
        click.echo(f"Paused {item['name']!r}; it fires again after `mailer schedule resume`.")


@schedule.command("pause")
@click.argument("ref", metavar="ID")
@pass_ctx
def pause(ctx: Context, ref: str):
    """Stop a schedule from firing (periods while paused are not made up)."""
    _set_active(ctx, ref, False)


@schedule.command("resume")
@click.argument("ref", metavar="ID")
@pass_ctx
def resume(ctx: Context, ref: str):
    """Let a paused schedule fire again from its next period on."""
    _set_active(ctx, ref, True)


@schedule.command("run-now")
@click.argument("ref", metavar="ID")
@pass_ctx
def run_now(ctx: Context, ref: str):
    """Compose and send the schedule's issue now; prints the issue id on the last line."""
    from mailer.tasks.schedules import fire_period

    now = utcnow()
    with ctx.app.app_context():
        with db.transaction() as s:
            found = _find(s, ref)
            schedule_id, name = found.id, found.name
        try:
            run = fire_period(schedule_id, schedules.manual_period(now), now,
                              reason="Started by hand (run-now).", manual=True)
        except MailerError as e:
            fail(str(e))
    if run is None:
        fail(f"{name!r} was already fired this minute; see `mailer schedule list`.")
    if run.status == schedules.SKIPPED:
        click.echo(f"Skipped: {run.reason}", err=True)
    else:
        click.echo(f"Sending issue {run.issue_id} of {name!r}.", err=True)
    click.echo(run.issue_id)


def _parse_after(value: str | None, tz) -> datetime | None:
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 time like 2027-03-28T00:00+01:00.",
            param_hint="--after") from None
    # A time without an offset is read in the schedule's own zone.
    return when if when.tzinfo else when.replace(tzinfo=tz)


@schedule.command("next")
@click.argument("ref", metavar="ID")
@click.option("--count", "-n", type=click.IntRange(1, 1000), default=5, show_default=True)
@click.option("--after", help="Start from this ISO 8601 time (default: now); without an "
                              "offset it is read in the schedule's time zone.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_ctx
def next_(ctx: Context, ref: str, count: int, after: str | None, as_json: bool):
    """The next firing times, ISO 8601 in the schedule's local time with its offset."""
    with ctx.app.app_context(), db.transaction() as s:
        found = _find(s, ref)
        tz = cron.zone(found.timezone)
        start = _parse_after(after, tz) or utcnow()
        times = [t.isoformat() for t in schedules.next_runs(found, start, count)]
        name = found.name
    if as_json:
        click.echo(json.dumps({"schedule": name, "timezone": tz.key, "next_runs": times}))
        return
    for t in times:
        click.echo(t)
