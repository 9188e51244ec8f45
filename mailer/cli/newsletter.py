"""Newsletters: `mailer newsletter add | list | show | set | remove`."""

from __future__ import annotations

import json

import click

from mailer.cli import Context, cli, fail, pass_ctx
from mailer.db import db
from mailer.errors import MailerError
from mailer.services import newsletters


@cli.group()
def newsletter():
    """The site's newsletters: each with its own name, sender, readers, issues and archive."""


def _fields(options) -> None:
    """The options every command that writes a newsletter takes."""
    for option in reversed([
        click.option("--name", help="What readers see it called, e.g. 'Morning Briefing'."),
        click.option("--from", "from_",
                     help="Its sender as 'Name <address>' (default: MAILER_FROM); '' resets."),
        click.option("--reply-to", help="Where replies go (an address); '' for none."),
        click.option("--list-id", help="Its List-Id identifier, e.g. 'morning.daily.example' "
                                        "(default: SLUG.<sender domain>); '' resets."),
        click.option("--description", help="One or two sentences for the signup form."),
        click.option("--signup-default/--no-signup-default", default=None,
                     help="Whether a signup that names no newsletter gets this one."),
        click.option("--latest", "latest_n", type=int, help="How many of the latest articles."),
        click.option("--popular", "popular_m", type=int,
                     help="How many of the most popular articles."),
        click.option("--min-items", type=int,
                     help="Skip an issue when fewer new articles than this exist."),
        click.option("--sections", help="Comma-separated sections readers may choose in it "
                                        "(default: all of MAILER_SECTIONS)."),
    ]):
        options = option(options)
    return options


def _data(**given) -> dict:
    """The service's fields from the options that were given."""
    names = {"from_": "from"}
    return {names.get(k, k): v for k, v in given.items() if v is not None}


def _summary(item: dict) -> str:
    readers = item["readers"]
    flags = [w for w, on in (("hidden", not item["public"]), ("archived", item["archived"]),
                             ("signup default", item["signup_default"])) if on]
    return (f"{item['slug']:<24} {item['name']}  [{', '.join(flags) or 'public'}]  "
            f"{readers['active']} active, {readers['pending']} pending, "
            f"{readers['unsubscribed']} unsubscribed"
            + (f", {readers['suppressed']} suppressed" if readers["suppressed"] else ""))


@newsletter.command("add")
@click.option("--slug", required=True,
              help="Its short name in addresses (/subscribe/SLUG, /archive/SLUG): lowercase "
                   "letters, digits and hyphens.")
@_fields
@click.option("--hidden", is_flag=True, help="Not offered on public forms or in /archive.")
@pass_ctx
def add(ctx: Context, slug, hidden, **given):
    """Add a newsletter; prints its id on the last line."""
    settings = ctx.settings
    data = {"slug": slug, **_data(**given)}
    if hidden:
        data["public"] = False
    if "name" not in data:
        raise click.UsageError("Missing option '--name'.")
    with ctx.app.app_context():
        try:
            with db.transaction() as s:
                created = newsletters.create(
                    s, data, known_sections=settings.section_labels,
                    sender_domain=settings.sender_domain,
                    defaults=(settings.digest_latest, settings.digest_popular,
                              settings.digest_min_items))
                item = newsletters.as_dict(created)
        except MailerError as e:
            fail(str(e))
    click.echo(f"Added newsletter {item['slug']!r} ({item['name']}"
               f"{', hidden' if not item['public'] else ''}).")
    click.echo(item["id"])


@newsletter.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_ctx
def list_(ctx: Context, as_json):
    """Every newsletter with its readers: active (get the next issue), pending, unsubscribed,
    and suppressed (subscribed, but bounced or complained)."""
    with ctx.app.app_context(), db.transaction() as s:
        items = [newsletters.as_dict(n, counts) for n, counts in newsletters.with_counts(s)]
    if as_json:
        click.echo(json.dumps({"newsletters": items}, indent=2))
        return
    if not items:
        click.echo("No newsletters yet. Add one, e.g.:\n"
                   "  mailer newsletter add --slug morning --name 'Morning Briefing'")
    for item in items:
        click.echo(_summary(item))


def _find(s, slug: str):
    try:
        return newsletters.by_slug(s, slug)
    except MailerError as e:
        fail(str(e) + " (see `mailer newsletter list`)")


@newsletter.command("show")
@click.argument("slug")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_ctx
def show(ctx: Context, slug, as_json):
    """One newsletter: its settings and its readers."""
    settings = ctx.settings
    with ctx.app.app_context(), db.transaction() as s:
        found = _find(s, slug)
        item = newsletters.as_dict(found, newsletters.counts_for(s, found))
        sender = str(newsletters.sender(found, settings))
        list_id = newsletters.list_id(found, settings)
        sent = newsletters.sent_issues(s, found)
    if as_json:
        click.echo(json.dumps(item, indent=2))
        return
    readers = item["readers"]
    rows = [
        ("Slug", item["slug"]), ("Name", item["name"]),
        ("Description", item["description"] or "-"),
        ("From", sender + ("" if item["from"] else "  (MAILER_FROM)")),
        ("Reply-To", item["reply_to"] or "-"),
        ("List-Id", list_id + ("" if item["list_id"] else "  (derived)")),
        ("Public", "yes" if item["public"] else "no (hidden)"),
        ("Signup default", "yes" if item["signup_default"] else "no"),
        ("Archived", item["archived_at"] or "no"),
        ("Digest", f"latest {item['latest_n']}, popular {item['popular_m']}, "
                   f"at least {item['min_items']} new"),
        ("Sections", ", ".join(item["sections"]) or "all"),
        ("Readers", f"{readers['active']} active, {readers['pending']} pending, "
                    f"{readers['unsubscribed']} unsubscribed, {readers['suppressed']} "
                    "suppressed"),
        ("Issues sent", str(sent)),
    ]
    for label, value in rows:
        click.echo(f"{label + ':':<16}{value}")


@newsletter.command("set")
@click.argument("slug")
@_fields
@click.option("--public/--hidden", default=None, help="Offered on public forms and in /archive.")
@click.option("--archive/--unarchive", default=None,
              help="Archive it (no new issues; its archive stays), or bring it back.")
@pass_ctx
def set_(ctx: Context, slug, public, archive, **given):
    """Change a newsletter; options not given stay as they are."""
    settings = ctx.settings
    data = _data(**given)
    if public is not None:
        data["public"] = public
    if archive is not None:
        data["archived"] = archive
    if not data:
        raise click.UsageError("Nothing to change: give at least one option.")
    with ctx.app.app_context():
        try:
            with db.transaction() as s:
                found = _find(s, slug)
                newsletters.update(s, found, data, known_sections=settings.section_labels,
                                   sender_domain=settings.sender_domain)
                item = newsletters.as_dict(found)
        except MailerError as e:
            fail(str(e))
    state = "archived" if item["archived"] else "public" if item["public"] else "hidden"
    click.echo(f"Updated newsletter {item['slug']!r} ({item['name']}, {state}).")


@newsletter.command("remove")
@click.argument("slug")
@pass_ctx
def remove(ctx: Context, slug):
    """Delete a newsletter nothing was sent from (with its drafts, schedules and
    subscriptions). One that was sent from is refused: archive it with `set --archive`."""
    with ctx.app.app_context():
        try:
            with db.transaction() as s:  # its logo's file goes too, unless shown elsewhere
                newsletters.remove(s, _find(s, slug), settings=ctx.settings)
        except newsletters.WasSent as e:
            fail(f"{e} (`mailer newsletter set {slug} --archive`)")
        except MailerError as e:
            fail(str(e))
    click.echo(f"Removed newsletter {slug!r}.")
