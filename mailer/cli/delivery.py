"""Sending issues from the command line: `mailer digest send|status|pause|resume|cancel|...`."""

from __future__ import annotations

import json
import time

import click

from mailer.cli import Context, cli, fail, pass_ctx, progress
from mailer.cli.digest import digest
from mailer.db import db
from mailer.errors import InvalidTransition

STATES = ("sent", "pending", "sending", "failed_temporary", "failed_permanent", "uncertain")
NOTES = {
    "failed_temporary": "retried later, with backoff",
    "failed_permanent": "refused by the server, or the reader left",
    "uncertain": "may have arrived; see `mailer digest uncertain`",
}


def _status(ctx: Context, issue_id: int) -> dict:
    """The issue's progress, polled each second by --wait: while it is sending, a recent
    count shared with the console's pages (services/progress.py), not a count per poll."""
    from mailer.services import progress

    with ctx.app.app_context(), db.transaction() as s:
        return progress.watched_status(s, issue_id, ctx.settings.redis_url)


def _warn_if_not_handed_over(session) -> None:
    """The commit handed the batches to the workers: say so if the broker refused some."""
    from mailer.services import after_commit

    if after_commit.not_taken(session):
        click.echo(
            "mailer: the broker is unreachable; the sweeper will hand the batches "
            "to the workers once it is back",
            err=True,
        )


def _summary(st: dict) -> str:
    c = st["counts"]
    return (
        f"Issue {st['issue']} {st['status']}: {c['sent']} sent, "
        f"{c['failed_temporary']} waiting for a retry, {c['failed_permanent']} failed, "
        f"{c['uncertain']} uncertain"
    )


def _wait(ctx: Context, issue_id: int, interval: float = 1.0) -> dict:
    st = _status(ctx, issue_id)
    with progress(length=max(1, st["total"]), label=f"Sending issue {issue_id}") as bar:
        shown = 0
        while True:
            done = st["done"]
            bar.update(done - shown)
            shown = done
            if st["status"] != "sending":
                return st
            time.sleep(interval)
            st = _status(ctx, issue_id)


@digest.command("send")
@click.argument("issue_id", type=int)
@click.option("--wait", is_flag=True, help="Stay until the issue is sent, with a progress bar.")
@pass_ctx
def send(ctx: Context, issue_id: int, wait: bool):
    """Send an issue to its audience now (the audience is frozen at this moment)."""
    from mailer.services import deliveries

    try:
        with ctx.app.app_context(), db.transaction() as s:
            result = deliveries.start_send(s, issue_id, settings=ctx.settings)
    except InvalidTransition:
        state = _status(ctx, issue_id)["status"]
        hint = {
            "sending": f"; follow it with `mailer digest status {issue_id}`",
            "paused": f"; continue it with `mailer digest resume {issue_id}`",
        }
        fail(f"issue {issue_id} is {state}, it cannot be sent again{hint.get(state, '')}")
    _warn_if_not_handed_over(s)
    skipped = (
        f" ({result.skipped_no_items} readers skipped: no items for their sections)"
        if result.skipped_no_items
        else ""
    )
    click.echo(f"Sending issue {issue_id} to {result.deliveries} readers{skipped}.", err=True)
    if not wait:
        click.echo(f"Follow it with `mailer digest status {issue_id}`.", err=True)
        return
    st = _wait(ctx, issue_id)
    click.echo(_summary(st))
    if st["status"] != "finished":
        fail(f"issue {issue_id} is {st['status']}: {st['reason'] or 'no reason given'}")


@digest.command("status")
@click.argument("issue_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the status as one JSON document.")
@pass_ctx
def status(ctx: Context, issue_id: int, as_json: bool):
    """Counts per delivery state, the current rate and the time left."""
    st = _status(ctx, issue_id)
    if as_json:
        click.echo(json.dumps(st))
        return
    click.echo(f"Issue {issue_id}: {st['status']}" + (f" ({st['reason']})" if st["reason"] else ""))
    for state in STATES:
        note = f"   {NOTES[state]}" if state in NOTES and st["counts"][state] else ""
        click.echo(f"  {state:<20}{st['counts'][state]:>10,}{note}")
    if st["skipped_no_items"]:
        click.echo(f"  {'skipped (no items)':<20}{st['skipped_no_items']:>10,}")
    if st["withdrawn"]:
        click.echo(
            f"  {'left before sending':<20}{st['withdrawn']:>10,}   (among failed_permanent)"
        )
    for key, label in (("bounced_hard", "hard bounces"), ("bounced_soft", "soft bounces"),
                       ("complaints", "complaints")):
        if st[key]:
            click.echo(f"  {label:<20}{st[key]:>10,}   {st[key + '_rate']:.2%} of messages sent")
    line = f"  {'rate':<20}{st['rate']:>10,.1f} messages/s"
    if st["eta_seconds"] is not None:
        line += f"   about {_duration(st['eta_seconds'])} left"
    click.echo(line)


def _duration(seconds: int) -> str:
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


@digest.command("pause")
@click.argument("issue_id", type=int)
@pass_ctx
def pause(ctx: Context, issue_id: int):
    """Pause a sending issue; messages already on the wire still arrive."""
    from mailer.services import deliveries

    with ctx.app.app_context(), db.transaction() as s:
        deliveries.pause(s, issue_id)
    click.echo(f"Issue {issue_id} paused; continue with `mailer digest resume {issue_id}`.")


@digest.command("resume")
@click.argument("issue_id", type=int)
@pass_ctx
def resume(ctx: Context, issue_id: int):
    """Continue a paused issue where it stopped; nobody gets a second copy."""
    from mailer.services import deliveries

    with ctx.app.app_context(), db.transaction() as s:
        deliveries.resume(s, issue_id, ctx.settings)
    _warn_if_not_handed_over(s)
    click.echo(f"Issue {issue_id} is sending again.")


@digest.command("cancel")
@click.argument("issue_id", type=int)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_ctx
def cancel(ctx: Context, issue_id: int, yes: bool):
    """Stop an issue for good: readers not reached yet will not get it."""
    from mailer.services import deliveries

    if not yes:
        click.confirm(
            f"Cancel issue {issue_id}? Readers not reached yet will not get it",
            abort=True,
            err=True,
        )
    with ctx.app.app_context(), db.transaction() as s:
        deliveries.cancel(s, issue_id)
    click.echo(f"Issue {issue_id} cancelled.")


@digest.command("uncertain")
@click.argument("issue_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the rows as a JSON array.")
@pass_ctx
def uncertain(ctx: Context, issue_id: int, as_json: bool):
    """List deliveries whose SMTP transaction may or may not have completed."""
    from mailer.services import deliveries

    with ctx.app.app_context(), db.transaction() as s:
        rows = deliveries.uncertain_rows(s, issue_id, limit=100_000)
    if as_json:
        click.echo(json.dumps([{"delivery": d, "email": e, "error": err} for d, e, err in rows]))
        return
    if not rows:
        click.echo(f"Issue {issue_id} has no uncertain deliveries.")
        return
    for d, e, err in rows:
        click.echo(f"{d}\t{e or '(erased)'}\t{err or ''}")
    click.echo(
        f"{len(rows)} uncertain; re-send them with `mailer digest resend-uncertain "
        f"{issue_id}` (a reader whose copy did arrive gets a second one).",
        err=True,
    )


@digest.command("resend-uncertain")
@click.argument("issue_id", type=int)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_ctx
def resend_uncertain(ctx: Context, issue_id: int, yes: bool):
    """Re-send the uncertain deliveries of an issue, deliberately."""
    from mailer.services import deliveries

    if not yes:
        click.confirm(
            "Readers whose copy did arrive will get a second one (same Message-ID, "
            "so many mailboxes drop it). Re-send",
            abort=True,
            err=True,
        )
    with ctx.app.app_context(), db.transaction() as s:
        count = deliveries.resend_uncertain(s, issue_id, ctx.settings)
    _warn_if_not_handed_over(s)
    click.echo(f"Re-sending {count} uncertain deliveries of issue {issue_id}.")


@cli.command("dkim-record")
@pass_ctx
def dkim_record(ctx: Context):
    """Print the DNS TXT records that publish the configured DKIM keys."""
    from mailer.mail.dkim import DkimError, signer_from_settings

    try:
        signer = signer_from_settings(ctx.settings)
    except DkimError as e:
        fail(str(e))
    if signer is None:
        fail("no DKIM key is configured (MAILER_DKIM_KEY_FILE, MAILER_DKIM_ED25519_KEY_FILE)")
    for key in signer.keys:
        click.echo(f'{key.selector}._domainkey.{key.domain}. IN TXT "{key.dns_txt()}"')
