"""Bounce and complaint reports from the MTA: `mailer bounces receive` and `mailer bounces lmtp`.

`receive` is what an MTA runs for mail to `bounces+*@MAILER_BOUNCE_DOMAIN` (Postfix's
`pipe`, Exim's pipe transport, procmail): one raw message on standard input. Its exit code
is the MTA's instruction: 0 = done (recorded, or deliberately ignored: said on stdout),
75 (EX_TEMPFAIL) = keep the message and try again later (the database is unreachable, the
configuration is broken). It never answers a bounce with mail and never prints a traceback.

`lmtp` is the same for an MTA that delivers over LMTP (Postfix `lmtp:`): one long-running
process instead of one per message (mailer/bounces/lmtp.py speaks the protocol). Each
recipient's answer after DATA is the pipe's: 250 with the lines `receive` prints, 451 4.3.0
with the words of its exit 75. Both record through record_now(), one transaction a message.
"""

from __future__ import annotations

import sys

import click

from mailer.cli import Context, cli, fail, pass_ctx

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


def _reason(e: Exception) -> str:
    """Why a message could not be recorded now, in one line without secrets or traceback."""
    from sqlalchemy.exc import DBAPIError

    if isinstance(e, DBAPIError):
        return f"the database is unreachable or busy ({type(e.orig).__name__})"
    words = (str(e).strip().splitlines() or [""])[0][:200]
    return f"{type(e).__name__}: {words}"


def _tempfail(e: Exception):
    """Exit 75 with one line: the MTA keeps the message and delivers it again later."""
    click.echo(f"mailer: not recorded, try again later: {_reason(e)}", err=True)
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

    raw, too_big = read_limited(sys.stdin.buffer, settings.bounce_max_bytes)
    reports = reports_in(settings, None if too_big else raw, recipient, Source.PIPE)
    for line in record_reports(ctx, reports):
        click.echo(line)


def reports_in(settings, raw: bytes | None, recipient: str | None, source) -> list:
    """The reports of one received message; `raw` None: it was larger than the limit."""
    from mailer.bounces.parse import ignored, parse_message

    if raw is None:
        return [ignored("too-big", f"larger than {settings.bounce_max_bytes} bytes", source)]
    return parse_message(raw, source=source, recipient=recipient,
                         bounce_domain=settings.bounce_domain)


def record_reports(ctx: Context, reports) -> list[str]:
    """Record a message's reports in one transaction; one line each for the log. Exits 75
    when the database cannot take them now."""
    try:
        return record_now(ctx, reports)
    except Exception as e:  # never a traceback to the MTA; the message is kept and retried
        _tempfail(e)


def record_now(ctx: Context, reports) -> list[str]:
    """record_reports() for a caller that answers a failure itself: raises it."""
    from mailer.db import db
    from mailer.services import bounces as service

    if not reports:
        return []
    with db.transaction() as s:
        outcomes = service.record_many(s, ctx.settings, reports[0].source, reports)
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


def _address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise click.BadParameter(f"{value!r} is not HOST:PORT, e.g. 127.0.0.1:2424")
    return host.strip("[]"), int(port)


@bounces.command("lmtp")
@click.option("--listen", metavar="HOST:PORT", default="127.0.0.1:2424", show_default=True,
              help="Where to listen for the MTA's LMTP connections.")
@click.option("--socket", "socket_path", metavar="PATH",
              help="A unix socket to listen on instead (Postfix lmtp:unix:PATH); mode 0660.")
@click.option("--threads", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Messages recorded at once (each holds a database connection).")
@pass_ctx
def lmtp(ctx: Context, listen: str, socket_path: str | None, threads: int):
    """Receive bounce mail over LMTP (RFC 2033): one long-running process for the MTA."""
    import logging

    from mailer.bounces import Source
    from mailer.bounces.lmtp import LmtpServer, TryLater

    where = socket_path or _address(listen)
    settings = ctx.database()  # a broken configuration: exit 1 now, not 451 for ever
    logging.basicConfig(level=logging.INFO,
                        format="[%(asctime)s: %(levelname)s/bounces-lmtp] %(message)s")
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's line per command

    def deliver(raw: bytes | None, recipient: str) -> list[str]:
        try:
            return record_now(ctx, reports_in(settings, raw, recipient, Source.LMTP))
        except Exception as e:
            raise TryLater(f"not recorded, try again later: {_reason(e)}") from e

    server = LmtpServer(deliver, listen=where, threads=threads,
                        max_bytes=settings.bounce_max_bytes,
                        ready=lambda shown: click.echo(f"listening on {shown}", err=True))
    try:
        server.serve()
    except OSError as e:
        fail(f"cannot listen on {socket_path or listen}: {e.strerror or e}")
    click.echo("stopped", err=True)


@bounces.command("poll")
@pass_ctx
def poll(ctx: Context):
    """Fetch the bounce mailbox's waiting messages now (MAILER_BOUNCE_MAILBOX)."""
    from mailer.bounces.mailbox import MailboxError
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
