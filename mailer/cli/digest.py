"""Digest issues: the `mailer digest` group (composition and preview commands live here)."""

from __future__ import annotations

import json
import sys

import click

from mailer.cli import Context, cli, fail, pass_ctx
from mailer.clock import utcnow
from mailer.db import db
from mailer.errors import MailerError
from mailer.mail.errors import PermanentFailure, TemporaryFailure
from mailer.models import IssueStatus


@cli.group()
def digest():
    """Digest issues: create, preview, send, follow."""


def _sections(ctx: Context, raw: str) -> str:
    from mailer.services import issue_edits

    return issue_edits.check_sections(raw, ctx.settings)


@digest.command("create")
@click.option(
    "--newsletter",
    metavar="SLUG",
    help="The newsletter the issue belongs to (default: the first one).",
)
@click.option(
    "--latest",
    "latest_n",
    type=click.IntRange(0, 100),
    help="How many of the latest articles (default: the newsletter's).",
)
@click.option(
    "--popular",
    "popular_m",
    type=click.IntRange(0, 100),
    help="How many of the most popular articles (default: the newsletter's).",
)
@click.option(
    "--subject", help="Subject line; may use {{ list_name }}, {{ date }}, {{ top_story }}."
)
@click.option("--preheader", default="", help="Preview text shown next to the subject.")
@click.option("--intro", default="", help="Introduction in Markdown ('-' reads it from stdin).")
@click.option(
    "--frequency",
    type=click.Choice(["weekly", "daily"]),
    default="weekly",
    show_default=True,
    help="The readers this issue is for.",
)
@click.option(
    "--sections",
    default="",
    metavar="KEYS",
    help="Comma-separated sections the issue is for; empty means every section.",
)
@click.option(
    "--min-items",
    type=click.IntRange(0, 100),
    help="Skip the issue with fewer new articles than this (default: the newsletter's).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the issue as JSON.")
@pass_ctx
def create(
    ctx: Context,
    newsletter,
    latest_n,
    popular_m,
    subject,
    preheader,
    intro,
    frequency,
    sections,
    min_items,
    as_json,
):
    """Compose a new issue from the latest and most popular articles; prints its id."""
    from mailer.services import digests, issue_edits

    if intro == "-":
        intro = sys.stdin.read()
    rt = ctx.runtime
    with ctx.app.app_context(), db.transaction() as s:
        issue = digests.create_issue(
            s,
            rt.settings,
            rt.popularity,
            now=utcnow(),
            newsletter=newsletter,
            subject=subject,
            preheader=preheader,
            intro=intro,
            audience_frequency=issue_edits.check_frequency(frequency),
            audience_sections=_sections(ctx, sections),
            latest_n=latest_n,
            popular_m=popular_m,
            min_items=min_items,
        )
        data = digests.describe(s, issue, rt.settings)
    if as_json:
        click.echo(json.dumps(data))
        return
    _print_issue(data)
    if data["status"] == IssueStatus.SKIPPED:
        click.echo(f"mailer: issue {data['id']} skipped: {data['status_reason']}", err=True)
    click.echo(data["id"])


def _print_issue(data: dict) -> None:
    shown = [i for i in data["items"] if not i["excluded"]]
    click.echo(f"Issue {data['id']} ({data['status']}): {data['subject']}")
    audience = ", ".join(data["audience"]["sections"]) or "all sections"
    click.echo(f"  newsletter {data['newsletter']}, for {data['audience']['frequency']} "
               f"readers of {audience}")
    for section, label in (("latest", "Latest"), ("popular", "Most popular")):
        items = [i for i in shown if i["section"] == section]
        click.echo(f"  {label}: {len(items)}")
        for i in items:
            pin = " [pinned]" if i["pinned"] else ""
            title = i["title"] or i["url"]
            click.echo(f"    {i['position'] + 1:>2}. {title}{pin}  (article {i['article_id']})")


@digest.command("show")
@click.argument("issue_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the issue as JSON.")
@pass_ctx
def show(ctx: Context, issue_id: int, as_json: bool):
    """Show an issue: status, audience and items in reading order."""
    from mailer.services import digests, issue_edits

    with ctx.app.app_context(), db.transaction() as s:
        data = digests.describe(s, issue_edits.get_issue(s, issue_id), ctx.settings)
    if as_json:
        click.echo(json.dumps(data))
    else:
        _print_issue(data)


@digest.command("preview")
@click.argument("issue_id", type=int)
@click.option("--html", "fmt", flag_value="html", default=True, help="The HTML part (default).")
@click.option("--text", "fmt", flag_value="text", help="The plain-text part.")
@click.option(
    "--eml", "fmt", flag_value="eml", help="The whole message, as a reader's mail program gets it."
)
@click.option(
    "--sections",
    default="",
    metavar="KEYS",
    help="Preview what readers of these sections get; empty means every section.",
)
@pass_ctx
def preview(ctx: Context, issue_id: int, fmt: str, sections: str):
    """What a reader would get, with sample values for the reader's name and links."""
    from mailer.services import digests, issue_edits, render
    from mailer.services.render import SAMPLE_EMAIL

    rt = ctx.runtime
    with ctx.app.app_context(), db.transaction() as s:
        issue = issue_edits.get_issue(s, issue_id)
        key = _sections(ctx, sections)
        if fmt == "eml":
            (out,) = digests.test_messages(
                s, rt.composer, issue, [SAMPLE_EMAIL], key, test=False
            )
            sys.stdout.buffer.write(out.data)
            sys.stdout.flush()
            return
        rendered = render.render_preview(s, issue, key, rt.settings)
    if rendered is None:
        fail("readers of these sections would get no articles in this issue")
    _subject, html, text = rendered
    click.echo(html if fmt == "html" else text, nl=False)


@digest.command("test-send")
@click.argument("issue_id", type=int)
@click.option(
    "--to",
    "addresses",
    multiple=True,
    required=True,
    metavar="ADDR",
    help="An address to send the test to (repeat for more).",
)
@click.option(
    "--sections",
    default="",
    metavar="KEYS",
    help="Send what readers of these sections get; empty means every section.",
)
@pass_ctx
def test_send(ctx: Context, issue_id: int, addresses, sections: str):
    """Send the preview of an issue to a few addresses now (the subject says [Test])."""
    from mailer.services import digests, issue_edits
    from mailer.services.subscriptions import normalize_email

    rt = ctx.runtime
    with ctx.app.app_context():
        try:
            targets = sorted({normalize_email(a) for a in addresses})
        except MailerError as e:
            fail(str(e))
        with db.transaction() as s:
            issue = issue_edits.get_issue(s, issue_id)
            messages = digests.test_messages(
                s, rt.composer, issue, targets, _sections(ctx, sections)
            )
        failed = 0
        try:
            for out in messages:
                try:
                    rt.transport.send(out.envelope_from, out.recipient, out.data)
                    click.echo(f"sent to {out.recipient}")
                except (TemporaryFailure, PermanentFailure) as e:
                    failed += 1
                    click.echo(f"mailer: not sent to {out.recipient}: {e}", err=True)
        finally:
            rt.transport.close()  # say QUIT rather than leave the server waiting
    if failed:
        fail(f"{failed} of {len(messages)} test messages were not sent")


@digest.command("list")
@click.option("--limit", type=click.IntRange(1), help="Only the newest N issues.")
@click.option(
    "--status", type=click.Choice([s.value for s in IssueStatus]), help="Only issues in this state."
)
@click.option("--newsletter", metavar="SLUG", help="Only this newsletter's issues.")
@click.option("--json", "as_json", is_flag=True, help="Print the issues as a JSON array.")
@pass_ctx
def list_(ctx: Context, limit, status, newsletter, as_json: bool):
    """Issues, newest first."""
    from mailer.services import digests, newsletters

    with ctx.app.app_context(), db.transaction() as s:
        statuses = [IssueStatus(status)] if status else None
        letter_id = newsletters.by_slug(s, newsletter).id if newsletter else None
        rows = [
            digests.summary(s, i)
            for i in digests.list_issues(
                s, limit=limit, statuses=statuses, newsletter_id=letter_id
            )
        ]
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo("No issues yet. Compose one with `mailer digest create`.")
        return
    width = max(len("NEWSLETTER"), *(len(r["newsletter"] or "-") for r in rows))
    click.echo(f"{'ID':>5}  {'STATUS':<9}  {'NEWSLETTER':<{width}}  {'CREATED':<16}  "
               f"{'ITEMS':>5}  SUBJECT")
    for r in rows:
        created = r["created_at"][:16].replace("T", " ")
        items = r["latest"] + r["popular"]
        click.echo(f"{r['id']:>5}  {r['status']:<9}  {r['newsletter'] or '-':<{width}}  "
                   f"{created:<16}  {items:>5}  {r['subject']}")
