"""Bounce and complaint reports from the command line: `mailer bounces receive`.

`receive` is what an MTA runs for mail to `bounces+*@MAILER_BOUNCE_DOMAIN` (Postfix's
`pipe`, Exim's pipe transport, procmail): one raw message on standard input. Its exit code
is the MTA's instruction: 0 = done (recorded, or deliberately ignored: said on stdout),
75 (EX_TEMPFAIL) = keep the message and try again later (the database is unreachable, the
configuration is broken). It never answers a bounce with mail and never prints a traceback.
"""

from __future__ import annotations

import sys

import click

from mailer.cli import Context, cli, pass_ctx

EX_TEMPFAIL = 75
CHUNK = 64 * 1024


@cli.group()
def bounces():
    """Bounce and complaint reports: from the MTA's pipe or the bounce mailbox."""


def read_limited(stream, limit: int) -> tuple[bytes, bool]:
    """Up to `limit` bytes of the stream and whether there was more. The rest is read and
    dropped: an MTA's pipe that cannot write the whole message counts it as failed."""
    data = stream.read(limit + 1)
    if len(data) <= limit:
        return data, False
    while stream.read(CHUNK):
        pass
    return data[:limit], True


def _tempfail(e: Exception):
    """Exit 75 with one line: the MTA keeps the message and delivers it again later."""
    from sqlalchemy.exc import DBAPIError

    if isinstance(e, DBAPIError):
        reason = f"the database is unreachable or busy ({type(e.orig).__name__})"
    else:
        words = (str(e).strip().splitlines() or [""])[0][:200]
        reason = f"{type(e).__name__}: {words}"
    click.echo(f"mailer: not recorded, try again later: {reason}", err=True)
    sys.exit(EX_TEMPFAIL)


@bounces.command("receive")
@click.option("--recipient", metavar="ADDR", help="The envelope recipient, as the MTA passes it.")
@pass_ctx
def receive(ctx: Context, recipient: str | None):
    """Read one report (a DSN, a feedback report, a bounce) on stdin and record it."""
    # Neither the app nor Celery: an MTA starts this once per received message.
    try:
        settings = ctx.database()
    except Exception as e:  # a broken configuration: the MTA keeps the message meanwhile
        _tempfail(e)
    from mailer.bounces import Source
    from mailer.bounces.parse import ignored, parse_message

    raw, too_big = read_limited(sys.stdin.buffer, settings.bounce_max_bytes)
    if too_big:
        reports = [ignored("too-big", f"larger than {settings.bounce_max_bytes} bytes")]
    else:
        reports = parse_message(
            raw, source=Source.PIPE, recipient=recipient, bounce_domain=settings.bounce_domain
        )
    for line in record_reports(ctx, reports):
        click.echo(line)


def record_reports(ctx: Context, reports) -> list[str]:
    """Record a message's reports in one transaction; one line each for the log. Exits 75
    when the database cannot take them now."""
    from mailer.db import db
    from mailer.services import bounces as service

    try:
        with db.transaction() as s:
            outcomes = [service.record(s, ctx.settings, r) for r in reports]
    except Exception as e:  # never a traceback to the MTA; the message is kept and retried
        _tempfail(e)
    return [describe(r, o) for r, o in zip(reports, outcomes, strict=True)]


def describe(report, outcome) -> str:
    """One log line: what the report was and what it did."""
    if outcome.result == "ignored":
        return f"ignored: {outcome.reason}"
    about = f"reader {outcome.subscriber_id}"
    if outcome.issue_id:
        about += f", issue {outcome.issue_id}"
    if outcome.result == "duplicate":
        return f"duplicate: {report.kind} report about {about}, recorded before"
    change = f" (now {outcome.changed_to})" if outcome.changed_to else ""
    return f"recorded: {report.kind} from {report.source} about {about}{change}"


@bounces.command("poll")
@pass_ctx
def poll(ctx: Context):
    """Fetch the bounce mailbox's waiting messages now (MAILER_BOUNCE_MAILBOX)."""
    from mailer.bounces.mailbox import MailboxError
    from mailer.cli import fail
    from mailer.tasks.bounces import poll as poll_mailbox

    ctx.web = False
    if not ctx.settings.bounce_mailbox:
        fail("no bounce mailbox is set (MAILER_BOUNCE_MAILBOX)")
    with ctx.app.app_context():
        try:
            result = poll_mailbox(ctx.settings)
        except MailboxError as e:
            fail(f"the bounce mailbox cannot be read now, nothing was lost: {e}")
    if result.skipped:
        click.echo(f"nothing polled: {result.skipped}", err=True)
        return
    counts = ", ".join(f"{n} {k}" for k, n in sorted(result.results.items())) or "no reports"
    click.echo(f"{result.messages} messages: {counts}")
