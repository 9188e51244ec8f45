"""Console users and subscribers: add users and API tokens, import and export readers."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import click
from sqlalchemy import select

from mailer.cli import Context, cli, fail, pass_ctx, progress
from mailer.db import db
from mailer.models import Subscriber, User
from mailer.services import subscriber_admin as admin
from mailer.services import subscriptions as subs
from mailer.services import users


@cli.group()
def user():
    """Console users."""


@user.command("add")
@click.argument("email")
@click.option("--role", type=click.Choice(["editor", "ops", "admin"]), required=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@pass_ctx
def user_add(ctx: Context, email: str, role: str, password_stdin: bool):
    """Add a console user (the password is prompted for, or read from stdin)."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True, err=True)
    with ctx.app.app_context(), db.transaction() as s:
        u = users.create_user(s, email, password, users.parse_role(role))
        uid = u.id
    click.echo(uid)


@user.command("reset-password")
@click.argument("email")
@click.option("--password-stdin", is_flag=True, help="Read the new password from standard input.")
@pass_ctx
def user_reset_password(ctx: Context, email: str, password_stdin: bool):
    """Set a user's password (for an admin locked out anyway); their sessions end and their
    failed logins are forgotten."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("New password", hide_input=True, confirmation_prompt=True,
                                err=True)
    with ctx.app.app_context(), db.transaction() as s:
        u = users.user_by_email(s, email)
        users.reset_password(s, u.id, password, password)
        address = u.email
    click.echo(f"new password set for {address}; every session of theirs has ended", err=True)


@user.command("unlock")
@click.argument("email")
@pass_ctx
def user_unlock(ctx: Context, email: str):
    """Forget a user's failed logins, so no address of theirs has to wait any more."""
    with ctx.app.app_context(), db.transaction() as s:
        held = users.unlock(s, email)
    click.echo(f"{email}: failed logins from {held} address(es) forgotten", err=True)


@user.command("token")
@click.argument("email")
@click.option("--name", default="cli", show_default=True, help="What the token is for.")
@pass_ctx
def user_token(ctx: Context, email: str, name: str):
    """Create an API bearer token for a user; it is shown once."""
    with ctx.app.app_context(), db.transaction() as s:
        u = s.scalar(select(User).where(User.email == subs.normalize_email(email)))
        if u is None:
            fail(f"no user with the address {email}")
        token = users.create_api_token(s, u, name)
    click.echo(token)


@cli.group()
def subscribers():
    """Readers: import, export, their bounce history, reactivation."""


def _reader(s, email: str) -> Subscriber:
    try:
        address = subs.normalize_email(email)
    except Exception:
        address = email.strip().lower()
    sub = s.scalar(select(Subscriber).where(Subscriber.email == address))
    if sub is None:
        fail(f"no reader with the address {email}")
    return sub


@subscribers.command("show")
@click.argument("email")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_ctx
def subscribers_show(ctx: Context, email: str, as_json: bool):
    """A reader's status, newsletters, bounce score, last bounce and bounce and complaint
    history."""
    import json

    from mailer.services import bounces

    iso = lambda d: d.isoformat() if d else None  # noqa: E731

    with ctx.app.app_context(), db.transaction() as s:
        sub = _reader(s, email)
        doc = {
            "email": sub.email,
            "status": str(sub.status),
            "bounce_score": sub.bounce_score,
            "last_bounce": sub.last_bounce_at.isoformat() if sub.last_bounce_at else None,
            "newsletters": [
                {
                    "slug": held.newsletter.slug,
                    "name": held.newsletter.name,
                    "status": str(held.status),
                    "frequency": str(held.frequency),
                    "sections": held.section_list,
                    "confirmed_at": iso(held.confirmed_at),
                    "unsubscribed_at": iso(held.unsubscribed_at),
                }
                for held in subs.subscriptions_of(s, sub.id)
            ],
            "events": bounces.history(s, sub.id),
        }
    if as_json:
        click.echo(json.dumps(doc))
        return
    click.echo(f"{doc['email']}: {doc['status']}, bounce score {doc['bounce_score']}"
               + (f", last bounce {doc['last_bounce']}" if doc["last_bounce"] else ""))
    for n in doc["newsletters"]:
        since = n["unsubscribed_at"] if n["status"] == "unsubscribed" else n["confirmed_at"]
        click.echo(f"  newsletter {n['slug']} ({n['name']}): {n['status']}, {n['frequency']}"
                   + (f", sections {';'.join(n['sections'])}" if n["sections"] else "")
                   + (f", since {since}" if since else ""))
    for e in doc["events"]:
        click.echo(f"  {e['at']}  {e['kind']:<9} {e['source']:<8} {e['detail'] or ''}")


@subscribers.command("reactivate")
@click.argument("email")
@pass_ctx
def subscribers_reactivate(ctx: Context, email: str):
    """Make a bounced reader active again (their address works again)."""
    from mailer.services import bounces

    with ctx.app.app_context(), db.transaction() as s:
        bounces.reactivate(s, _reader(s, email), by="mailer subscribers reactivate")
    click.echo(f"{email}: active again", err=True)


IMPORT_CHUNK = 1000


@subscribers.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--source", required=True, help="Where these readers consented (kept as proof).")
@click.option("--newsletter", "slugs", multiple=True, metavar="SLUG",
              help="Subscribe them to this newsletter (repeatable; default: the signup "
                   "defaults). A row's own 'newsletters' column wins.")
@pass_ctx
def subscribers_import(ctx: Context, file, source: str, slugs: tuple[str, ...]):
    """Import already-consented readers from CSV (email[,name,frequency,sections,newsletters])."""
    from mailer.errors import NotFound
    from mailer.services import newsletters as nl

    source = subs.check_text("source", source, 200) or fail("--source must not be empty")
    text = file.read_text(encoding="utf-8-sig")
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "email" not in [f.strip().lower() for f in reader.fieldnames]:
        fail("the CSV needs a header row with an 'email' column")
    rows = list(reader)
    report = subs.ImportReport()
    rt = ctx.runtime
    with ctx.app.app_context():
        newsletter_ids = None
        if slugs:
            # Checked before anything is imported: a mistyped option adds no one.
            with db.transaction() as s:
                newsletter_ids = []
                for slug in slugs:
                    try:
                        found = nl.by_slug(s, slug.strip().lower())
                    except NotFound:
                        fail(f"no newsletter {slug!r} (see mailer newsletter list)")
                    if found.archived_at is not None:
                        fail(f"the newsletter {slug!r} is archived")
                    newsletter_ids.append(found.id)
        with progress(length=len(rows), label="Importing") as bar:
            for start in range(0, len(rows), IMPORT_CHUNK):
                chunk = [
                    subs.ImportRow(
                        line=start + i + 2,
                        email=(r.get("email") or ""),
                        name=r.get("name"),
                        frequency=r.get("frequency"),
                        sections=r.get("sections"),
                        newsletters=r.get("newsletters"),
                    )
                    for i, r in enumerate(rows[start : start + IMPORT_CHUNK])
                ]
                # One transaction per chunk: an interrupted import keeps what it finished.
                with db.transaction() as s:
                    subs.import_rows(
                        s, chunk, source=source, known_sections=rt.settings.section_labels,
                        hasher=rt.email_hash, report=report, newsletter_ids=newsletter_ids,
                    )
                bar.update(len(chunk))
    for line, message in report.invalid[:20]:
        click.echo(f"line {line}: {message}", err=True)
    if len(report.invalid) > 20:
        click.echo(f"... and {len(report.invalid) - 20} more invalid lines", err=True)
    click.echo(
        f"added {report.added}, already present {report.existing}, "
        f"suppressed {report.suppressed}, invalid {len(report.invalid)}"
    )


@subscribers.command("export")
@click.argument("file", type=click.File("w", encoding="utf-8"), default="-")
@pass_ctx
def subscribers_export(ctx: Context, file):
    """Write every reader as CSV with a header row (to stdout without FILE); `newsletters`
    holds the slugs of what each reader receives (active subscriptions), `;`-separated."""
    writer = csv.writer(file)
    writer.writerow(admin.EXPORT_FIELDS)
    with ctx.app.app_context(), db.transaction() as s:
        writer.writerows(admin.export_rows(s))
